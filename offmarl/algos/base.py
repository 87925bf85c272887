"""What a runner needs from an online algorithm. Runners depend on this, not on MA-Trace."""

from __future__ import annotations

from typing import Any, Protocol

import jax

from offmarl.types import Rollout

Params = Any


class OnlineAlgorithm(Protocol):
    """A decentralised-execution actor-critic trained from unrolls.

    All methods are pure and jittable.
    """

    config: Any

    def init(self, rng: jax.Array) -> Params:
        """Fresh parameters for every network (and learnable coefficient) of the algorithm."""
        ...

    def policy_logits(self, params: Params, obs: jax.Array, avail: jax.Array) -> jax.Array:
        """Masked action logits [..., N, A] from per-agent observations [..., N, obs_dim]."""
        ...

    def loss(self, params: Params, rollout: Rollout) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar training loss and diagnostics on a time-major rollout."""
        ...
