"""OMIGA: offline MARL with implicit global-to-local value regularisation
(Wang et al., NeurIPS 2023), following docs/references.md ("OMIGA: released code") and
docs/omiga.md, for discrete and continuous (box) actions.

Local networks shared across agents (one-hot agent id): Q_i, V_i(o_i) and pi_i(a_i|o_i).
Discrete actions: Q_i(o_i, .) has one output per action and pi_i is a masked categorical;
box actions (the paper's MaMuJoCo form): Q_i(o_i, a_i) takes the action as an input and
pi_i is a tanh-Gaussian. Only reading Q at the dataset action and the policy's likelihood
differ (offline_common.local_q, SharedActor.head); the losses are the same code. A mixer
maps the global state to weights w(s) >= 0 and a bias b(s): Q_tot = sum_i w_i(s) Q_i + b(s).
Each iteration updates, in this order, the policy, then Q and the mixer, then V, then the
soft target copies of Q, V and the mixer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from offmarl.algos.offline_common import (
    EXP_CLIP,
    SharedActor,
    exponential_value_loss,
    gradient_step,
    local_q,
    make_optimizer,
    soft_update,
    validate_common,
    weight_diagnostics,
)
from offmarl.config import FLOAT32_MAX, require
from offmarl.envs.base import EnvSpec
from offmarl.networks import MLPValue, MonotonicMixer, with_agent_id
from offmarl.types import TransitionBatch


@dataclass(frozen=True)
class OMIGAConfig:
    """OMIGA hyper-parameters; defaults are the released code's, except on SMAX."""

    # A SMAX team return is at most about 2, a tenth of SMAC's, so at the paper's alpha = 10
    # the weights are 1 within 1% and OMIGA is behaviour cloning; at 0.1 they rank the data,
    # and the TD target bounded by that largest return keeps Q_tot from diverging
    # (docs/omiga.md; 5 seeds on 3m and 2s3z: docs/results_offline.md, "Offline: SMAX datasets").
    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {"smax": {"alpha": 0.1, "max_td_target": 2.0}}

    alpha: float = 10.0
    """Temperature of the behaviour regularisation (the exponent's divisor)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Soft target-update rate of Q, V and the mixer."""
    lr: float = 5e-4
    """Adam learning rate of every network."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip; 0 disables it."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden widths of the local Q, V and policy networks."""
    box_policy: str = "tanh"
    """The policy's distribution on box actions: "tanh" (OMIGA's tanh-Gaussian) or "censored"
    (a Gaussian clipped into the box, whose actions on a face score the probability beyond
    it; docs/omiga.md, "Actions on the box's faces"). Discrete actions ignore it."""
    mixer_hidden_size: int = 64
    """Hidden width of the state-conditioned mixer."""
    max_td_target: float = FLOAT32_MAX
    """Upper clip of Q_tot's TD target r + gamma (1 - d) V_tot(s'): a value no return can
    exceed (a SMAX team return is at most about 2). Not in the paper; at a low alpha the
    soft maximum in V_tot overestimates and Q_tot can diverge (docs/omiga.md). The default,
    float32's largest value, leaves the target unclipped as the paper does."""

    def validate(self) -> None:
        validate_common(self)
        require(self.alpha > 0, f"alpha={self.alpha} is invalid: must be > 0")
        require(0 < self.tau <= 1, f"tau={self.tau} is invalid: must be in (0, 1]")
        require(self.mixer_hidden_size > 0, f"mixer_hidden_size={self.mixer_hidden_size} must be > 0")


class Critics(NamedTuple):
    q: Any
    v: Any
    mixer: Any


class OMIGAState(NamedTuple):
    policy: Any
    critics: Critics
    target: Critics
    policy_opt: Any
    q_opt: Any  # Q and mixer together
    v_opt: Any


def local_advantage_exponent(w: jax.Array, q: jax.Array, v: jax.Array, alpha: float) -> jax.Array:
    """z_i = (w_i Q_i - w_i V_i) / alpha, clipped to [-10, 10]."""
    return jnp.clip((w * q - w * v) / alpha, -EXP_CLIP, EXP_CLIP)


def omiga_q_loss(
    q_taken: jax.Array, w: jax.Array, b: jax.Array, reward: jax.Array, done: jax.Array,
    next_v_target: jax.Array, next_w_target: jax.Array, next_b_target: jax.Array,
    gamma: float, valid: jax.Array, max_target: float = FLOAT32_MAX,
) -> jax.Array:
    """Mean squared TD error of Q_tot(s, a) against min(r + gamma (1 - d) V_tot^targ(s'), max_target)."""
    q_tot = jnp.sum(w * q_taken, axis=-1) + b
    next_v_tot = jnp.sum(next_w_target * next_v_target, axis=-1) + next_b_target
    target = jax.lax.stop_gradient(jnp.minimum(reward + gamma * (1.0 - done) * next_v_tot, max_target))
    return jnp.sum(valid * (q_tot - target) ** 2) / jnp.maximum(jnp.sum(valid), 1.0)


