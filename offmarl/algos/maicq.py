"""MAICQ: multi-agent implicit constraint Q-learning (Yang et al., NeurIPS 2021, "Believe
What You See"), the offline baseline OMIGA and InSPO compare against and OG-MARL ships.
Feed-forward, one-step version for transition batches (docs/maicq.md).

Everything is evaluated on actions in the data only:
- Critic: Q_tot(s, a) = sum_i k_i(s) Q_i(o_i, a_i) + b(s) with k(s) >= 0 (a linear
  decomposition, as in the paper; OMIGA's mixer). Its target is
  r + gamma (1 - d) n softmax_batch(Q_tot'(s', a') / beta_Q) Q_tot'(s', a'), where a'
  is the *dataset's* next joint action and Q_tot' the target networks: the implicit
  constraint's importance weight exp(Q/beta)/Z, Z estimated by the batch (n rows).
- Actor: -mean(k_i(s) n softmax_batch(A_i / beta_A) log pi_i(a_i|o_i)) with
  A_i = Q_i(o_i, a_i) - sum_a pi_i(a|o_i) Q_i(o_i, a), weights and k held constant.
- Targets are hard copies every `target_update_period` updates; one Adam for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from offmarl.algos.offline_common import (
    SharedActor,
    gradient_step,
    log_prob_taken,
    make_optimizer,
    taken,
    validate_common,
    weight_diagnostics,
)
from offmarl.config import require
from offmarl.envs.base import EnvSpec
from offmarl.networks import MLPActionValues, MonotonicMixer, with_agent_id
from offmarl.types import TransitionBatch


@dataclass(frozen=True)
class MAICQConfig:
    """MAICQ hyper-parameters; temperatures, learning rate and target period are the
    released code's (as OG-MARL carries them)."""

    advantage_beta: float = 0.1
    """Temperature of the actor's advantage weights softmax_batch(A / beta)."""
    target_q_beta: float = 1000.0
    """Temperature of the critic target's in-sample weights softmax_batch(Q_tot' / beta)."""
    gamma: float = 0.99
    """Discount factor."""
    target_update_period: int = 200
    """Updates between hard copies of Q and the mixer into their targets."""
    lr: float = 3e-4
    """Adam learning rate (one optimiser for actor, Q and mixer)."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip (PyMARL's default, which MAICQ's code builds on); 0 disables it."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden widths of the shared local Q and policy networks (the other learners' size)."""
    mixer_hidden_size: int = 64
    """Hidden width of the state-conditioned mixer k(s), b(s)."""

    def validate(self) -> None:
        validate_common(self)
        require(self.advantage_beta > 0, f"advantage_beta={self.advantage_beta} is invalid: must be > 0")
        require(self.target_q_beta > 0, f"target_q_beta={self.target_q_beta} is invalid: must be > 0")
        require(self.target_update_period > 0,
                f"target_update_period={self.target_update_period} is invalid: must be a positive integer")
        require(self.mixer_hidden_size > 0, f"mixer_hidden_size={self.mixer_hidden_size} must be > 0")


class MAICQParams(NamedTuple):
    policy: Any
    q: Any
    mixer: Any


class MAICQState(NamedTuple):
    params: MAICQParams
    target_q: Any
    target_mixer: Any
    opt_state: Any
    step: jax.Array


def batch_softmax_weights(x: jax.Array, valid: jax.Array, beta: float) -> jax.Array:
    """n softmax(x / beta) over the batch (axis 0) among valid rows, zero elsewhere.

    The self-normalised estimate of exp(x / beta) / E[exp(x / beta)]: weights average 1
    over the n valid rows. x [B, ...], valid [B].
    """
    mask = valid.reshape(valid.shape + (1,) * (x.ndim - 1)) > 0
    logits = jnp.where(mask, x / beta, -jnp.inf)
    count = jnp.maximum(jnp.sum(valid > 0), 1)
    return jnp.where(mask, count * jax.nn.softmax(logits, axis=0), 0.0)


def icq_critic_loss(
    q_tot: jax.Array, reward: jax.Array, done: jax.Array, next_target_q_tot: jax.Array,
    valid: jax.Array, gamma: float, beta: float,
) -> jax.Array:
    """0.5 mean over valid rows of (Q_tot - target)^2, target without gradient. The
    in-sample weights are normalised over the rows that bootstrap (valid, not done): a
    done row's next state belongs to another episode."""
    weights = batch_softmax_weights(next_target_q_tot, valid * (1.0 - done), beta)
    target = jax.lax.stop_gradient(reward + gamma * (1.0 - done) * weights * next_target_q_tot)
    return 0.5 * jnp.sum(valid * (q_tot - target) ** 2) / jnp.maximum(jnp.sum(valid), 1.0)


