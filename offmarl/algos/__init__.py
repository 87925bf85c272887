"""Algorithm registry. Add an algorithm by writing a module with a config dataclass
(a docstring per field, a `validate()` method) and a class implementing
`OnlineAlgorithm` or `OfflineAlgorithm` (algos/base.py), then registering it here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from offmarl.algos.bc import BC, BCConfig
from offmarl.algos.inspo import InSPO, InSPOConfig
from offmarl.algos.iql_cql import IQLCQL, IQLCQLConfig
from offmarl.algos.matrace import MATrace, MATraceConfig, vtrace
from offmarl.algos.omiga import OMIGA, OMIGAConfig
from offmarl.envs.base import EnvSpec
from offmarl.errors import ConfigError

Kind = Literal["online", "offline"]


@dataclass(frozen=True)
class AlgorithmEntry:
    config_class: type
    build: Callable[[Any, EnvSpec], Any]
    kind: Kind
    description: str


ALGORITHMS: dict[str, AlgorithmEntry] = {
    "matrace": AlgorithmEntry(MATraceConfig, MATrace, "online",
                              "MA-Trace: multi-agent V-trace actor-critic"),
    "bc": AlgorithmEntry(BCConfig, BC, "offline", "behaviour cloning, shared actor"),
    "omiga": AlgorithmEntry(OMIGAConfig, OMIGA, "offline",
                            "OMIGA: implicit global-to-local value regularisation"),
    "inspo": AlgorithmEntry(InSPOConfig, InSPO, "offline",
                            "InSPO: in-sample sequential policy optimisation"),
    "iql_cql": AlgorithmEntry(IQLCQLConfig, IQLCQL, "offline",
                              "independent Q-learning + CQL (OG-MARL baseline)"),
}

_COMMAND = {"online": "offmarl train", "offline": "offmarl offline"}


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


__all__ = ["ALGORITHMS", "AlgorithmEntry", "MATrace", "MATraceConfig", "get_algorithm", "vtrace"]
