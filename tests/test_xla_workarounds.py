"""offmarl puts its XLA CPU workarounds into XLA_FLAGS on import, keeping the user's own."""

from __future__ import annotations

import os
import subprocess
import sys

from offmarl.utils.xla_workarounds import CPU_FLAGS, apply_xla_workarounds

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def test_workaround_flags_are_appended_to_the_users_flags() -> None:
    environ = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
    apply_xla_workarounds(environ)
    assert environ["XLA_FLAGS"] == f"--xla_cpu_multi_thread_eigen=false {FLAG}=false"
    apply_xla_workarounds(environ)  # idempotent
    assert environ["XLA_FLAGS"].count(FLAG) == 1
    assert set(CPU_FLAGS) == {FLAG.removeprefix("--")}


def test_a_flag_the_user_set_is_kept() -> None:
    environ = {"XLA_FLAGS": f"{FLAG}=true"}
    apply_xla_workarounds(environ)
    assert environ["XLA_FLAGS"] == f"{FLAG}=true"
    empty: dict[str, str] = {}
    apply_xla_workarounds(empty)
    assert empty["XLA_FLAGS"] == f"{FLAG}=false"


def test_importing_offmarl_sets_the_flag_before_jax_starts() -> None:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = "import offmarl, os, jax; jax.numpy.zeros(1).block_until_ready(); print(os.environ['XLA_FLAGS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{FLAG}=false"
