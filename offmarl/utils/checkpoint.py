"""Checkpoints of any pytree: one msgpack file per checkpoint holding the leaves and the
run's metadata, written atomically, with a JSON copy of the metadata beside it for
people (`step_<n>.json`). A checkpoint counts once its payload exists: a missing or
broken sidecar never hides it, and a payload that cannot be read is reported as
corrupt, so the caller can fall back to an older one. A resuming run renames such a
corrupt checkpoint to `step_<n>.msgpack.corrupt` (kept for inspection, no longer listed)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from offmarl.errors import ConfigError
from offmarl.utils.files import atomic_write_bytes, atomic_write_json

_PREFIX = "step_"
_PAYLOAD = ".msgpack"
CORRUPT_SUFFIX = ".corrupt"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read or does not fit the configuration."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint payload that cannot be read at all (truncated, garbage, I/O error)."""


def _paths(directory: Path, step: int) -> tuple[Path, Path]:
    stem = f"{_PREFIX}{step:012d}"
    return directory / f"{stem}{_PAYLOAD}", directory / f"{stem}.json"


def list_checkpoints(directory: str | Path) -> list[int]:
    """Step counts of the checkpoint payloads in `directory`, oldest first (a payload
    renamed to `*.msgpack.corrupt` is not one)."""
    steps = []
    for payload in Path(directory).glob(f"{_PREFIX}*{_PAYLOAD}"):
        digits = payload.name[len(_PREFIX):-len(_PAYLOAD)]
        if digits.isdigit():
            steps.append(int(digits))
    return sorted(steps)


def save_checkpoint(directory: str | Path, step: int, tree: Any, meta: dict, keep: int) -> Path:
    """Save `tree` and `meta` at `step`; keeps the newest `keep` checkpoints."""
    directory = Path(directory)
    payload, meta_path = _paths(directory, step)
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    meta = {**meta, "env_steps": step, "num_leaves": len(leaves)}
    body = {"leaves": {str(i): x for i, x in enumerate(leaves)}, "meta": json.dumps(meta)}
    atomic_write_bytes(payload, serialization.msgpack_serialize(body))
    atomic_write_json(meta_path, meta)
    for old in list_checkpoints(directory)[:-keep]:
        for path in _paths(directory, old):
            path.unlink(missing_ok=True)
    return payload


def resolve_checkpoint(directory: str | Path, which: str = "latest") -> int:
    """The step count of checkpoint `which` ('latest' or a step count)."""
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


def _read(payload: Path, meta_path: Path) -> tuple[dict, dict]:
    """The saved leaves and metadata; CheckpointError if the payload is unreadable."""
    try:
        raw = serialization.msgpack_restore(payload.read_bytes())
        if "leaves" in raw and "meta" in raw:
            return raw["leaves"], json.loads(raw["meta"])
        # Written before the metadata moved into the payload: it is in the sidecar.
        return raw, json.loads(meta_path.read_text())
    except Exception as err:  # msgpack, JSON and I/O errors all mean: unreadable
        raise UnreadableCheckpoint(f"checkpoint {str(payload)!r} is unreadable "
                                   f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'truncated'})") from None


def load_checkpoint(directory: str | Path, step: int, template: Any) -> tuple[Any, dict]:
    """Restore the checkpoint at `step` into the structure of `template`.

    An unreadable checkpoint, or one from another environment, algorithm or network
    size, raises CheckpointError naming the file (and the first leaf that does not match).
    """
    payload, meta_path = _paths(Path(directory), step)
    raw, meta = _read(payload, meta_path)
    template_leaves, treedef = jax.tree.flatten(template)
    if len(raw) != len(template_leaves):
        raise CheckpointError(
            f"checkpoint {str(payload)!r} does not match this configuration: "
            f"{len(raw)} arrays saved, {len(template_leaves)} expected"
        )
    leaves = []
    for i, expected in enumerate(template_leaves):
        saved = raw.get(str(i))
        if not isinstance(saved, np.ndarray) or saved.shape != np.shape(expected) \
                or saved.dtype != np.asarray(expected).dtype:
            found = f"{saved.dtype}{list(saved.shape)}" if isinstance(saved, np.ndarray) else "missing"
            raise CheckpointError(
                f"checkpoint {str(payload)!r} does not match this configuration: array {i} is "
                f"{found}, expected {np.asarray(expected).dtype}{list(np.shape(expected))}"
            )
        leaves.append(saved)
    return jax.tree.unflatten(treedef, leaves), meta


def set_aside(directory: str | Path, step: int) -> str:
    """Rename the checkpoint at `step` (payload, then sidecar if any) to `<name>.corrupt`,
    so it is kept for inspection but no longer listed; returns the payload's new name.
    Call it only while holding the run directory's lock (no writer is active)."""
    payload, meta_path = _paths(Path(directory), step)
    os.replace(payload, payload.with_name(payload.name + CORRUPT_SUFFIX))  # atomic: unlisted at once
    if meta_path.exists():
        os.replace(meta_path, meta_path.with_name(meta_path.name + CORRUPT_SUFFIX))
    return payload.name + CORRUPT_SUFFIX


def load_newest_valid(
    directory: str | Path, template: Any, warn: Callable[[str], None], set_aside_unreadable: bool = False
) -> tuple[int, Any, dict] | None:
    """The newest checkpoint that can be read: (step, tree, meta), or None if there is
    no checkpoint. Each unreadable newer one is skipped with `warn`; if every one is
    unreadable, CheckpointError names them. With `set_aside_unreadable` (a resuming run,
    which holds the directory's lock), each unreadable newer one is also renamed to
    `<name>.corrupt` once a readable one is found, so pruning, budget checks and later
    resumes no longer count it."""
    steps = list_checkpoints(directory)
    problems: list[tuple[int, CheckpointError]] = []
    for step in reversed(steps):
        try:
            tree, meta = load_checkpoint(directory, step, template)
        except CheckpointError as err:
            problems.append((step, err))
            continue
        for bad, problem in problems:
            note = ""
            if set_aside_unreadable and isinstance(problem, UnreadableCheckpoint):
                note = f" (renamed it to {set_aside(directory, bad)})"
            warn(f"{problem}; using the checkpoint at step {step:,} instead{note}")
        return step, tree, meta
    if problems:
        raise CheckpointError(f"no readable checkpoint in {str(directory)!r}: "
                              + "; ".join(str(problem) for _, problem in problems))
    return None
