"""Algorithm registry. Add an algorithm by writing a module with a config
dataclass (a docstring per field, a `validate()` method) and a class
implementing `OnlineAlgorithm`, then registering it here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from offmarl.algos.base import OnlineAlgorithm
from offmarl.algos.matrace import MATrace, MATraceConfig, vtrace
from offmarl.envs.base import EnvSpec
from offmarl.errors import ConfigError


@dataclass(frozen=True)
class AlgorithmEntry:
    config_class: type
    build: Callable[[Any, EnvSpec], OnlineAlgorithm]
    description: str


ALGORITHMS: dict[str, AlgorithmEntry] = {
    "matrace": AlgorithmEntry(
        MATraceConfig, MATrace, "MA-Trace: multi-agent V-trace actor-critic (online)"
    ),
}


def get_algorithm(name: str) -> AlgorithmEntry:
    """The registry entry called `name`; ConfigError names the valid choices otherwise."""
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; valid choices: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


__all__ = ["ALGORITHMS", "AlgorithmEntry", "MATrace", "MATraceConfig", "get_algorithm", "vtrace"]
