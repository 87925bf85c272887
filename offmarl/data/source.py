"""Where an offline run's data comes from: a game's built-in dataset (by name) or a vault
(`VAULT[:uid]`), checked against the environment before any training starts."""

from __future__ import annotations

from typing import Any

import numpy as np

from offmarl.data.builtin import builtin_dataset_names, load_builtin_dataset
from offmarl.data.dataset import OfflineDataset
from offmarl.data.vault import list_uids, load_vault, parse_dataset_arg, vault_metadata
from offmarl.envs.base import BoxActions, EnvSpec
from offmarl.errors import ConfigError

# Built-in datasets are fixed data: always generated from this seed, whatever the run's seed.
BUILTIN_DATASET_SEED = 0


def load_dataset(env_name: str, dataset: str) -> tuple[OfflineDataset, dict[str, Any]]:
    """The dataset called `dataset` for `env_name`, with a description of its source."""
    builtin = builtin_dataset_names(env_name)
    if dataset in builtin:
        data = load_builtin_dataset(env_name, dataset, BUILTIN_DATASET_SEED)
        return data, {"source": "builtin", "name": dataset}
    path, uid = parse_dataset_arg(dataset)
    if uid is None:
        uids = list_uids(path)
        if len(uids) != 1:
            choices = [f"{path}:{u}" for u in uids] + builtin
            raise ConfigError(
                f"dataset {dataset!r} is neither a built-in dataset of {env_name} nor a vault with "
                f"one uid; valid choices: {', '.join(choices) or 'none found (make one with `offmarl collect`)'}"
            )
        uid = uids[0]
    info: dict[str, Any] = {"source": "vault", "path": str(path), "uid": uid}
    if (anchors := return_anchors(path, uid)) is not None:
        info["return_anchors"] = list(anchors)
    return load_vault(path, uid), info


def return_anchors(path: Any, uid: str) -> tuple[float, float] | None:
    """(uniform-random return, the `expert` dataset's mean return) of a vault that
    `make-datasets` scored by return (OMIGA's MaMuJoCo normalisation), else None. Runs record
    them, so their scores can be normalised after the vault is gone."""
    meta = vault_metadata(path, uid)
    if meta.get("scoring") != "return" or "score_0_return" not in meta or "expert" not in list_uids(path):
        return None
    return float(meta["score_0_return"]), float(vault_metadata(path, "expert")["mean_return"])


def _actions_text(continuous: bool, size: int) -> str:
    return f"continuous actions ({size} dimensions per agent)" if continuous else f"discrete actions ({size} per agent)"


def check_dataset_matches(data: OfflineDataset, spec: EnvSpec, dataset: str) -> None:
    """ConfigError if the dataset's agents, observations, state or actions differ from the
    env's: the kind of action (discrete or box), their number or dimension, and with a box
    every action inside the environment's bounds."""
    action_size = data.actions.shape[2] if data.continuous else data.legals.shape[2]
    space = spec.action_space
    env_action_size = space.dim if isinstance(space, BoxActions) else spec.num_actions
    if data.continuous != spec.continuous:
        raise ConfigError(
            f"dataset {dataset!r} holds {_actions_text(data.continuous, action_size)}, and {spec.name} has "
            f"{_actions_text(spec.continuous, env_action_size)}; use a dataset collected in {spec.name}"
        )
    action_key = "action_dim" if data.continuous else "num_actions"
    found = {
        "agents": data.actions.shape[1],
        "obs_dim": data.observations.shape[2],
        "state_dim": data.states.shape[1],
        action_key: action_size,
    }
    expected = {"agents": spec.num_agents, "obs_dim": spec.obs_dim, "state_dim": spec.state_dim,
                action_key: env_action_size}
    for key, value in found.items():
        if value != expected[key]:
            raise ConfigError(
                f"dataset {dataset!r} does not fit {spec.name}: it has {key}={value}, "
                f"the environment has {expected[key]}"
            )
    if isinstance(space, BoxActions):
        _check_inside_box(data.actions, space, spec.name, dataset)


def _check_inside_box(actions: np.ndarray, space: BoxActions, env_name: str, dataset: str) -> None:
    """ConfigError naming the first action component outside [low, high] and the bounds."""
    low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    outside = (actions < low) | (actions > high)
    if outside.any():
        row, agent, dim = (int(i) for i in np.unravel_index(int(np.flatnonzero(outside)[0]), outside.shape))
        raise ConfigError(
            f"dataset {dataset!r} does not fit {env_name}: action {float(actions[row, agent, dim]):.6g} "
            f"(time step {row}, agent {agent}, dimension {dim}) lies outside the environment's box "
            f"[{float(low[dim]):g}, {float(high[dim]):g}]"
        )
