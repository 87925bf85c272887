"""MAICQ: multi-agent implicit constraint Q-learning (Yang et al., NeurIPS 2021, "Believe
What You See"), the offline baseline OMIGA and InSPO compare against and OG-MARL ships.
Feed-forward, one-step version for transition batches (docs/maicq.md), for discrete and
box (continuous) actions.

The critic is evaluated on actions in the data only:
- Critic: Q_tot(s, a) = sum_i k_i(s) Q_i(o_i, a_i) + b(s) with k(s) >= 0 (a linear
  decomposition, as in the paper; OMIGA's mixer). Its target is
  r + gamma (1 - d) w Q_tot'(s', a'), where a' is the *dataset's* next joint action and
  Q_tot' the target networks, with the implicit constraint's importance weight
  w = exp(Q/beta)/Z(s'). Z(s') is estimated by the batch (n rows): w = n softmax_batch(
  (Q_tot'(s', a') - V_tot'(s')) / beta_Q), the state's value V_tot' = sum_i k_i V_i' + b
  taken out first so that the batch compares actions, not states (`target_weights`;
  the released code's softmax of Q_tot' itself diverges on returns in the hundreds).
  V_tot' is read under the current policy, or (`target_baseline='data'`) learned in-sample:
  a state-value network fitted to Q_tot'(s', a') at the data's next actions.
- Actor: -mean(k_i(s) n softmax_batch(A_i / beta_A) log pi_i(a_i|o_i)) with
  A_i = Q_i(o_i, a_i) - V_i(o_i), V_i = E_{a ~ pi_i}[Q_i(o_i, a)], weights and k held constant.
- Targets are hard copies every `target_update_period` updates; one Adam for all.

Discrete and box actions differ in three readers, each chosen once in `MAICQ.__init__`:
Q_i at an action (offline_common.local_q), the policy (SharedActor.head: masked
categorical or tanh-Gaussian) and the baseline V_i (`expected_q`: the exact sum over
the actions; `sampled_q`: the mean of Q_i over K samples of the current policy).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp

from offmarl.algos.offline_common import (
    ActionInputQ,
    PerActionQ,
    SharedActor,
    gradient_step,
    local_q,
    make_optimizer,
    validate_common,
    weight_diagnostics,
)
from offmarl.config import require
from offmarl.envs.base import EnvSpec
from offmarl.networks import MLPValue, MonotonicMixer, with_agent_id
from offmarl.networks.distributions import ActionDistribution, MaskedCategorical
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
    box_policy: str = "tanh"
    """The policy's distribution on box actions: "tanh" (OMIGA's tanh-Gaussian) or "censored"
    (a Gaussian clipped into the box, whose actions on a face score the probability beyond
    it; docs/omiga.md, "Actions on the box's faces"). Discrete actions ignore it."""
    mixer_hidden_size: int = 64
    """Hidden width of the state-conditioned mixer k(s), b(s)."""
    num_action_samples: int = 10
    """Box actions: policy samples K of the baseline V_i = mean_k Q_i(o_i, a^k) (actor and,
    with target_weights 'advantage', critic target; discrete actions sum over all actions
    exactly and ignore it)."""
    target_weights: Literal["advantage", "q"] = "advantage"
    """What the critic target's batch softmax exponentiates: the next joint action's
    advantage Q_tot'(s', a') - V_tot'(s'), an estimate of the paper's per-state normaliser
    Z(s'); or Q_tot'(s', a') itself, as the released code does, which also weighs each
    next state by its value: a state beta_Q * ln(1/gamma) above the batch's others then has
    an effective discount above 1, and the critic diverges where values span more than
    about 10 (docs/maicq.md)."""

    target_baseline: Literal["policy", "data"] = "policy"
    """V_tot'(s') with target_weights 'advantage': "policy" reads sum_i k_i' E_{pi_i}[Q_i'] + b'
    under the current policy; "data" is a state-value network V(s') fitted in-sample to
    Q_tot'(s', a') at the data's next joint actions (squared error, the data's mean), so the
    weights compare the data's actions at a state with their own mean and read Q at no action
    outside the data (docs/maicq.md, "The critic that runs away on medium data")."""

    def validate(self) -> None:
        validate_common(self)
        require(self.advantage_beta > 0, f"advantage_beta={self.advantage_beta} is invalid: must be > 0")
        require(self.target_q_beta > 0, f"target_q_beta={self.target_q_beta} is invalid: must be > 0")
        require(self.target_update_period > 0,
                f"target_update_period={self.target_update_period} is invalid: must be a positive integer")
        require(self.mixer_hidden_size > 0, f"mixer_hidden_size={self.mixer_hidden_size} must be > 0")
        require(self.target_weights in ("advantage", "q"),
                f"target_weights={self.target_weights!r} is invalid: choose 'advantage' or 'q'")
        require(self.target_baseline in ("policy", "data"),
                f"target_baseline={self.target_baseline!r} is invalid: choose 'policy' or 'data'")
        require(self.target_baseline == "policy" or self.target_weights == "advantage",
                f"target_baseline={self.target_baseline!r} needs target_weights='advantage' "
                f"(with {self.target_weights!r} the target has no baseline)")
        require(self.num_action_samples > 0,
                f"num_action_samples={self.num_action_samples} is invalid: must be a positive integer")


class MAICQParams(NamedTuple):
    policy: Any
    q: Any
    mixer: Any
    state_value: Any = None
    """V(s') of target_baseline 'data'; None (no leaves) otherwise."""


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
    valid: jax.Array, gamma: float, beta: float, next_target_v_tot: jax.Array | float = 0.0,
) -> jax.Array:
    """0.5 mean over valid rows of (Q_tot - target)^2, target without gradient. The
    in-sample weights n softmax_batch((Q_tot' - V_tot') / beta) are normalised over the rows
    that bootstrap (valid, not done): a done row's next state belongs to another episode.
    V_tot' = 0 gives the released code's softmax of Q_tot'."""
    weights = batch_softmax_weights(next_target_q_tot - next_target_v_tot, valid * (1.0 - done), beta)
    target = jax.lax.stop_gradient(reward + gamma * (1.0 - done) * weights * next_target_q_tot)
    return 0.5 * jnp.sum(valid * (q_tot - target) ** 2) / jnp.maximum(jnp.sum(valid), 1.0)


def in_sample_value_loss(value: jax.Array, next_q_tot: jax.Array, bootstraps: jax.Array) -> jax.Array:
    """0.5 mean over the rows that bootstrap of (V(s') - Q_tot'(s', a'))^2, the target without
    gradient: V(s') -> the data's mean of Q_tot' at s'."""
    error = value - jax.lax.stop_gradient(next_q_tot)
    return 0.5 * jnp.sum(bootstraps * error**2) / jnp.maximum(jnp.sum(bootstraps), 1.0)


def icq_actor_loss(
    log_pi_taken: jax.Array, advantage: jax.Array, k: jax.Array, beta: float,
) -> tuple[jax.Array, jax.Array]:
    """(-mean(k n softmax_batch(A / beta) log pi(a|o)), the weights), weights and k constant.

    log_pi_taken, advantage and k [B, N]; the softmax runs over the batch, per agent.
    """
    weights = jax.lax.stop_gradient(batch_softmax_weights(advantage, jnp.ones(advantage.shape[0]), beta))
    return -jnp.mean(jax.lax.stop_gradient(k) * weights * log_pi_taken), weights


Baseline = Callable[[Any, Any, jax.Array, Any, jax.Array], jax.Array]
"""(local Q network, its params, local inputs [B, N, I], the policy's distribution, rng) -> V_i [B, N]."""


def expected_q(q_net: PerActionQ, q_params: Any, inputs: jax.Array, policy: MaskedCategorical,
               rng: jax.Array) -> jax.Array:
    """V_i = sum_a pi_i(a|o_i) Q_i(o_i, a), exact (pi is zero on unavailable actions); no rng."""
    return jnp.sum(jax.nn.softmax(policy.logits) * q_net.network.apply(q_params, inputs), axis=-1)


def sampled_q(q_net: ActionInputQ, q_params: Any, inputs: jax.Array, policy: ActionDistribution, rng: jax.Array,
              num_samples: int) -> jax.Array:
    """V_i = (1/K) sum_k Q_i(o_i, a^k), a^k ~ pi_i(.|o_i) drawn with `jax.random.split(rng, K)`
    (sample k from key k), no gradient through the samples."""
    actions = jax.lax.stop_gradient(jax.vmap(policy.sample)(jax.random.split(rng, num_samples)))  # [K, B, N, D]
    return jnp.mean(q_net(q_params, jnp.broadcast_to(inputs, actions.shape[:-1] + inputs.shape[-1:]), actions),
                    axis=0)


class MAICQ(SharedActor):
    team_value_metric = "q_tot"

    def __init__(self, config: MAICQConfig, spec: EnvSpec) -> None:
        super().__init__(config.hidden_sizes, spec, config.box_policy)
        self.config = config
        self.q_net = local_q(spec.action_space, config.hidden_sizes)  # Q_i read at the given actions
        self.baseline: Baseline = (functools.partial(sampled_q, num_samples=config.num_action_samples)
                                   if spec.continuous else expected_q)
        self.mixer = MonotonicMixer(spec.num_agents, config.mixer_hidden_size)
        self.state_value = MLPValue(config.hidden_sizes) if config.target_baseline == "data" else None
        self.optimizer = make_optimizer(config.lr, config.max_grad_norm)

    def init(self, rng: jax.Array) -> MAICQState:
        k_pi, k_q, k_mix = jax.random.split(rng, 3)
        local_in = jnp.zeros((self.spec.num_agents, self.spec.obs_dim + self.spec.num_agents))
        state_in = jnp.zeros((self.spec.state_dim,))
        params = MAICQParams(
            self.init_actor(k_pi), self.q_net.init(k_q, local_in), self.mixer.init(k_mix, state_in),
            None if self.state_value is None else self.state_value.init(jax.random.fold_in(rng, 3), state_in),
        )
        return MAICQState(params, params.q, params.mixer, self.optimizer.init(params), jnp.zeros((), jnp.int32))

    def _q_tot(self, q_params: Any, mixer_params: Any, obs: jax.Array, state: jax.Array,
               actions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(Q_tot at `actions`, the local Q_i at them [B, N], mixer weights k [B, N])."""
        q_taken = self.q_net(q_params, with_agent_id(obs), actions)
        k, b = self.mixer.apply(mixer_params, state)
        return jnp.sum(k * q_taken, axis=-1) + b, q_taken, k

    def _next_v_tot(self, params: MAICQParams, state: MAICQState, batch: TransitionBatch,
                    rng: jax.Array) -> jax.Array | float:
        """V_tot'(s') = sum_i k_i'(s') E_{pi_i}[Q_i'(o_i', .)] + b'(s') of the critic target
        (target networks, current policy), the in-sample V(s') with target_baseline 'data' (with
        its gradient: its own loss trains it), or 0 with target_weights 'q'."""
        if self.config.target_weights == "q":
            return 0.0
        if self.state_value is not None:
            return self.state_value.apply(params.state_value, batch.next_state)
        next_policy = self.head.distribution(self.logits(params.policy, batch.next_obs, batch.next_avail))
        next_v = self.baseline(self.q_net, state.target_q, with_agent_id(batch.next_obs), next_policy, rng)
        k, b = self.mixer.apply(state.target_mixer, batch.next_state)
        return jax.lax.stop_gradient(jnp.sum(k * next_v, axis=-1) + b)

    def _target_terms(self, params: MAICQParams, state: MAICQState, batch: TransitionBatch,
                      rng: jax.Array) -> tuple[jax.Array, jax.Array | float]:
        """(Q_tot'(s', a') at the data's next joint action, without gradient, and V_tot'(s'))."""
        next_q_tot, _, _ = self._q_tot(state.target_q, state.target_mixer, batch.next_obs, batch.next_state,
                                       batch.next_actions)
        return jax.lax.stop_gradient(next_q_tot), self._next_v_tot(params, state, batch, rng)

    def critic_target_terms(self, params: MAICQParams, state: MAICQState, batch: TransitionBatch,
                            rng: jax.Array) -> tuple[jax.Array, jax.Array | float]:
        """(Q_tot'(s', a') at the data's next joint action, V_tot'(s')) of the critic target,
        without gradient: what its batch weights exponentiate (their difference, over beta_Q)."""
        return jax.lax.stop_gradient(self._target_terms(params, state, batch, rng))

    def _loss(self, params: MAICQParams, state: MAICQState, batch: TransitionBatch,
              rng: jax.Array) -> tuple[jax.Array, dict]:
        rng_actor, rng_target = jax.random.split(rng)
        q_tot, q_taken, k = self._q_tot(params.q, params.mixer, batch.obs, batch.state, batch.actions)
        # The critic's target holds no gradient; V_tot' keeps the in-sample V's for its own loss.
        next_q_tot, next_v_tot = self._target_terms(params, state, batch, rng_target)
        critic = icq_critic_loss(q_tot, batch.reward, batch.done, next_q_tot, batch.valid, self.config.gamma,
                                 self.config.target_q_beta, next_v_tot)
        outputs = self.logits(params.policy, batch.obs, batch.avail)
        policy = self.head.distribution(jax.lax.stop_gradient(outputs))
        baseline = self.baseline(self.q_net, params.q, with_agent_id(batch.obs), policy, rng_actor)
        actor, weights = icq_actor_loss(self.head.log_prob(outputs, batch.actions),
                                        jax.lax.stop_gradient(q_taken - baseline), k, self.config.advantage_beta)
        metrics = {"q_loss": critic, "policy_loss": actor, "q_tot": jnp.mean(q_tot),
                   **weight_diagnostics("weight", weights)}
        if self.state_value is None:
            return critic + actor, metrics
        value = in_sample_value_loss(next_v_tot, next_q_tot, batch.valid * (1.0 - batch.done))
        return critic + actor + value, {**metrics, "value_loss": value}

    def update(self, state: MAICQState, batch: TransitionBatch, rng: jax.Array) -> tuple[MAICQState, dict]:
        params, opt_state, metrics = gradient_step(self.optimizer, state.params, state.opt_state, self._loss,
                                                   state, batch, rng)
        step = state.step + 1
        copy = step % self.config.target_update_period == 0
        target_q, target_mixer = jax.tree.map(lambda new, old: jnp.where(copy, new, old),
                                              (params.q, params.mixer), (state.target_q, state.target_mixer))
        return MAICQState(params, target_q, target_mixer, opt_state, step), metrics

    def acting_params(self, state: MAICQState) -> Any:
        return state.params.policy