def icq_policy_loss(
    log_pi_taken: jax.Array, q_values: jax.Array, probs: jax.Array, actions: jax.Array,
    k: jax.Array, beta: float,
) -> tuple[jax.Array, jax.Array]:
    """(-mean(k n softmax_batch(A / beta) log pi(a|o)), the weights), weights and k constant.

    log_pi_taken [B, N], q_values and probs [B, N, A] (probs zero on unavailable actions),
    actions and k [B, N].
    """
    advantage = taken(q_values, actions) - jnp.sum(probs * q_values, axis=-1)
    weights = jax.lax.stop_gradient(batch_softmax_weights(advantage, jnp.ones(advantage.shape[0]), beta))
    return -jnp.mean(jax.lax.stop_gradient(k) * weights * log_pi_taken), weights


class MAICQ(SharedActor):
    def __init__(self, config: MAICQConfig, spec: EnvSpec) -> None:
        super().__init__(config.hidden_sizes, spec)
        self.config = config
        self.q_net = MLPActionValues(config.hidden_sizes, spec.num_actions)
        self.mixer = MonotonicMixer(spec.num_agents, config.mixer_hidden_size)
        self.optimizer = make_optimizer(config.lr, config.max_grad_norm)

    def init(self, rng: jax.Array) -> MAICQState:
        k_pi, k_q, k_mix = jax.random.split(rng, 3)
        local_in = jnp.zeros((self.spec.num_agents, self.spec.obs_dim + self.spec.num_agents))
        params = MAICQParams(
            self.init_actor(k_pi), self.q_net.init(k_q, local_in),
            self.mixer.init(k_mix, jnp.zeros((self.spec.state_dim,))),
        )
        return MAICQState(params, params.q, params.mixer, self.optimizer.init(params), jnp.zeros((), jnp.int32))

    def _q_tot(self, q_params: Any, mixer_params: Any, obs: jax.Array, state: jax.Array,
               actions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(Q_tot at `actions`, all local Q values [B, N, A], mixer weights k [B, N])."""
        q_values = self.q_net.apply(q_params, with_agent_id(obs))
        k, b = self.mixer.apply(mixer_params, state)
        return jnp.sum(k * taken(q_values, actions), axis=-1) + b, q_values, k

    def _loss(self, params: MAICQParams, state: MAICQState, batch: TransitionBatch) -> tuple[jax.Array, dict]:
        q_tot, q_values, k = self._q_tot(params.q, params.mixer, batch.obs, batch.state, batch.actions)
        next_q_tot, _, _ = self._q_tot(state.target_q, state.target_mixer, batch.next_obs, batch.next_state,
                                       batch.next_actions)
        critic = icq_critic_loss(q_tot, batch.reward, batch.done, jax.lax.stop_gradient(next_q_tot),
                                 batch.valid, self.config.gamma, self.config.target_q_beta)
        logits = self.logits(params.policy, batch.obs, batch.avail)
        probs = jax.lax.stop_gradient(jax.nn.softmax(logits))  # masked logits: zero off the legal actions
        actor, weights = icq_policy_loss(log_prob_taken(logits, batch.actions),
                                         jax.lax.stop_gradient(q_values), probs, batch.actions, k,
                                         self.config.advantage_beta)
        return critic + actor, {"q_loss": critic, "policy_loss": actor, "q_tot": jnp.mean(q_tot),
                                **weight_diagnostics("weight", weights)}

    def update(self, state: MAICQState, batch: TransitionBatch, rng: jax.Array) -> tuple[MAICQState, dict]:
        params, opt_state, metrics = gradient_step(self.optimizer, state.params, state.opt_state, self._loss,
                                                   state, batch)
        step = state.step + 1
        copy = step % self.config.target_update_period == 0
        target_q, target_mixer = jax.tree.map(lambda new, old: jnp.where(copy, new, old),
                                              (params.q, params.mixer), (state.target_q, state.target_mixer))
        return MAICQState(params, target_q, target_mixer, opt_state, step), metrics

    def acting_params(self, state: MAICQState) -> Any:
        return state.params.policy
