"""The uniform multi-agent environment interface every adapter implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import jax

from offmarl.types import TimeStep


@dataclass(frozen=True)
class DiscreteActions:
    """Each agent picks one of `num_actions` actions, some masked unavailable per step."""

    num_actions: int


@dataclass(frozen=True)
class BoxActions:
    """Each agent picks a real vector with low[k] <= a[k] <= high[k]; no masks."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def dim(self) -> int:
        return len(self.low)


ActionSpace = DiscreteActions | BoxActions


@dataclass(frozen=True)
class EnvSpec:
    """Static facts about an environment that networks and runners need."""

    name: str
    num_agents: int
    obs_dim: int
    state_dim: int
    num_actions: int
    """Discrete actions per agent (the width of the legal-action masks); 0 with a box."""
    max_episode_steps: int
    has_win: bool
    """Whether the environment has a win condition (SMAX) or only returns (MPE)."""
    action_space: ActionSpace | None = None
    """The agents' (shared) action space; None means DiscreteActions(num_actions)."""

    def __post_init__(self) -> None:
        if self.action_space is None:
            object.__setattr__(self, "action_space", DiscreteActions(self.num_actions))

    @property
    def continuous(self) -> bool:
        return isinstance(self.action_space, BoxActions)


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
