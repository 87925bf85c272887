"""The persistent compilation cache that the CLI, Ray workers and the test suite's
workers share: JAX must read and write its entries under a file lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

COMPILE_ONE = """
import jax, jax.numpy as jnp
from offmarl.utils.compile_cache import enable_compile_cache
print(enable_compile_cache())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((4, 4))).block_until_ready()
"""


def test_cache_entries_are_written_under_a_file_lock(tmp_path: Path) -> None:
    """Also in a cache that an earlier offmarl filled without the lock: its entries have no
    access-time files, without which JAX's locking cache can write nothing."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "jit_earlier-0123-cache").write_bytes(b"an entry of the unlocked cache")
    env = {**os.environ, "OFFMARL_COMPILE_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-c", COMPILE_ONE], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Error writing persistent compilation cache entry" not in result.stderr, result.stderr
    assert result.stdout.strip() == str(cache)
    names = [p.name for p in cache.iterdir()]
    entries = [n for n in names if n.endswith("-cache")]
    assert len(entries) > 1 and ".lockfile" in names
    # An access time beside every entry: JAX's size-limited (locking) cache, not the plain one.
    assert sorted(n.replace("-cache", "-atime") for n in entries) == sorted(n for n in names if n.endswith("-atime"))


def test_off_disables_the_cache(tmp_path: Path) -> None:
    env = {**os.environ, "OFFMARL_COMPILE_CACHE": "off"}
    result = subprocess.run([sys.executable, "-c", "from offmarl.utils.compile_cache import enable_compile_cache; "
                             "print(enable_compile_cache())"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "None", result.stderr
