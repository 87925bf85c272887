"""OG-MARL-compatible datasets on disk: flashbax vaults.

A vault is a directory (`datasets/smax_3m.vlt`) holding one sub-directory per dataset
(`good`, `medium`, ...), its *uid*. Each uid stores the experience of one flashbax
trajectory buffer with batch size 1, exactly as OG-MARL lays it out:

    observations (1, T, N, O)   actions (1, T, N)   rewards, terminals, truncations (1, T, N)
    infos.state  (1, T, S)      infos.legals (1, T, N, A)

Box (continuous) actions follow OG-MARL's MaMuJoCo vaults: actions (1, T, N, D) float32
and no infos.legals (nothing is masked); a 4-D `actions` key marks that layout.

Loading validates everything (keys, shapes, finite values, action range, whole episodes,
a legal action for every agent at every step) and never writes to disk; extra keys
(OG-MARL's infos.mask, ...) are ignored. Box actions are checked against the
environment's bounds later, by data/source.py, which knows the environment.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.data.dataset import OfflineDataset, action_dtype
from offmarl.errors import ConfigError
from offmarl.utils.files import enclosing_run_directory, unwritable_ancestor

METADATA_FILE = "metadata.json"
# The keys load_vault reads with discrete actions, with the axes each must have (B = 1 is the
# buffer's batch).
EXPECTED_AXES: dict[str, str] = {
    "observations": "(1, T, N, O)",
    "actions": "(1, T, N)",
    "rewards": "(1, T, N)",
    "terminals": "(1, T, N)",
    "truncations": "(1, T, N)",
    "infos.state": "(1, T, S)",
    "infos.legals": "(1, T, N, A)",
}
# The same for box actions (OG-MARL's MaMuJoCo layout): an action axis, no legal actions.
CONTINUOUS_AXES: dict[str, str] = {
    **{key: axes for key, axes in EXPECTED_AXES.items() if key != "infos.legals"},
    "actions": "(1, T, N, D)",
}
# Keys flashbax itself puts into a vault's metadata.json; user metadata may not use them.
STRUCTURE_KEYS = ("structure_shape", "structure_dtype")
FLASHBAX_METADATA_KEYS = ("version", *STRUCTURE_KEYS)


def parse_dataset_arg(text: str) -> tuple[Path, str | None]:
    """Split `VAULT:uid` (e.g. `datasets/smax_3m.vlt:good`) into (path, uid).

    Without a `:uid` suffix the uid is None (meaning: not given).
    """
    path, sep, uid = text.rpartition(":")
    if not sep or not uid or "/" in uid or not path:
        return Path(text), None
    return Path(path), uid


def list_uids(path: str | Path) -> list[str]:
    """The datasets (uids) in the vault at `path`, sorted; [] if it is not a vault. Hidden
    folders are `write_vault`'s unfinished writes, not datasets."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(d.name for d in path.iterdir() if not d.name.startswith(".") and (d / METADATA_FILE).is_file())


def _staging_name(uid: str) -> str:
    """`.<uid>.partial-<pid>-<random>-<host>`: whose write it is, for `_remove_abandoned_writes`."""
    return f".{uid}.partial-{os.getpid()}-{secrets.token_hex(4)}-{socket.gethostname()}"


def _remove_abandoned_writes(path: Path) -> None:
    """Delete the staging folders of `write_vault` calls on this machine whose process has
    died (killed before its `finally` ran); a live writer's folder, or another machine's on
    a shared file system, is left alone."""
    for staging in path.glob(".*.partial-*"):
        pid, _, rest = staging.name.rpartition(".partial-")[2].partition("-")
        host = rest.partition("-")[2]
        if pid.isdigit() and host == socket.gethostname() and not _process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _vault_name(path: Path, uid: str) -> str:
    return f"{path}:{uid}"


def _check_uid_exists(path: Path, uid: str) -> None:
    if not path.is_dir():
        raise ConfigError(f"vault {str(path)!r} does not exist")
    if uid not in (uids := list_uids(path)):
        raise ConfigError(
            f"vault {str(path)!r} has no dataset {uid!r}; it holds: {', '.join(uids) or 'none'}"
        )


