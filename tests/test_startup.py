"""`offmarl envs` and `offmarl algos` must stay fast: listing environments and algorithms
imports neither jax nor JaxMARL (nor flax or NumPy)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("jax", "jaxmarl", "flax", "numpy", "optax", "distrax")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_listing_envs_and_algos_imports_no_jax() -> None:
    code = (
        "import offmarl.envs, offmarl.algos; offmarl.envs.list_envs(); "
        "[e.kind for e in offmarl.algos.ALGORITHMS.values()]; import sys; "
        "assert 'jax' not in sys.modules and 'jaxmarl' not in sys.modules"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr


def test_listing_and_validating_names_import_nothing_heavy() -> None:
    code = (
        "import sys, offmarl.envs, offmarl.algos\n"
        "names = offmarl.envs.list_envs()\n"
        "assert 'smax:3m' in names and 'mpe:simple_spread' in names and 'bridge' in names\n"
        "assert offmarl.envs.check_env_name('smax:3m') == ('smax', '3m')\n"
        "assert offmarl.envs.check_env_name('matrix:xor') == ('matrix', 'xor')\n"
        "assert offmarl.envs.check_env_name('bridge') == ('bridge', '')\n"
        "try:\n    offmarl.envs.check_env_name('smax:4m')\nexcept ValueError:\n    pass\n"
        "else:\n    raise AssertionError('smax:4m accepted')\n"
        "for name, e in offmarl.algos.ALGORITHMS.items():\n    print(name, e.kind, e.description)\n"
        "offmarl.algos.get_algorithm('bc', 'offline')\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "matrace online" in result.stdout


def test_registry_entries_load_their_modules_on_access() -> None:
    from offmarl.algos import ALGORITHMS, MATrace, MATraceConfig, get_algorithm, vtrace
    from offmarl.algos.matrace import MATrace as direct

    assert MATrace is direct and callable(vtrace)
    entry = get_algorithm("matrace", "online")
    assert entry.config_class is MATraceConfig and entry.build is MATrace
    for name, entry in ALGORITHMS.items():
        config = entry.config_class()
        assert entry.build.__module__ == entry.module == type(config).__module__, name
