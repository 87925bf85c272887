"""Environment adapters behind one name space: `family:scenario` (e.g. `smax:3m`) or a bare name.

To add an environment family, write a module with `scenario_names()` and a
`make_<family>(scenario)` returning a `MultiAgentEnv`, and register it below. A
single environment without scenarios (like `bridge`) goes in `_standalone()`.
`matrix:` also accepts a path to a game file ending in `.json`.

Listing and validating names (`list_envs`, `check_env_name`) imports neither jax nor
JaxMARL: scenario lists are static (smax.py, mpe.py, mabrax.py) or read from the JSON
game files, and each family's module with jax in it is imported only when an
environment is built.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from offmarl.errors import ConfigError

if TYPE_CHECKING:
    from offmarl.envs.base import EnvSpec, MultiAgentEnv


def _matrix_names() -> list[str]:
    """The built-in matrix games (the same list as `matrix.scenario_names`, without jax)."""
    names = (entry.name for entry in (resources.files("offmarl.envs") / "games").iterdir())
    return sorted(name.removesuffix(".json") for name in names if name.endswith(".json"))


def _make_matrix(scenario: str) -> MultiAgentEnv:
    from offmarl.envs.matrix import make_matrix

    return make_matrix(scenario)


def _families() -> dict[str, tuple[Callable[[], list[str]], Callable[[str], MultiAgentEnv]]]:
    from offmarl.envs import mabrax, mpe, smax  # static name lists; jax is imported by make_* only

    return {
        "smax": (smax.scenario_names, smax.make_smax),
        "mpe": (mpe.scenario_names, mpe.make_mpe),
        "mabrax": (mabrax.scenario_names, mabrax.make_mabrax),
        "matrix": (_matrix_names, _make_matrix),
    }


def _make_bridge() -> MultiAgentEnv:
    from offmarl.envs.bridge import make_bridge

    return make_bridge()


def _standalone() -> dict[str, Callable[[], MultiAgentEnv]]:
    return {"bridge": _make_bridge}


def has_continuous_actions(name: str) -> bool:
    """Whether environment `name` (already checked) has box actions; known without building it."""
    family, _, scenario = name.partition(":")
    if family == "mpe":
        from offmarl.envs import mpe

        return scenario in mpe.CONTINUOUS
    if family == "mabrax":
        from offmarl.envs import mabrax

        return scenario in mabrax.SCENARIOS
    return False


def list_envs() -> list[str]:
    """All environment names `make_env` accepts (besides `matrix:<path>.json`)."""
    families = [f"{fam}:{s}" for fam, (names, _) in _families().items() for s in names()]
    return families + list(_standalone())


def check_env_name(name: str) -> tuple[str, str]:
    """Split and validate `family:scenario` (a bare name has scenario "");
    raises ConfigError naming the valid choices."""
    if name in _standalone():
        return name, ""
    families = _families()
    family, sep, scenario = name.partition(":")
    if not sep or family not in families:
        choices = [f"{f}:<scenario>" for f in families] + ["matrix:<path>.json", *_standalone()]
        raise ConfigError(
            f"unknown environment {name!r}; valid: {', '.join(choices)} (see `offmarl envs`)"
        )
    if family == "matrix" and scenario.endswith(".json"):
        from offmarl.envs.matrix import load_game

        load_game(scenario)  # raises ConfigError naming what is wrong with the file
        return family, scenario
    valid = families[family][0]()
    if scenario not in valid:
        path_hint = ", or a path ending in .json" if family == "matrix" else ""
        raise ConfigError(
            f"unknown {family} scenario {scenario!r} in {name!r}; valid: {', '.join(valid)}{path_hint}"
        )
    return family, scenario


def make_env(name: str) -> MultiAgentEnv:
    """Build the environment called `name` (see `list_envs`)."""
    family, scenario = check_env_name(name)
    if not scenario:
        return _standalone()[family]()
    return _families()[family][1](scenario)


def __getattr__(name: str) -> Any:
    # EnvSpec and MultiAgentEnv live in base.py, which imports jax: load it on first use.
    if name in ("EnvSpec", "MultiAgentEnv"):
        from offmarl.envs import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EnvSpec", "MultiAgentEnv", "check_env_name", "has_continuous_actions", "list_envs", "make_env"]