def vault_metadata(path: str | Path, uid: str) -> dict[str, Any]:
    """The metadata stored with dataset `uid` (flashbax's structure entries left out)."""
    path = Path(path)
    _check_uid_exists(path, uid)
    return {k: v for k, v in _read_metadata(path, uid).items() if k not in STRUCTURE_KEYS}


def _read_metadata(path: Path, uid: str) -> dict[str, Any]:
    file = path / uid / METADATA_FILE
    try:
        metadata = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"vault {_vault_name(path, uid)}: cannot read {file.name}: {err}") from err
    if not isinstance(metadata, dict) or not isinstance(metadata.get("structure_shape"), dict):
        raise ConfigError(f"vault {_vault_name(path, uid)}: {file.name} lacks 'structure_shape'")
    return metadata


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys.extend(_dotted_keys(value, f"{name}.") if isinstance(value, dict) else [name])
    return keys


def _open_vault(path: Path, uid: str) -> Any:
    """flashbax's Vault for an existing dataset, its prints silenced; opening only reads."""
    from flashbax.vault import Vault

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return Vault(vault_name=path.name, rel_dir=str(path.parent.resolve()), vault_uid=uid)
    except Exception as err:  # tensorstore and flashbax raise many kinds; all mean a bad vault
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        missing = re.search(r'Metadata at "([^"]+?)\.?/\.zarray"', message)
        if missing:
            raise ConfigError(
                f"vault {_vault_name(path, uid)}: the data of key {missing.group(1)!r} is missing"
            ) from err
        raise ConfigError(f"vault {_vault_name(path, uid)} cannot be opened: {message[:200]}") from err


def _leaf(experience: dict[str, Any], key: str) -> np.ndarray:
    node: Any = experience
    for part in key.split("."):
        node = node[part]
    return np.asarray(node)


def _layout(structure: dict[str, Any]) -> dict[str, str]:
    """The layout of a vault from its stored shapes: continuous when `actions` is 4-D."""
    try:
        continuous = len(ast.literal_eval(str(structure.get("actions")))) == 4
    except (ValueError, SyntaxError, TypeError):  # no readable shape: _check_shapes reports it
        continuous = False
    return CONTINUOUS_AXES if continuous else EXPECTED_AXES


def _check_shapes(name: str, arrays: dict[str, np.ndarray], layout: dict[str, str]) -> None:
    obs = arrays["observations"]
    if obs.ndim != 4 or obs.shape[0] != 1:
        raise ConfigError(
            f"vault {name}: key 'observations' has shape {obs.shape}, expected (1, T, N, O)"
        )
    _, t, n, _ = obs.shape
    sizes: dict[str, int | str] = {"1": 1, "T": t, "N": n}
    for key, axes in layout.items():
        if key == "observations":
            continue
        want = tuple(sizes.get(axis, axis) for axis in axes.strip("()").split(", "))
        shape = arrays[key].shape
        fits = len(shape) == len(want) and all(
            isinstance(w, str) or s == w for s, w in zip(shape, want)
        )
        if not fits:
            raise ConfigError(
                f"vault {name}: key {key!r} has shape {shape}, expected "
                f"({', '.join(map(str, want))}) to match observations {obs.shape}"
            )


def _check_values(name: str, arrays: dict[str, np.ndarray]) -> None:
    for key, array in arrays.items():
        if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
            raise ConfigError(f"vault {name}: key {key!r} has non-numeric dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            row = int(np.flatnonzero(~np.isfinite(array).reshape(array.shape[1], -1).all(axis=1))[0])
            raise ConfigError(f"vault {name}: key {key!r} holds NaN or inf (first at time step {row})")
    if "infos.legals" in arrays:
        _check_discrete_actions(name, arrays["actions"], arrays["infos.legals"].shape[-1])


def _check_discrete_actions(name: str, actions: np.ndarray, num_actions: int) -> None:
    """Whole numbers in 0..num_actions-1 (box actions are checked against the env's bounds)."""
    if np.issubdtype(actions.dtype, np.floating) and not (actions == np.round(actions)).all():
        raise ConfigError(f"vault {name}: key 'actions' holds non-integer values")
    low, high = int(actions.min()), int(actions.max())
    if low < 0 or high >= num_actions:
        raise ConfigError(
            f"vault {name}: key 'actions' holds {low if low < 0 else high}, out of range "
            f"0..{num_actions - 1} (the last axis of infos.legals has {num_actions} actions)"
        )


def _first_step_without_legal_action(legals: np.ndarray) -> tuple[int, int] | None:
    """(time step, agent) of the first agent-step of `legals` [T, N, A] with no legal action.

    Every real time step has one: SMAX marks a dead agent with only the no-op legal.
    """
    bad = ~(legals > 0).any(axis=-1)
    if not bad.any():
        return None
    row, agent = np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape)
    return int(row), int(agent)


