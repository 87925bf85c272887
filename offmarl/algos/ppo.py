"""MAPPO and IPPO: PPO-clip with generalised advantage estimation (GAE) for
decentralised shared actors (Yu et al. 2022, "The Surprising Effectiveness of PPO in
Cooperative Multi-Agent Games"; de Witt et al. 2020 for IPPO).

MAPPO's critic is centralised (the global state, or all observations concatenated) and
gives a team value; IPPO's is decentralised, V_i(o_i) with shared parameters. Each agent
has its own ratio r_i = pi(a_i|o_i) / mu(a_i|o_i), clipped into [1 - eps, 1 + eps].
Values and advantages are computed once per batch (`prepare_batch`), with the parameters
the update starts from, and held fixed across the passes, as PPO prescribes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from offmarl.algos.actor_critic import ActorCritic, ActorCriticConfig, Critic
from offmarl.config import require
from offmarl.types import Rollout


def gae(
    rewards: jax.Array, discounts: jax.Array, values: jax.Array, bootstrap_value: jax.Array,
    lambda_: float,
) -> jax.Array:
    """Generalised advantage estimates, time-major.

    A_t = sum_{u>=t} (prod_{k=t}^{u-1} lambda gamma_k) delta_u with
    delta_t = r_t + gamma_t V(x_{t+1}) - V(x_t); `discounts` holds gamma_t = gamma (1 - done_t),
    so the sum stops at an episode's end. Shapes [T, ...], bootstrap [...].
    """
    values_tp1 = jnp.concatenate([values[1:], bootstrap_value[None]], axis=0)
    deltas = rewards + discounts * values_tp1 - values

    def backward(acc: jax.Array, step: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        delta, discount = step
        acc = delta + discount * lambda_ * acc
        return acc, acc

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(bootstrap_value), (deltas, discounts), reverse=True)
    return advantages


class PPOTargets(NamedTuple):
    """What `prepare_batch` fixes for the passes over one batch, shaped like the values."""

    values: jax.Array  # V(x_t) before the update
    advantages: jax.Array  # GAE
    returns: jax.Array  # advantages + values: the value targets


@dataclass(frozen=True)
class PPOConfig(ActorCriticConfig):
    """PPO hyper-parameters. Defaults follow JaxMARL's SMAX baselines (docs/references.md,
    "JaxMARL's SMAX baselines"), with a feed-forward actor in place of their GRU."""

    RUN_DEFAULTS: ClassVar[dict[str, Any]] = {
        "env_steps": 10_000_000, "num_envs": 128, "unroll_length": 128, "num_epochs": 4,
        "num_minibatches": 4, "lr": 2e-3,
    }
    """PPO's runner settings, JaxMARL's: 128 environments x 128 steps, 4 passes x 4
    minibatches, lr 2e-3 annealed, 1e7 env steps."""

    critic: Critic = "state"
    """Critic input: the global state (MAPPO), all observations concatenated, or each
    agent's own observation (IPPO)."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """Hidden layers of the actor and the critic (JaxMARL: 128 wide)."""
    agent_id: bool = True
    """Append a one-hot agent id to each agent's observation (as JaxMARL's MAPPO does)."""
    gae_lambda: float = 0.95
    """GAE's lambda."""
    clip_eps: float = 0.2
    """PPO's clip of the per-agent ratio, [1 - clip_eps, 1 + clip_eps]; also the value clip."""
    clip_value: bool = True
    """Clip the value update around the batch's old values (the max of the two losses)."""
    value_cost: float = 0.5
    """Weight of the value loss."""
    entropy_cost: float = 0.01
    """Weight of the entropy bonus (mean entropy per agent)."""
    normalize_advantages: bool = True
    """Standardise advantages within each minibatch."""

    def validate(self) -> None:
        super().validate()
        require(0.0 <= self.gae_lambda <= 1.0, f"gae_lambda={self.gae_lambda} is invalid: must be in [0, 1]")
        require(0.0 < self.clip_eps < 1.0, f"clip_eps={self.clip_eps} is invalid: must be in (0, 1)")
        require(self.value_cost >= 0, f"value_cost={self.value_cost} is invalid: must be >= 0")
        require(self.entropy_cost >= 0, f"entropy_cost={self.entropy_cost} is invalid: must be >= 0")


@dataclass(frozen=True)
class MAPPOConfig(PPOConfig):
    """MAPPO: PPO with a centralised critic over the global state."""


@dataclass(frozen=True)
class IPPOConfig(PPOConfig):
    """IPPO: PPO with per-agent critics V_i(o_i) (shared parameters), no agent id (as
    JaxMARL's IPPO)."""

    critic: Critic = "decentralised"
    """Critic input: each agent's own observation (IPPO), the global state or all
    observations concatenated."""
    agent_id: bool = False
    """Append a one-hot agent id to each agent's observation."""


class PPO(ActorCritic):
    """Pure PPO functions for one environment spec (see OnlineAlgorithm)."""

    config: PPOConfig

    def prepare_batch(self, params: dict, rollout: Rollout) -> Rollout:
        """Values and GAE advantages with the parameters the update starts from."""
        values = jax.lax.stop_gradient(self.values(params, rollout.obs, rollout.state))
        rewards, discounts = self.team_signals(rollout, values)
        advantages = gae(rewards, discounts, values[:-1], values[-1], self.config.gae_lambda)
        return rollout._replace(extras=PPOTargets(values[:-1], advantages, advantages + values[:-1]))

    def loss(
        self, params: dict, rollout: Rollout, progress: jax.Array | float = 0.0
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        cfg = self.config
        targets: PPOTargets = rollout.extras
        dist = self.unroll_distribution(params, rollout)
        log_probs = dist.log_prob(rollout.actions)  # [T, B, N]
        ratios = jnp.exp(log_probs - rollout.behaviour_log_probs)
        safe_log_ratios = jax.lax.stop_gradient(jnp.clip(log_probs - rollout.behaviour_log_probs, -20.0, 20.0))

        advantages = targets.advantages
        if cfg.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        if not self.decentralised_critic:
            advantages = advantages[..., None]  # every agent shares the team advantage
        clipped = jnp.clip(ratios, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps)
        policy_loss = -jnp.mean(jnp.minimum(ratios * advantages, clipped * advantages))

        values = self.values(params, rollout.obs[:-1], rollout.state[:-1])
        value_error = (values - targets.returns) ** 2
        if cfg.clip_value:
            clipped_values = targets.values + jnp.clip(values - targets.values, -cfg.clip_eps, cfg.clip_eps)
            value_error = jnp.maximum(value_error, (clipped_values - targets.returns) ** 2)
        value_loss = cfg.value_cost * 0.5 * jnp.mean(value_error)

        entropy = jnp.mean(dist.entropy())  # per agent
        entropy_loss = -cfg.entropy_cost * entropy
        total = policy_loss + value_loss + entropy_loss
        return total, {
            "loss": total,
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy": entropy,
            "entropy_per_agent": entropy,  # the same: PPO's entropy is already a mean per agent
            "ratio_mean": jnp.mean(ratios),
            "clipped_fraction": jnp.mean(jnp.abs(ratios - 1.0) > cfg.clip_eps),
            "approx_kl": jnp.mean(jnp.expm1(safe_log_ratios) - safe_log_ratios),
            "value_mean": jnp.mean(values),
        }
