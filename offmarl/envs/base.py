"""The uniform multi-agent environment interface every adapter implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import jax

from offmarl.types import TimeStep


@dataclass(frozen=True)
class EnvSpec:
    """Static facts about an environment that networks and runners need."""

    name: str
    num_agents: int
    obs_dim: int
    state_dim: int
    num_actions: int
    max_episode_steps: int
    has_win: bool
    """Whether the environment has a win condition (SMAX) or only returns (MPE)."""


class MultiAgentEnv(Protocol):
    """A jittable cooperative multi-agent environment with auto-reset."""

    spec: EnvSpec
    settings: dict[str, Any]
    """Keyword arguments the underlying environment was built with (recorded in runs)."""

    def reset(self, key: jax.Array) -> tuple[Any, TimeStep]:
        """Start an episode; the returned TimeStep has zero reward and done=False."""
        ...

    def step(self, key: jax.Array, env_state: Any, actions: jax.Array) -> tuple[Any, TimeStep]:
        """Apply joint `actions` [num_agents] int32; resets automatically after a done."""
        ...