def load_vault(path: str | Path, uid: str) -> OfflineDataset:
    """Read and validate dataset `uid` of the vault at `path`; never writes to disk.

    A trailing partial episode is dropped (with a warning) if a whole episode remains.
    Every problem raises a one-line ConfigError naming the key at fault.
    """
    path = Path(path)
    _check_uid_exists(path, uid)
    name = _vault_name(path, uid)
    structure = _read_metadata(path, uid)["structure_shape"]
    layout = _layout(structure)
    stored = _dotted_keys(structure)
    missing = [key for key in layout if key not in stored]
    if missing:
        raise ConfigError(
            f"vault {name} lacks the key {missing[0]!r}; OG-MARL's layout needs "
            + ", ".join(layout)
        )
    vault = _open_vault(path, uid)
    if vault.vault_index <= 0:
        raise ConfigError(f"vault {name} is empty (it holds no time steps)")
    # Read into host memory, not onto an accelerator.
    with jax.default_device(jax.devices("cpu")[0]):
        experience = vault.read().experience
    arrays = {key: _leaf(experience, key) for key in layout}
    _check_shapes(name, arrays, layout)
    _check_values(name, arrays)
    continuous = layout is CONTINUOUS_AXES
    no_masks = np.zeros(arrays["actions"].shape[1:3] + (0,), np.float32)  # box actions: nothing masked
    dataset = OfflineDataset(
        observations=arrays["observations"][0].astype(np.float32),
        actions=arrays["actions"][0].astype(action_dtype(continuous)),
        rewards=arrays["rewards"][0].astype(np.float32),
        terminals=arrays["terminals"][0].astype(np.float32),
        truncations=arrays["truncations"][0].astype(np.float32),
        states=arrays["infos.state"][0].astype(np.float32),
        legals=no_masks if continuous else arrays["infos.legals"][0].astype(np.float32),
    )
    ends = np.flatnonzero(dataset.episode_ends)
    if ends.size == 0:
        raise ConfigError(
            f"vault {name} holds no whole episode: no time step has a terminal or truncation flag"
        )
    keep = int(ends[-1]) + 1
    # The rows of whole episodes are real; a trailing partial episode is dropped unchecked.
    bad = None if continuous else _first_step_without_legal_action(dataset.legals[:keep])
    if bad is not None:
        raise ConfigError(
            f"vault {name}: key 'infos.legals' gives agent {bad[1]} no legal action at time step "
            f"{bad[0]} (every real step needs at least one; SMAX marks dead agents with the no-op)"
        )
    if keep < dataset.num_transitions:
        warnings.warn(
            f"vault {name}: dropped a trailing partial episode of "
            f"{dataset.num_transitions - keep} time steps",
            stacklevel=2,
        )
        dataset = OfflineDataset(*(field[:keep] for field in dataset))
    return dataset


def _experience(dataset: OfflineDataset) -> dict[str, Any]:
    """The dataset as one flashbax buffer's experience, batch axis 1 in front (box actions:
    float32 actions with an action axis and no infos.legals, OG-MARL's MaMuJoCo layout)."""
    masks = {} if dataset.continuous else {"legals": dataset.legals.astype(np.float32)[None]}
    return {
        "observations": dataset.observations.astype(np.float32)[None],
        "actions": dataset.actions.astype(action_dtype(dataset.continuous))[None],
        "rewards": dataset.rewards.astype(np.float32)[None],
        "terminals": dataset.terminals.astype(np.float32)[None],
        "truncations": dataset.truncations.astype(np.float32)[None],
        "infos": {"state": dataset.states.astype(np.float32)[None], **masks},
    }


