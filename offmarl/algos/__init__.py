"""Algorithm registry. Add an algorithm by writing a module with a config dataclass
(a docstring per field, a `validate()` method) and a class implementing
`OnlineAlgorithm` or `OfflineAlgorithm` (algos/base.py), then registering it here.

The registry is listable without importing jax or flax: an entry's name, kind and
description are plain strings, and its module is imported only when `config_class` or
`build` is first read. The algorithm classes re-exported here (`MATrace`, `vtrace`, ...)
are loaded the same way, on first access.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from offmarl.errors import ConfigError

if TYPE_CHECKING:
    from offmarl.envs.base import EnvSpec

Kind = Literal["online", "offline"]


@dataclass(frozen=True)
class AlgorithmEntry:
    """One algorithm: `config_class()` makes its default config, `build(config, spec)` the
    algorithm. Both are looked up in `module` (imported on first access)."""

    module: str
    config_name: str
    build_name: str
    kind: Kind
    description: str
    continuous: bool = False
    """Capability flag: trains and acts with continuous (box) actions."""

    def _load(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.module), attr)

    @property
    def config_class(self) -> type:
        return self._load(self.config_name)

    @property
    def build(self) -> Callable[[Any, EnvSpec], Any]:
        return self._load(self.build_name)

    @property
    def run_defaults(self) -> dict[str, Any]:
        """The algorithm's own values for runner settings (budget, learning rate, passes
        per batch, ...): the config class's RUN_DEFAULTS, applied before any user layer."""
        return dict(getattr(self.config_class, "RUN_DEFAULTS", {}))

    def action_space_defaults(self, continuous: bool) -> dict[str, Any]:
        """The algorithm's own values for box-action (continuous) tasks, algorithm or runner
        settings: the config class's CONTINUOUS_DEFAULTS, applied after run_defaults and
        before any user layer; nothing on discrete tasks."""
        return dict(getattr(self.config_class, "CONTINUOUS_DEFAULTS", {})) if continuous else {}

    def families_with_defaults(self) -> dict[str, dict[str, Any]]:
        """{family: values} of the config class's FAMILY_DEFAULTS (empty if it has none)."""
        return {family: dict(values) for family, values in getattr(self.config_class, "FAMILY_DEFAULTS", {}).items()}

    def family_defaults(self, env: str) -> dict[str, Any]:
        """The algorithm's own values for one environment family (the part of `env` before
        ':', e.g. smax): the config class's FAMILY_DEFAULTS[family], applied after
        action_space_defaults and before any user layer; nothing for other families."""
        return self.families_with_defaults().get(env.partition(":")[0], {})


ALGORITHMS: dict[str, AlgorithmEntry] = {
    "matrace": AlgorithmEntry("offmarl.algos.matrace", "MATraceConfig", "MATrace", "online",
                              "MA-Trace: multi-agent V-trace actor-critic", continuous=True),
    "mappo": AlgorithmEntry("offmarl.algos.ppo", "MAPPOConfig", "PPO", "online",
                            "MAPPO: PPO-clip + GAE, centralised critic on the global state", continuous=True),
    "ippo": AlgorithmEntry("offmarl.algos.ppo", "IPPOConfig", "PPO", "online",
                           "IPPO: PPO-clip + GAE, per-agent critics V_i(o_i)", continuous=True),
    "bc": AlgorithmEntry("offmarl.algos.bc", "BCConfig", "BC", "offline",
                         "behaviour cloning, shared actor", continuous=True),
    "omiga": AlgorithmEntry("offmarl.algos.omiga", "OMIGAConfig", "OMIGA", "offline",
                            "OMIGA: implicit global-to-local value regularisation", continuous=True),
    "inspo": AlgorithmEntry("offmarl.algos.inspo", "InSPOConfig", "InSPO", "offline",
                            "InSPO: in-sample sequential policy optimisation", continuous=True),
    "iql_cql": AlgorithmEntry("offmarl.algos.iql_cql", "IQLCQLConfig", "IQLCQL", "offline",
                              "independent Q-learning + CQL (OG-MARL baseline)"),
    "maicq": AlgorithmEntry("offmarl.algos.maicq", "MAICQConfig", "MAICQ", "offline",
                            "MAICQ: implicit constraint Q-learning, in-sample (OMIGA/InSPO/OG-MARL baseline)",
                            continuous=True),
}

_COMMAND = {"online": "offmarl train", "offline": "offmarl offline"}

# Names importable from offmarl.algos -> the module that defines them (loaded lazily).
_LAZY = {
    "MATrace": "offmarl.algos.matrace",
    "MATraceConfig": "offmarl.algos.matrace",
    "vtrace": "offmarl.algos.matrace",
    "PPO": "offmarl.algos.ppo",
    "MAPPOConfig": "offmarl.algos.ppo",
    "IPPOConfig": "offmarl.algos.ppo",
    "gae": "offmarl.algos.ppo",
    "BC": "offmarl.algos.bc",
    "BCConfig": "offmarl.algos.bc",
    "InSPO": "offmarl.algos.inspo",
    "InSPOConfig": "offmarl.algos.inspo",
    "IQLCQL": "offmarl.algos.iql_cql",
    "IQLCQLConfig": "offmarl.algos.iql_cql",
    "MAICQ": "offmarl.algos.maicq",
    "MAICQConfig": "offmarl.algos.maicq",
    "OMIGA": "offmarl.algos.omiga",
    "OMIGAConfig": "offmarl.algos.omiga",
    "EnvSpec": "offmarl.envs.base",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def check_action_support(name: str, env: str, continuous_env: bool) -> None:
    """ConfigError naming both sides if algorithm `name` cannot act in `env`'s action space."""
    entry = ALGORITHMS[name]
    if continuous_env and not entry.continuous:
        able = [n for n, e in ALGORITHMS.items() if e.continuous and e.kind == entry.kind]
        raise ConfigError(
            f"algorithm {name!r} supports discrete actions only, and {env!r} has continuous actions; "
            f"{entry.kind} algorithms with continuous support: {', '.join(able) or 'none yet'}"
        )


def get_algorithm(name: str, kind: Kind | None = None) -> AlgorithmEntry:
    """The registry entry called `name` (of `kind` if given); ConfigError names the valid choices."""
    valid = [n for n, e in ALGORITHMS.items() if kind is None or e.kind == kind]
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; valid choices: {', '.join(valid)}")
    entry = ALGORITHMS[name]
    if kind is not None and entry.kind != kind:
        raise ConfigError(
            f"algorithm {name!r} is {entry.kind}: run it with `{_COMMAND[entry.kind]}`; "
            f"valid choices here: {', '.join(valid)}"
        )
    return entry


__all__ = ["ALGORITHMS", "AlgorithmEntry", "MATrace", "MATraceConfig", "check_action_support", "get_algorithm",
           "vtrace"]