def omiga_v_loss(q_target: jax.Array, v: jax.Array, w_target: jax.Array, alpha: float) -> jax.Array:
    """In-sample value loss E[exp(z_i)] + E[w_i V_i / alpha] with target Q and mixer weights."""
    z = local_advantage_exponent(w_target, q_target, v, alpha)
    return exponential_value_loss(z, w_target * v / alpha)


def weighted_bc_loss(log_probs: jax.Array, z: jax.Array) -> jax.Array:
    """-E[exp(z) log pi(a|o)] with exp(z) held constant."""
    return -jnp.mean(jax.lax.stop_gradient(jnp.exp(z)) * log_probs)


class OMIGA(SharedActor):
    team_value_metric = "q_tot"

    def __init__(self, config: OMIGAConfig, spec: EnvSpec) -> None:
        super().__init__(config.hidden_sizes, spec, config.box_policy)
        self.config = config
        self.q_net = local_q(spec.action_space, config.hidden_sizes)  # Q_i read at the given actions
        self.v_net = MLPValue(config.hidden_sizes)
        self.mixer = MonotonicMixer(spec.num_agents, config.mixer_hidden_size)
        self.optimizer = make_optimizer(config.lr, config.max_grad_norm)

    def init(self, rng: jax.Array) -> OMIGAState:
        k_pi, k_q, k_v, k_mix = jax.random.split(rng, 4)
        local_in = jnp.zeros((self.spec.num_agents, self.spec.obs_dim + self.spec.num_agents))
        critics = Critics(
            self.q_net.init(k_q, local_in),
            self.v_net.init(k_v, local_in),
            self.mixer.init(k_mix, jnp.zeros((self.spec.state_dim,))),
        )
        policy = self.init_actor(k_pi)
        return OMIGAState(
            policy, critics, critics, self.optimizer.init(policy),
            self.optimizer.init((critics.q, critics.mixer)), self.optimizer.init(critics.v),
        )

    def _exponent(self, v_params: Any, target: Critics, batch: TransitionBatch) -> jax.Array:
        inputs = with_agent_id(batch.obs)
        q_target = self.q_net(target.q, inputs, batch.actions)
        w_target, _ = self.mixer.apply(target.mixer, batch.state)
        return local_advantage_exponent(w_target, q_target, self.v_net.apply(v_params, inputs), self.config.alpha)

    def advantage_weights(self, state: OMIGAState, batch: TransitionBatch) -> jax.Array:
        """exp(z_i) [B, N]: each agent's weight on its dataset action in the policy update."""
        return jnp.exp(self._exponent(state.critics.v, state.target, batch))

    def _policy_loss(self, policy: Any, batch: TransitionBatch, z: jax.Array) -> tuple[jax.Array, dict]:
        log_probs = self.log_prob(policy, batch.obs, batch.avail, batch.actions)
        loss = weighted_bc_loss(log_probs, z)
        return loss, {"policy_loss": loss, "bc_log_prob": jnp.mean(log_probs)}

    def _q_loss(self, q_and_mixer: tuple, target: Critics, batch: TransitionBatch) -> tuple[jax.Array, dict]:
        q_params, mixer_params = q_and_mixer
        q_taken = self.q_net(q_params, with_agent_id(batch.obs), batch.actions)
        w, b = self.mixer.apply(mixer_params, batch.state)
        next_v = self.v_net.apply(target.v, with_agent_id(batch.next_obs))
        next_w, next_b = self.mixer.apply(target.mixer, batch.next_state)
        loss = omiga_q_loss(q_taken, w, b, batch.reward, batch.done, next_v, next_w, next_b,
                            self.config.gamma, batch.valid, self.config.max_td_target)
        return loss, {"q_loss": loss, "q_tot": jnp.mean(jnp.sum(w * q_taken, -1) + b)}

    def _v_loss(self, v_params: Any, target: Critics, batch: TransitionBatch) -> tuple[jax.Array, dict]:
        inputs = with_agent_id(batch.obs)
        q_target = self.q_net(target.q, inputs, batch.actions)
        w_target, _ = self.mixer.apply(target.mixer, batch.state)
        v = self.v_net.apply(v_params, inputs)
        loss = omiga_v_loss(q_target, v, w_target, self.config.alpha)
        return loss, {"v_loss": loss, "v_mean": jnp.mean(v)}

    def update(self, state: OMIGAState, batch: TransitionBatch, rng: jax.Array) -> tuple[OMIGAState, dict]:
        z = self._exponent(state.critics.v, state.target, batch)
        policy, policy_opt, m_pi = gradient_step(
            self.optimizer, state.policy, state.policy_opt, self._policy_loss, batch, z)
        (q, mixer), q_opt, m_q = gradient_step(
            self.optimizer, (state.critics.q, state.critics.mixer), state.q_opt, self._q_loss, state.target, batch)
        v, v_opt, m_v = gradient_step(self.optimizer, state.critics.v, state.v_opt, self._v_loss, state.target, batch)
        critics = Critics(q, v, mixer)
        target = soft_update(state.target, critics, self.config.tau)
        metrics = {**m_pi, **m_q, **m_v, **weight_diagnostics("weight", jnp.exp(z))}
        return OMIGAState(policy, critics, target, policy_opt, q_opt, v_opt), metrics

    def acting_params(self, state: OMIGAState) -> Any:
        return state.policy