def check_uid_available(path: str | Path, uid: str) -> None:
    """ConfigError unless `uid` is a valid dataset name not yet used in the vault at `path`."""
    if not uid or uid.startswith(".") or "/" in uid or ":" in uid:
        raise ConfigError(f"dataset uid {uid!r} is invalid: use a plain name such as 'good'")
    if (Path(path) / uid).exists():
        raise ConfigError(
            f"vault {str(path)!r} already holds dataset {uid!r}; choose another uid "
            "or delete that directory"
        )


def check_vault_destination(path: str | Path, env_name: str) -> None:
    """ConfigError unless a dataset of `env_name` may be added to the vault at `path`: the path
    is not a file or a run directory, its nearest existing folder is writable, and the vault
    holds no other environment's datasets."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"vault {str(path)!r} exists and is not a directory; choose another path")
    if (run := enclosing_run_directory(path)) is not None:
        raise ConfigError(f"vault {str(path)!r} would lie in the run directory {str(run)!r}; choose a path outside it")
    if (blocked := unwritable_ancestor(path)) is not None:
        raise ConfigError(f"cannot write vault {str(path)!r}: {str(blocked)!r} is not writable")
    others = sorted({vault_metadata(path, uid).get("env") for uid in list_uids(path)} - {None, env_name})
    if others:
        raise ConfigError(f"vault {str(path)!r} holds datasets of {', '.join(others)}; put the "
                          f"{env_name} dataset in a vault of its own")


def _check_dataset(dataset: OfflineDataset, metadata: dict[str, Any]) -> None:
    reserved = [k for k in FLASHBAX_METADATA_KEYS if k in metadata]
    if reserved:
        raise ValueError(f"metadata key {reserved[0]!r} is reserved by flashbax")
    t, n = dataset.actions.shape[:2]
    if t == 0 or not dataset.episode_ends[-1]:
        raise ValueError("a vault holds whole episodes only: the last row must end an episode")
    if not (dataset.observations.shape[:2] == dataset.legals.shape[:2] == (t, n)
            and dataset.states.shape[0] == t):
        raise ValueError("dataset fields disagree on the number of time steps or agents")
    if dataset.continuous:
        if dataset.legals.shape[-1] != 0:
            raise ValueError(f"box actions have no legal-action masks: legals must be [T, N, 0], "
                             f"not {list(dataset.legals.shape)}")
        return
    bad = _first_step_without_legal_action(dataset.legals)
    if bad is not None:
        raise ValueError(f"legals gives agent {bad[1]} no legal action at time step {bad[0]}")


def write_vault(
    dataset: OfflineDataset, path: str | Path, uid: str, metadata: dict[str, Any] | None = None
) -> Path:
    """Write `dataset` as dataset `uid` of the vault at `path`; returns `path / uid`.

    The data goes into a hidden sibling directory first and is renamed into place, so a
    crash never leaves a half-written dataset. An existing uid is never overwritten.
    """
    from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
    from flashbax.vault import Vault

    path = Path(path)
    metadata = dict(metadata or {})
    target = path / uid
    check_uid_available(path, uid)
    _check_dataset(dataset, metadata)
    path.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_writes(path)
    staging = path / _staging_name(uid)
    experience = _experience(dataset)
    buffer = TrajectoryBufferState(
        experience=experience,
        current_index=jnp.asarray(dataset.num_transitions, jnp.int32),
        is_full=jnp.asarray(False),
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            vault = Vault(
                vault_name=path.name,
                rel_dir=str(path.parent.resolve()),
                vault_uid=staging.name,
                experience_structure=experience,
                metadata=metadata,
            )
            written = vault.write(buffer)
        del vault
        if written != dataset.num_transitions:
            raise RuntimeError(f"flashbax wrote {written} of {dataset.num_transitions} time steps")
        if target.exists():
            raise ConfigError(f"vault {str(path)!r} gained dataset {uid!r} while writing it")
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
