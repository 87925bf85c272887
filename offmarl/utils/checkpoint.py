"""Checkpoints of any pytree: msgpack of its leaves, written atomically, with a
JSON sidecar that identifies the run (a checkpoint only counts once both exist)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from offmarl.errors import ConfigError
from offmarl.utils.files import atomic_write_bytes, atomic_write_json

_PREFIX = "step_"


def _paths(directory: Path, env_steps: int) -> tuple[Path, Path]:
    stem = f"{_PREFIX}{env_steps:012d}"
    return directory / f"{stem}.msgpack", directory / f"{stem}.json"


def list_checkpoints(directory: str | Path) -> list[int]:
    """Environment-step counts of the complete checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    steps = []
    for meta in directory.glob(f"{_PREFIX}*.json"):
        step = int(meta.stem[len(_PREFIX):])
        if _paths(directory, step)[0].exists():
            steps.append(step)
    return sorted(steps)


def save_checkpoint(directory: str | Path, env_steps: int, tree: Any, meta: dict, keep: int) -> Path:
    """Save `tree` at `env_steps`; keeps the newest `keep` checkpoints."""
    directory = Path(directory)
    payload, meta_path = _paths(directory, env_steps)
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    atomic_write_bytes(payload, serialization.msgpack_serialize({str(i): x for i, x in enumerate(leaves)}))
    atomic_write_json(meta_path, {**meta, "env_steps": env_steps, "num_leaves": len(leaves)})
    for old in list_checkpoints(directory)[:-keep]:
        for path in _paths(directory, old):
            path.unlink(missing_ok=True)
    return payload


def resolve_checkpoint(directory: str | Path, which: str = "latest") -> int:
    """The env-step count of checkpoint `which` ('latest' or a step count)."""
    steps = list_checkpoints(directory)
    if not steps:
        raise ConfigError(f"no checkpoint in {str(directory)!r}")
    if which == "latest":
        return steps[-1]
    if not which.isdigit() or int(which) not in steps:
        raise ConfigError(
            f"checkpoint {which!r} not found in {str(directory)!r}; valid: latest, "
            + ", ".join(map(str, steps))
        )
    return int(which)


def load_checkpoint(directory: str | Path, env_steps: int, template: Any) -> tuple[Any, dict]:
    """Restore the checkpoint at `env_steps` into the structure of `template`.

    A checkpoint from another environment, algorithm or network size is refused
    with a message naming the first leaf that does not match.
    """
    payload, meta_path = _paths(Path(directory), env_steps)
    meta = json.loads(meta_path.read_text())
    raw = serialization.msgpack_restore(payload.read_bytes())
    template_leaves, treedef = jax.tree.flatten(template)
    if len(raw) != len(template_leaves):
        raise ConfigError(
            f"checkpoint {str(payload)!r} does not match this configuration: "
            f"{len(raw)} arrays saved, {len(template_leaves)} expected"
        )
    leaves = []
    for i, expected in enumerate(template_leaves):
        saved = raw[str(i)]
        if saved.shape != np.shape(expected) or saved.dtype != np.asarray(expected).dtype:
            raise ConfigError(
                f"checkpoint {str(payload)!r} does not match this configuration: array {i} is "
                f"{saved.dtype}{list(saved.shape)}, expected "
                f"{np.asarray(expected).dtype}{list(np.shape(expected))}"
            )
        leaves.append(saved)
    return jax.tree.unflatten(treedef, leaves), meta
