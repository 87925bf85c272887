"""Independent Q-learning with a conservative (CQL) regulariser, OG-MARL's IQL+CQL
baseline with a feed-forward network: one Q network shared by the agents (one-hot
agent id), trained on the team reward, double-Q targets over available actions, and
the CQL term logsumexp_a Q(o, a) - Q(o, a_data) that pushes down unseen actions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from offmarl.algos.offline_common import (
    StatelessPolicy,
    gradient_step,
    make_optimizer,
    soft_update,
    taken,
    validate_common,
)
from offmarl.config import require
from offmarl.envs.base import EnvSpec
from offmarl.networks import MLPActionValues, masked_logits, with_agent_id
from offmarl.types import TransitionBatch


@dataclass(frozen=True)
class IQLCQLConfig:
    """IQL+CQL hyper-parameters."""

    cql_weight: float = 2.0
    """Weight of the conservative term (OG-MARL's default for SMAC)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Soft target-update rate."""
    lr: float = 5e-4
    """Adam learning rate."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip; 0 disables it."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden widths of the Q network."""

    def validate(self) -> None:
        validate_common(self)
        require(self.cql_weight >= 0, f"cql_weight={self.cql_weight} is invalid: must be >= 0")
        require(0 < self.tau <= 1, f"tau={self.tau} is invalid: must be in (0, 1]")


class IQLCQLState(NamedTuple):
    q: Any
    target_q: Any
    opt_state: Any


def iql_cql_loss(
    q_values: jax.Array, avail: jax.Array, actions: jax.Array, target: jax.Array, valid: jax.Array,
    cql_weight: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(total, TD, CQL) losses. q_values [B, N, A], target [B, N] (no gradient), valid [B]."""
    q_taken = taken(q_values, actions)
    td = jnp.sum(valid[:, None] * (q_taken - target) ** 2) / jnp.maximum(jnp.sum(valid) * q_taken.shape[1], 1.0)
    logsumexp = jax.nn.logsumexp(masked_logits(q_values, avail), axis=-1)
    cql = jnp.mean(logsumexp - q_taken)
    return td + cql_weight * cql, td, cql


class IQLCQL(StatelessPolicy):
    def __init__(self, config: IQLCQLConfig, spec: EnvSpec) -> None:
        self.config = config
        self.spec = spec
        self.q_net = MLPActionValues(config.hidden_sizes, spec.num_actions)
        self.optimizer = make_optimizer(config.lr, config.max_grad_norm)

    def _q(self, params: Any, obs: jax.Array) -> jax.Array:
        return self.q_net.apply(params, with_agent_id(obs))

    def init(self, rng: jax.Array) -> IQLCQLState:
        q = self.q_net.init(rng, jnp.zeros((self.spec.num_agents, self.spec.obs_dim + self.spec.num_agents)))
        return IQLCQLState(q, q, self.optimizer.init(q))

    def _loss(self, params: Any, target_params: Any, batch: TransitionBatch) -> tuple[jax.Array, dict]:
        next_online = masked_logits(self._q(params, batch.next_obs), batch.next_avail)
        next_target = taken(self._q(target_params, batch.next_obs), jnp.argmax(next_online, axis=-1))
        target = batch.reward[:, None] + self.config.gamma * (1.0 - batch.done[:, None]) * next_target
        loss, td, cql = iql_cql_loss(self._q(params, batch.obs), batch.avail, batch.actions,
                                     jax.lax.stop_gradient(target), batch.valid, self.config.cql_weight)
        return loss, {"td_loss": td, "cql_loss": cql}

    def update(self, state: IQLCQLState, batch: TransitionBatch, rng: jax.Array) -> tuple[IQLCQLState, dict]:
        q, opt_state, metrics = gradient_step(self.optimizer, state.q, state.opt_state, self._loss,
                                              state.target_q, batch)
        return IQLCQLState(q, soft_update(state.target_q, q, self.config.tau), opt_state), metrics

    def logits(self, params: Any, obs: jax.Array, avail: jax.Array) -> jax.Array:
        """Acting is greedy in Q; sampled evaluation draws from softmax(Q)."""
        return masked_logits(self._q(params, obs), avail)

    def acting_params(self, state: IQLCQLState) -> Any:
        return state.q
