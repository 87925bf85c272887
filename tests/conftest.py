"""Shared fixtures: environments are built once per session (building compiles nothing
heavy, but SMAX construction and first resets take a few seconds)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")


@pytest.fixture(scope="session")
def smax_3m():
    from offmarl.envs import make_env

    return make_env("smax:3m")


@pytest.fixture(scope="session")
def mpe_spread():
    from offmarl.envs import make_env

    return make_env("mpe:simple_spread")
