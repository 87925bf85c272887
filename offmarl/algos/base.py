"""What a runner needs from an online algorithm. Runners depend on this, not on MA-Trace."""

from __future__ import annotations

from typing import Any, Protocol

import jax

from offmarl.networks.distributions import ActionDistribution, MaskedCategorical
from offmarl.types import Rollout, TransitionBatch

Params = Any


class Policy(Protocol):
    """Decentralised acting, the part evaluation and data collection need. Pure, jittable."""

    def initial_policy_state(self, batch_shape: tuple[int, ...]) -> jax.Array:
        """Actor memory [*batch_shape, N, H] at an episode start (H = 0 if stateless)."""
        ...

    def action_distribution(
        self, params: Params, policy_state: jax.Array, obs: jax.Array, avail: jax.Array,
        starts: jax.Array,
    ) -> tuple[ActionDistribution, jax.Array]:
        """Each agent's action distribution for one decentralised step (batch [..., N]) and
        the next memory. The acting loop (offmarl/acting/loop.py) samples it, scores
        actions with it and takes its mode; it never builds a distribution itself."""
        ...

    def policy_step(
        self, params: Params, policy_state: jax.Array, obs: jax.Array, avail: jax.Array,
        starts: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """One decentralised acting step: the actor's outputs (masked logits [..., N, A], or
        with box actions the means and log-stds [..., N, 2D]) and the next memory.

        `obs` is [..., N, obs_dim]; `starts` [...] marks observations that begin an
        episode (the memory is reset there).
        """
        ...


class CategoricalActing:
    """`action_distribution` for policies whose `policy_step` returns masked logits."""

    def action_distribution(
        self, params: Params, policy_state: jax.Array, obs: jax.Array, avail: jax.Array,
        starts: jax.Array,
    ) -> tuple[MaskedCategorical, jax.Array]:
        logits, memory = self.policy_step(params, policy_state, obs, avail, starts)  # type: ignore[attr-defined]
        return MaskedCategorical(logits), memory


class OnlineAlgorithm(Policy, Protocol):
    """A decentralised-execution actor-critic trained from unrolls. Pure, jittable."""

    config: Any

    def init(self, rng: jax.Array) -> Params:
        """Fresh parameters for every network (and learnable coefficient) of the algorithm."""
        ...

    def prepare_batch(self, params: Params, rollout: Rollout) -> Rollout:
        """Called once per batch, before the passes over it, with the parameters the update
        starts from: per-step quantities that must not move between passes (e.g. values and
        advantages) go into `rollout.extras`. Algorithms that need none return `rollout`."""
        ...

    def observe(self, params: Params, rollout: Rollout) -> Params:
        """Called once per batch, after the passes over it: update what the parameters hold
        besides trained weights (running input statistics). Algorithms with none return
        `params`."""
        ...

    def loss(
        self, params: Params, rollout: Rollout, progress: jax.Array | float = 0.0
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar training loss and diagnostics on a time-major rollout.

        `progress` is the fraction of the training budget done, for schedules.
        """
        ...


class OfflineAlgorithm(Policy, Protocol):
    """A learner trained from a fixed dataset of transitions. Pure, jittable."""

    config: Any
    team_value_metric: str | None  # the diagnostic estimating the team's discounted return, if any

    def init(self, rng: jax.Array) -> Any:
        """The learner state: parameters, target networks and optimiser states."""
        ...

    def update(self, state: Any, batch: TransitionBatch, rng: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        """One training iteration on a minibatch; returns the new state and diagnostics."""
        ...

    def acting_params(self, state: Any) -> Params:
        """The part of the learner state that `policy_step` needs."""
        ...
