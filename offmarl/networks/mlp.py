"""Feed-forward actor and critic networks."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Logit given to unavailable actions: finite so that log-softmax stays NaN-free.
MASKED_LOGIT = -1e9


def masked_logits(logits: jax.Array, avail: jax.Array) -> jax.Array:
    """Replace the logits of unavailable actions by a huge negative number."""
    return jnp.where(avail, logits, MASKED_LOGIT)


class _Torso(nn.Module):
    hidden_sizes: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        return x


class MLPPolicy(nn.Module):
    """Shared actor: observation -> action logits (one Dense head)."""

    hidden_sizes: Sequence[int]
    num_actions: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = _Torso(self.hidden_sizes)(obs)
        return nn.Dense(self.num_actions, kernel_init=nn.initializers.orthogonal(0.01))(x)


class MLPValue(nn.Module):
    """Critic: input vector -> scalar value."""

    hidden_sizes: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _Torso(self.hidden_sizes)(x)
        return nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0))(x)[..., 0]
