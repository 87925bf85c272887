"""Environment adapters behind one name space: `family:scenario`, e.g. `smax:3m`.

To add an environment family, write a module with `scenario_names()` and a
`make_<family>(scenario)` returning a `MultiAgentEnv`, and register it below.
"""

from __future__ import annotations

from typing import Callable

from offmarl.envs.base import EnvSpec, MultiAgentEnv
from offmarl.errors import ConfigError


def _families() -> dict[str, tuple[Callable[[], list[str]], Callable[[str], MultiAgentEnv]]]:
    from offmarl.envs import mpe, smax

    return {
        "smax": (smax.scenario_names, smax.make_smax),
        "mpe": (mpe.scenario_names, mpe.make_mpe),
    }


def list_envs() -> list[str]:
    """All environment names `make_env` accepts."""
    return [f"{fam}:{s}" for fam, (names, _) in _families().items() for s in names()]


def check_env_name(name: str) -> tuple[str, str]:
    """Split and validate `family:scenario`; raises ConfigError naming the valid choices."""
    families = _families()
    family, sep, scenario = name.partition(":")
    if not sep or family not in families:
        raise ConfigError(
            f"unknown environment {name!r}; valid families: "
            + ", ".join(f"{f}:<scenario>" for f in families)
            + " (see `offmarl envs`)"
        )
    valid = families[family][0]()
    if scenario not in valid:
        raise ConfigError(
            f"unknown {family} scenario {scenario!r} in {name!r}; valid: {', '.join(valid)}"
        )
    return family, scenario


def make_env(name: str) -> MultiAgentEnv:
    """Build the environment called `name` (see `list_envs`)."""
    family, scenario = check_env_name(name)
    return _families()[family][1](scenario)


__all__ = ["EnvSpec", "MultiAgentEnv", "check_env_name", "list_envs", "make_env"]
