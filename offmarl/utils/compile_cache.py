"""JAX's persistent compilation cache: a run that compiles what an earlier run (of any
seed) compiled loads it from disk instead. On by default for the CLI; set
OFFMARL_COMPILE_CACHE=off to disable it, or to a folder to move it.

Several processes share the cache at once (Ray workers, sweeps side by side, the test
suite's workers). JAX writes an entry in place, so a reader could see it half-written;
with a size limit set JAX takes a file lock around every read and write, so the limit is
set, far above what the cache holds (tens of megabytes). That mode keeps an access-time
file beside each entry and cannot write while an entry lacks one, so the entries of a
cache made without it get theirs first."""

from __future__ import annotations

import os
from pathlib import Path

import filelock
import jax

CACHE_MAX_BYTES = 4 * 2**30
"""The cache's size limit; the least recently used entries go beyond it."""


def enable_compile_cache() -> Path | None:
    """Point JAX's persistent cache at OFFMARL_COMPILE_CACHE (default ~/.cache/offmarl/jax)."""
    setting = os.environ.get("OFFMARL_COMPILE_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "offmarl" / "jax"
    path = Path(setting) if setting else default
    backfill_access_times(path)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return path


def backfill_access_times(path: Path) -> None:
    """Give every entry of the cache at `path` that has no access-time file one (its
    modification time), under the lock JAX takes."""
    if not path.is_dir():
        return
    with filelock.FileLock(path / ".lockfile"):
        for entry in path.glob("*-cache"):
            access_time = entry.with_name(entry.name.removesuffix("-cache") + "-atime")
            if not access_time.exists():
                access_time.write_bytes(entry.stat().st_mtime_ns.to_bytes(8, "little"))
