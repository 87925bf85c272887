"""Shared fixtures: environments are built once per session (building compiles nothing
heavy, but SMAX construction and first resets take a few seconds)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")


def pytest_configure(config: pytest.Config) -> None:
    """The CLI's persistent compilation cache for the tests' own programs too: a program
    that several tests, or a test and a CLI process it starts, compile is compiled once per
    machine rather than once per test (OFFMARL_COMPILE_CACHE=off disables it)."""
    from offmarl.utils.compile_cache import enable_compile_cache

    enable_compile_cache()


@pytest.fixture(scope="session")
def smax_3m():
    from offmarl.envs import make_env

    return make_env("smax:3m")


@pytest.fixture(scope="session")
def mpe_spread():
    from offmarl.envs import make_env

    return make_env("mpe:simple_spread")
