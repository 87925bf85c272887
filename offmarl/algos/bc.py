"""Behaviour cloning: a shared decentralised actor fitted by maximum likelihood of the
dataset actions, under a masked categorical (discrete actions) or a tanh-Gaussian rescaled
to the box (continuous actions; see offline_common.TanhGaussianHead)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from offmarl.algos.offline_common import SharedActor, gradient_step, make_optimizer, validate_common
from offmarl.envs.base import EnvSpec
from offmarl.types import TransitionBatch


@dataclass(frozen=True)
class BCConfig:
    """Behaviour-cloning hyper-parameters (network sizes as OMIGA's actor)."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    """Widths of the actor's hidden layers."""
    box_policy: str = "tanh"
    """The policy's distribution on box actions: "tanh" (OMIGA's tanh-Gaussian) or "censored"
    (a Gaussian clipped into the box, whose actions on a face score the probability beyond
    it; docs/omiga.md, "Actions on the box's faces"). Discrete actions ignore it."""
    lr: float = 5e-4
    """Adam learning rate."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip; 0 disables it."""

    def validate(self) -> None:
        validate_common(self)


class BCState(NamedTuple):
    policy: Any
    opt_state: Any


def bc_loss(log_probs: jax.Array) -> jax.Array:
    """Negative log-likelihood of the dataset actions, averaged over samples and agents."""
    return -jnp.mean(log_probs)


class BC(SharedActor):
    def __init__(self, config: BCConfig, spec: EnvSpec) -> None:
        super().__init__(config.hidden_sizes, spec, config.box_policy)
        self.config = config
        self.optimizer = make_optimizer(config.lr, config.max_grad_norm)

    def init(self, rng: jax.Array) -> BCState:
        policy = self.init_actor(rng)
        return BCState(policy, self.optimizer.init(policy))

    def _loss(self, params: Any, batch: TransitionBatch) -> tuple[jax.Array, dict]:
        loss = bc_loss(self.log_prob(params, batch.obs, batch.avail, batch.actions))
        return loss, {"policy_loss": loss}

    def update(self, state: BCState, batch: TransitionBatch, rng: jax.Array) -> tuple[BCState, dict]:
        policy, opt_state, metrics = gradient_step(self.optimizer, state.policy, state.opt_state, self._loss, batch)
        return BCState(policy, opt_state), metrics

    def acting_params(self, state: BCState) -> Any:
        return state.policy
