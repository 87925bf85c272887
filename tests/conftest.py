"""Shared fixtures: environments are built once per session (building compiles nothing
heavy, but SMAX construction and first resets take a few seconds)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")


def pytest_configure(config: pytest.Config) -> None:
    """The CLI's persistent compilation cache for the tests' own programs too: a program
    that several tests, or a test and a CLI process it starts, compile is compiled once per
    machine rather than once per test (OFFMARL_COMPILE_CACHE=off disables it)."""
    from offmarl.utils.compile_cache import enable_compile_cache

    enable_compile_cache()


ROOT = Path(__file__).resolve().parents[1]


def import_script(folder: str, name: str) -> Iterator[ModuleType]:
    """Yields the script `folder/name.py` of the repository (benchmarks/, experiments/: not
    packages) imported as a module; a module fixture's body."""
    path = str(ROOT / folder)
    sys.path.insert(0, path)
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(path)


@pytest.fixture(scope="session")
def smax_3m():
    from offmarl.envs import make_env

    return make_env("smax:3m")


@pytest.fixture(scope="session")
def mpe_spread():
    from offmarl.envs import make_env

    return make_env("mpe:simple_spread")
