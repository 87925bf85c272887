"""MA-Trace: multi-agent V-trace actor-critic (Zawalski et al., AAMAS 2022).

Centralised critic, decentralised shared actor. The joint importance ratio is
the product of the agents' ratios, rho = prod_i pi_i(a_i|o_i) / mu_i(a_i|o_i),
clipped into rho_t = min(rho_bar, rho) and c_t = lambda * min(c_bar, rho);
targets and advantages follow V-trace (eqs. 1-4 of the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp

from offmarl.algos.actor_critic import ActorCritic, ActorCriticConfig
from offmarl.config import require
from offmarl.types import Rollout


def vtrace(
    log_rhos: jax.Array,
    discounts: jax.Array,
    rewards: jax.Array,
    values: jax.Array,
    bootstrap_value: jax.Array,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    pg_rho_bar: float = 1.0,
    lambda_: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """V-trace targets and policy-gradient advantages, time-major.

    Args:
      log_rhos: [T, B] log importance ratios log(pi/mu) of the taken (joint) actions.
      discounts: [T, B] gamma * (1 - done_t); zero cuts the trace at episode ends.
      rewards: [T, B] reward r_t after acting at t.
      values: [T, B] V(x_t).
      bootstrap_value: [B] V(x_T).
    Returns:
      (vs, pg_advantages), each [T, B] and without gradient, where
      vs_t = V(x_t) + sum_{u>=t} (prod_{k=t}^{u-1} gamma_k c_k) rho_u delta_u and
      pg_advantage_t = min(pg_rho_bar, rho_t) (r_t + gamma_t vs_{t+1} - V(x_t)).
    """
    rhos = jnp.exp(log_rhos)
    clipped_rhos = jnp.minimum(rho_bar, rhos)
    cs = lambda_ * jnp.minimum(c_bar, rhos)
    values_tp1 = jnp.concatenate([values[1:], bootstrap_value[None]], axis=0)
    deltas = clipped_rhos * (rewards + discounts * values_tp1 - values)

    def backward(acc: jax.Array, step: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
        delta, discount, c = step
        acc = delta + discount * c * acc
        return acc, acc

    _, corrections = jax.lax.scan(
        backward, jnp.zeros_like(bootstrap_value), (deltas, discounts, cs), reverse=True
    )
    vs = values + corrections
    vs_tp1 = jnp.concatenate([vs[1:], bootstrap_value[None]], axis=0)
    pg_advantages = jnp.minimum(pg_rho_bar, rhos) * (rewards + discounts * vs_tp1 - values)
    return jax.lax.stop_gradient(vs), jax.lax.stop_gradient(pg_advantages)


def multiplier_param(cost: float | jax.Array) -> jax.Array:
    """The trained parameter p of a Lagrange multiplier exp(10 p) that starts at `cost`."""
    return jnp.log(jnp.maximum(jnp.asarray(cost, jnp.float32), 1e-8)) / 10.0


def constraint_penalty(param: jax.Array, value: jax.Array, bound: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """Lagrangian of the constraint value <= bound with multiplier exp(10 param) (the released
    code's adaptive entropy mechanism): sg(cost) value + cost (bound - sg(value)). The networks
    see the value penalised at the current cost; descent on param raises the cost while the
    constraint is violated and lowers it otherwise. Returns (loss term, cost)."""
    cost = jnp.exp(10.0 * param)
    return jax.lax.stop_gradient(cost) * value + cost * (bound - jax.lax.stop_gradient(value)), cost


def k3_divergence(log_probs: jax.Array, anchor_log_probs: jax.Array) -> jax.Array:
    """Mean over [T, B] of sum_i (r_i - 1) - log r_i with r_i = pi_i / anchor_i on the taken
    actions ([T, B, N] log-probabilities): never negative, zero where the two agree, and
    unbiased for KL(anchor || pi) when the anchor drew the actions (the "k3" estimator).
    log r is clipped to [-20, 20] so a near-impossible action cannot overflow it."""
    log_ratio = jnp.clip(log_probs - anchor_log_probs, -20.0, 20.0)
    return jnp.mean(jnp.sum(jnp.exp(log_ratio) - 1.0 - log_ratio, axis=-1))


@dataclass(frozen=True)
class MATraceConfig(ActorCriticConfig):
    """MA-Trace hyper-parameters. Defaults follow the paper and its released code
    (a feed-forward 64-64 actor, no agent id, a critic over all observations)."""

    RUN_DEFAULTS: ClassVar[dict[str, Any]] = {"env_steps": 16_000_000, "lr": 1e-3, "num_epochs": 2}
    """MA-Trace's own runner settings (docs/tuning.md): lr 1e-3 annealed, two passes per
    batch (V-trace corrects the second pass's staleness), 16M env steps."""

    CONTINUOUS_DEFAULTS: ClassVar[dict[str, Any]] = {
        **ActorCriticConfig.CONTINUOUS_DEFAULTS, "behaviour_kl_cost": 1.0, "behaviour_kl_target": 0.0}
    """On box-action tasks (Gaussian policies) the paper's unpenalised update moves the
    policy so far per batch that it collapses: mabrax:hopper_3x1, seed 0, 2M env steps,
    ends at a greedy return of 5.6 (the hopper falls at once; behaviour KL 10-20 nats)
    without the penalty and 1,391 with a fixed cost of 1 (KL 0.001-0.05); docs/mabrax.md."""

    normalize_observations: bool = True
    """Standardise observations by their running moments (ActorCriticConfig). On for MA-Trace
    on SMAX too: two Ray workers on smax:3m end seeds 0-2 at 0.945 / 0.922 / 0.945 greedy with
    it and 0.867 / 0.926 / 0.863 without (docs/tuning.md, eleventh round)."""
    rho_bar: float = 1.0
    """Clip of the importance ratio in the V-trace temporal differences."""
    c_bar: float = 1.0
    """Clip of the trace-cutting ratio; Theorem 1 needs c_bar <= rho_bar."""
    pg_rho_bar: float = 1.0
    """Clip of the importance ratio in the policy-gradient advantage."""
    lambda_: float = 1.0
    """Trace decay multiplying every c_t (1 gives the paper's n-step target)."""
    importance_weights: bool = True
    """False sets every ratio to 1 (the paper's ablation)."""
    baseline_cost: float = 0.5
    """Weight of the value loss 0.5 * mean((vs - V)^2)."""
    entropy_mode: Literal["fixed", "adaptive"] = "adaptive"
    """Fixed entropy cost, or the released code's cost exp(10 p) with p tuned to a target entropy."""
    entropy_cost: float = 0.01
    """Entropy bonus weight (fixed mode) or its initial value (adaptive mode)."""
    target_entropy: float = 0.33
    """Adaptive mode's target for the entropy per agent (nats); the released code used 1e-5."""
    target_entropy_decay: float = 0.0
    """Fraction by which the target falls, linearly, over the run (0 keeps it constant)."""
    normalize_advantages: bool = False
    """Standardise policy-gradient advantages within each minibatch."""
    pg_ratio: Literal["joint", "per_agent"] = "joint"
    """Ratio clipped by pg_rho_bar in agent i's policy gradient: the joint product of all
    agents' ratios (the paper), or agent i's own ratio only (a lag-robust variant whose
    clip does not tighten with the number of agents; the V-trace targets keep the joint
    ratio either way; docs/matrace.md)."""
    behaviour_kl_cost: float = 0.1
    """Weight of a per-agent KL(mu_i || pi_i) penalty towards the behaviour policy,
    estimated on the taken actions as mean((rho_i - 1) - log rho_i); a soft trust region
    for stale data. 0 (with behaviour_kl_target 0) is the paper."""
    behaviour_kl_target: float = 0.02
    """If > 0, a KL-constrained trust region: behaviour_kl_cost becomes the starting value
    of a Lagrange multiplier, exp(10 q) with q trained alongside the networks (as the
    adaptive entropy cost is), that rises while the anchor's KL per agent is above this
    target (nats) and falls below it, towards 0 (no penalty) when the data are fresh
    (docs/matrace.md). 0 keeps the cost fixed. The default 0.02 holds the win rate of 32
    simulated workers within 0.02 of one worker's on smax:3m and 2s3z (docs/matrace.md)."""
    kl_anchor: Literal["behaviour", "update"] = "behaviour"
    """The policy behaviour_kl_cost pulls towards: the behaviour policy mu that acted (as
    stale as the lag), or the learner's own policy at the start of the current update, a
    per-update trust region whose anchor does not age with the lag (the same estimator on
    the taken actions, with pi_start in place of mu; docs/matrace.md)."""

    def validate(self) -> None:
        super().validate()
        require(self.pg_ratio in ("joint", "per_agent"),
                f"pg_ratio={self.pg_ratio!r} is invalid; valid choices: joint, per_agent")
        require(self.behaviour_kl_cost >= 0, f"behaviour_kl_cost={self.behaviour_kl_cost} must be >= 0")
        require(self.behaviour_kl_target >= 0, f"behaviour_kl_target={self.behaviour_kl_target} must be >= 0")
        require(self.behaviour_kl_target == 0 or self.behaviour_kl_cost > 0,
                f"behaviour_kl_target={self.behaviour_kl_target} needs behaviour_kl_cost > 0, the "
                "multiplier's starting value")
        require(self.kl_anchor in ("behaviour", "update"),
                f"kl_anchor={self.kl_anchor!r} is invalid; valid choices: behaviour, update")
        require(not (self.pg_ratio == "per_agent" and self.critic == "decentralised"),
                "pg_ratio=per_agent needs a team critic (critic=obs or state): with critic=decentralised "
                "every agent's V-trace already uses its own ratio")
        require(self.rho_bar > 0, f"rho_bar={self.rho_bar} is invalid: must be > 0")
        require(self.pg_rho_bar > 0, f"pg_rho_bar={self.pg_rho_bar} is invalid: must be > 0")
        require(
            0.0 <= self.c_bar <= self.rho_bar,
            f"c_bar={self.c_bar} is invalid: Theorem 1 needs 0 <= c_bar <= rho_bar={self.rho_bar}",
        )
        require(0.0 <= self.lambda_ <= 1.0, f"lambda_={self.lambda_} is invalid: must be in [0, 1]")
        require(self.baseline_cost >= 0, f"baseline_cost={self.baseline_cost} must be >= 0")
        require(self.entropy_cost >= 0, f"entropy_cost={self.entropy_cost} must be >= 0")
        require(
            0.0 <= self.target_entropy_decay <= 1.0,
            f"target_entropy_decay={self.target_entropy_decay} is invalid: must be in [0, 1]",
        )


class MATrace(ActorCritic):
    """Pure MA-Trace functions for one environment spec (see OnlineAlgorithm)."""

    config: MATraceConfig

    def init(self, rng: jax.Array) -> dict:
        params = {
            **self.init_networks(rng),
            # exp(10 p) is the entropy cost in adaptive mode; unused in fixed mode.
            "entropy_param": multiplier_param(self.config.entropy_cost),
        }
        if self.config.behaviour_kl_target > 0:  # only then, so other runs' checkpoints keep their layout
            params["kl_param"] = multiplier_param(self.config.behaviour_kl_cost)
        return params

    def prepare_batch(self, params: dict, rollout: Rollout) -> Rollout:
        """V-trace recomputes its targets in every pass. Only the per-update trust region
        (kl_anchor=update) fixes something per batch: the taken actions' log-probabilities
        under the parameters the update starts from, in `extras`."""
        if self.config.kl_anchor != "update":
            return rollout
        anchor = self.unroll_distribution(params, rollout).log_prob(rollout.actions)
        return rollout._replace(extras=jax.lax.stop_gradient(anchor))

    def loss(
        self, params: dict, rollout: Rollout, progress: jax.Array | float = 0.0
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        cfg = self.config
        dist = self.unroll_distribution(params, rollout)
        log_probs = dist.log_prob(rollout.actions)  # [T, B, N]
        entropy = jnp.sum(dist.entropy(), axis=-1)  # [T, B], summed over agents
        values = self.values(params, rollout.obs, rollout.state)  # [T+1, B] or [T+1, B, N]

        agent_log_rhos = jax.lax.stop_gradient(log_probs - rollout.behaviour_log_probs)
        if not cfg.importance_weights:
            agent_log_rhos = jnp.zeros_like(agent_log_rhos)
        rewards, discounts = self.team_signals(rollout, values)
        if self.decentralised_critic:
            log_rhos = agent_log_rhos  # per-agent ratios against per-agent values
        else:
            log_rhos = jnp.sum(agent_log_rhos, axis=-1)  # joint ratio = product over agents
        vs, pg_adv = vtrace(
            log_rhos,
            discounts,
            rewards,
            jax.lax.stop_gradient(values[:-1]),
            jax.lax.stop_gradient(values[-1]),
            rho_bar=cfg.rho_bar,
            c_bar=cfg.c_bar,
            pg_rho_bar=cfg.pg_rho_bar,
            lambda_=cfg.lambda_,
        )
        if not self.decentralised_critic and cfg.pg_ratio == "per_agent":
            # The same V-trace TD as vtrace's pg_adv, clipped by each agent's own ratio instead.
            vs_tp1 = jnp.concatenate([vs[1:], jax.lax.stop_gradient(values[-1])[None]], axis=0)
            team_td = rewards + discounts * vs_tp1 - jax.lax.stop_gradient(values[:-1])
            pg_adv = jnp.minimum(cfg.pg_rho_bar, jnp.exp(agent_log_rhos)) * team_td[..., None]  # [T, B, N]
        elif not self.decentralised_critic:
            pg_adv = pg_adv[..., None]  # every agent shares the team advantage
        if cfg.normalize_advantages:
            pg_adv = (pg_adv - pg_adv.mean()) / (pg_adv.std() + 1e-8)
        policy_loss = -jnp.mean(jnp.sum(log_probs * pg_adv, axis=-1))
        behaviour_kl = k3_divergence(log_probs, rollout.behaviour_log_probs)
        anchor_kl = behaviour_kl if cfg.kl_anchor == "behaviour" else k3_divergence(log_probs, rollout.extras)
        value_loss = cfg.baseline_cost * 0.5 * jnp.mean((vs - values[:-1]) ** 2)
        mean_entropy = jnp.mean(entropy)
        target = cfg.target_entropy * (1.0 - cfg.target_entropy_decay * progress)
        if cfg.entropy_mode == "adaptive":  # entropy >= N x target, written as -entropy <= -N x target
            entropy_loss, entropy_cost = constraint_penalty(
                params["entropy_param"], -mean_entropy, -self.spec.num_agents * target)
        else:
            entropy_cost = jnp.asarray(cfg.entropy_cost, jnp.float32)
            entropy_loss = -entropy_cost * mean_entropy
        total = policy_loss + value_loss + entropy_loss
        kl_cost = jnp.asarray(cfg.behaviour_kl_cost, jnp.float32)
        if cfg.behaviour_kl_target > 0:  # KL per agent <= target
            kl_loss, kl_cost = constraint_penalty(
                params["kl_param"], anchor_kl, self.spec.num_agents * cfg.behaviour_kl_target)
            total = total + kl_loss
        elif cfg.behaviour_kl_cost > 0:
            total = total + kl_cost * anchor_kl
        rhos = jnp.exp(jnp.minimum(log_rhos, 20.0))  # diagnostics only: capped so a density ratio cannot overflow
        anchor_metrics = {"anchor_kl": jax.lax.stop_gradient(anchor_kl)} if cfg.kl_anchor == "update" else {}
        return total, {
            **anchor_metrics,
            "loss": total,
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy": mean_entropy,
            "entropy_cost": entropy_cost,
            "target_entropy": jnp.asarray(target, jnp.float32),
            "rho_mean": jnp.mean(rhos),
            "rho_clipped_fraction": jnp.mean(rhos > cfg.rho_bar),
            # (sum rho)^2 / (n sum rho^2): 1 on-policy, near 1/n when one ratio dominates.
            "rho_ess": jnp.sum(rhos) ** 2 / jnp.maximum(rhos.size * jnp.sum(rhos**2), 1e-30),
            "entropy_per_agent": mean_entropy / self.spec.num_agents,
            "behaviour_kl": jax.lax.stop_gradient(behaviour_kl),
            "behaviour_kl_cost": kl_cost,
            "value_mean": jnp.mean(values),
        }
