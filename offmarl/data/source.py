"""Where an offline run's data comes from: a game's built-in dataset (by name) or a vault
(`VAULT[:uid]`), checked against the environment before any training starts."""

from __future__ import annotations

from typing import Any

from offmarl.data.builtin import builtin_dataset_names, load_builtin_dataset
from offmarl.data.dataset import OfflineDataset
from offmarl.data.vault import list_uids, load_vault, parse_dataset_arg
from offmarl.envs.base import EnvSpec
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
    return load_vault(path, uid), {"source": "vault", "path": str(path), "uid": uid}


def check_dataset_matches(data: OfflineDataset, spec: EnvSpec, dataset: str) -> None:
    """ConfigError if the dataset's agents, observations, state or actions differ from the env's."""
    found = {
        "agents": data.actions.shape[1],
        "obs_dim": data.observations.shape[2],
        "state_dim": data.states.shape[1],
        "num_actions": data.legals.shape[2],
    }
    expected = {"agents": spec.num_agents, "obs_dim": spec.obs_dim, "state_dim": spec.state_dim,
                "num_actions": spec.num_actions}
    for key, value in found.items():
        if value != expected[key]:
            raise ConfigError(
                f"dataset {dataset!r} does not fit {spec.name}: it has {key}={value}, "
                f"the environment has {expected[key]}"
            )
