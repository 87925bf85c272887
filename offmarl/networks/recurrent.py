"""Recurrent actor: Dense -> GRU -> action logits, one environment step at a time."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class GRUPolicy(nn.Module):
    """`(memory, obs, starts) -> (memory, logits)`; memory is zeroed where an episode starts.

    `hidden_sizes[0]` is the embedding layer, `hidden_sizes[-1]` the GRU width.
    """

    hidden_sizes: Sequence[int]
    num_actions: int

    @nn.compact
    def __call__(self, memory: jax.Array, obs: jax.Array, starts: jax.Array):
        memory = jnp.where(starts[..., None], 0.0, memory)
        x = nn.relu(nn.Dense(self.hidden_sizes[0], kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(obs))
        memory, x = nn.GRUCell(features=self.hidden_sizes[-1])(memory, x)
        logits = nn.Dense(self.num_actions, kernel_init=nn.initializers.orthogonal(0.01))(x)
        return memory, logits
