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


class MLPGaussianPolicy(nn.Module):
    """Shared actor for box actions: observation -> [means, log-stds] ([..., 2D]), the
    log-std a learned vector independent of the observation (PPO's usual choice; it drifts
    far less per update than a log-std head)."""

    hidden_sizes: Sequence[int]
    action_dim: int
    initial_log_std: float = -0.5

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = _Torso(self.hidden_sizes)(obs)
        mean = nn.Dense(self.action_dim, kernel_init=nn.initializers.orthogonal(0.01))(x)
        log_std = self.param("log_std", nn.initializers.constant(self.initial_log_std), (self.action_dim,))
        return jnp.concatenate([mean, jnp.broadcast_to(log_std, mean.shape)], axis=-1)


class MLPValue(nn.Module):
    """Critic: input vector -> scalar value."""

    hidden_sizes: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _Torso(self.hidden_sizes)(x)
        return nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0))(x)[..., 0]


def with_agent_id(obs: jax.Array) -> jax.Array:
    """Append a one-hot agent id to [..., N, obs_dim] observations (shared networks)."""
    num_agents = obs.shape[-2]
    ids = jnp.broadcast_to(jnp.eye(num_agents, dtype=obs.dtype), obs.shape[:-2] + (num_agents,) * 2)
    return jnp.concatenate([obs, ids], axis=-1)


class MLPActionValues(nn.Module):
    """Input vector -> one value per action (Q heads of the value-based learners)."""

    hidden_sizes: Sequence[int]
    num_actions: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _Torso(self.hidden_sizes)(x)
        return nn.Dense(self.num_actions, kernel_init=nn.initializers.orthogonal(1.0))(x)


class MLPActionInputValue(nn.Module):
    """Critic with the action as an input: (x, action) -> scalar Q(x, a), the local Q of
    box actions (one head per action is impossible there). The two are concatenated."""

    hidden_sizes: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array, action: jax.Array) -> jax.Array:
        return MLPValue(self.hidden_sizes)(jnp.concatenate([x, action], axis=-1))


class MonotonicMixer(nn.Module):
    """OMIGA's mixer: state -> non-negative per-agent weights w(s) and a bias b(s).

    Q_tot = sum_i w_i(s) Q_i + b(s); one hidden layer, |.| keeps the weights >= 0.
    """

    num_agents: int
    hidden_size: int = 64

    @nn.compact
    def __call__(self, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = nn.relu(nn.Dense(self.hidden_size)(state))
        weights = jnp.abs(nn.Dense(self.num_agents)(x))
        bias = nn.Dense(1)(x)[..., 0]
        return weights, bias
