"""InSPO: in-sample sequential policy optimisation (Liu et al., AAAI 2025).

No code was released; this follows the derivation in docs/inspo.md. With temperatures
alpha (reverse KL to the behaviour policy mu) and beta (entropy), tau = alpha + beta,
each agent's improved policy is pi_i ∝ mu_i^(alpha/tau) exp(Q_i / tau), learned in-sample
as weighted behaviour cloning on dataset actions with weight
mu_i(a_i)^(-beta/tau) exp((Q_i(o_i, a_i) - V_i(o_i)) / tau).

Every iteration: (1) fit mu by behaviour cloning; (2) draw a random order of the agents
and update them one after another, agent i_m against the already-updated policies of
i_1..i_{m-1}: its local value Q_i is regressed onto w_{<m} Q(s, a), with the importance
weight w_{<m} = prod_{j<m} pi_j(a_j|o_j) / mu_j(a_j|o_j) of the updated teammates;
(3) fit the joint Q(s, a) and V(s) and the local V_i in-sample (exponential loss);
(4) move the target copies of the joint Q and V.

Discrete and box (continuous) actions share every loss; the action space only chooses, once
in __init__, the policies' head (masked categorical or tanh-Gaussian, offline_common.actor_head,
whose log_ratio gives pi_j/mu_j), how an action enters the joint Q (one-hot or the raw
vector) and how the local critics read it (one output per action or an action input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from offmarl.algos.offline_common import (
    EXP_CLIP,
    ActionInputQ,
    SharedActor,
    StatelessPolicy,
    actor_head,
    exponential_value_loss,
    gradient_step,
    make_optimizer,
    soft_update,
    taken,
    validate_common,
    weight_diagnostics,
)
from offmarl.config import require
from offmarl.envs.base import ActionSpace, BoxActions, EnvSpec
from offmarl.networks import MLPActionValues, MLPPolicy, MLPValue, with_agent_id
from offmarl.networks.distributions import ActionDistribution
from offmarl.types import TransitionBatch


@dataclass(frozen=True)
class InSPOConfig:
    """InSPO hyper-parameters (see docs/inspo.md for the derivation)."""

    # Box-action tasks (multi-agent MuJoCo) pay rewards of order 1 per step for up to 1,000
    # steps, so values in the hundreds: at alpha 0.1 the joint V's soft maximum over noisy
    # in-sample Q overestimates and the critic diverges, and at 1 the policy weights
    # collapse onto a few samples. 10 is OMIGA's MaMuJoCo temperature (docs/inspo.md).
    CONTINUOUS_DEFAULTS: ClassVar[dict[str, Any]] = {"alpha": 10.0}
    # SMAX: at 0.1 the policy weights collapse onto a few samples (ESS 0.01-0.07) and the
    # policy wins nothing on 3m, 2s3z and 5m_vs_6m; at 1 it stands level with BC or above
    # (docs/inspo.md, "SMAX: the temperature").
    FAMILY_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {"smax": {"alpha": 1.0}}

    alpha: float = 0.1
    """Temperature of the reverse-KL regulariser toward the behaviour policy mu. On the
    matrix games (exact values) keep alpha + beta small next to the reward scale; with
    learned values it must also stay above the noise of Q_i, hence 1 on SMAX and 10 on box
    actions (docs/inspo.md)."""
    beta: float = 0.0
    """Temperature of the entropy bonus."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Soft target-update rate of the joint Q and V."""
    lr: float = 5e-4
    """Adam learning rate of every network."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip; 0 disables it."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden widths of every network."""
    box_policy: str = "tanh"
    """The policy's distribution on box actions: "tanh" (OMIGA's tanh-Gaussian) or "censored"
    (a Gaussian clipped into the box, whose actions on a face score the probability beyond
    it; docs/omiga.md, "Actions on the box's faces"). Discrete actions ignore it."""
    max_importance_weight: float = 10.0
    """Upper clip of the teammates' importance weight w_{<m}."""
    behaviour_warmup: int = 500
    """Iterations that fit only mu and the critics before the policies start to move."""
    sequential: bool = True
    """Update agents in a random order against updated teammates; false = every agent
    against the teammates' policies from before the iteration (the ablation)."""

    def validate(self) -> None:
        validate_common(self)
        require(self.alpha > 0, f"alpha={self.alpha} is invalid: must be > 0")
        require(self.beta >= 0, f"beta={self.beta} is invalid: must be >= 0")
        require(0 < self.tau <= 1, f"tau={self.tau} is invalid: must be in (0, 1]")
        require(self.max_importance_weight >= 1,
                f"max_importance_weight={self.max_importance_weight} is invalid: must be >= 1")
        require(self.behaviour_warmup >= 0, f"behaviour_warmup={self.behaviour_warmup} must be >= 0")


class InSPOCritics(NamedTuple):
    q_joint: Any  # Q(s, a): state and joint action (one-hot, or raw on a box) -> scalar
    v_joint: Any  # V(s)
    q_local: Any  # E[w (Q - L) | o_i, a_i] and E[w | o_i, a_i] (see local_regressions); with agent id
    v_local: Any  # V_i(o_i) shared, with agent id


class InSPOState(NamedTuple):
    policy: Any  # one parameter set per agent, stacked on axis 0
    policy_opt: Any
    behaviour: Any
    behaviour_opt: Any
    critics: InSPOCritics
    target: tuple[Any, Any]  # (q_joint, v_joint)
    critic_opt: Any
    step: jax.Array
    value_floor: jax.Array  # L = min(0, lowest target Q(s, a) seen so far)


def soft_advantage(q: jax.Array, v: jax.Array, log_mu: jax.Array, alpha: float, beta: float) -> jax.Array:
    """log of the weighted-BC weight mu^(-beta/tau) exp((Q - V)/tau), unclipped."""
    temperature = alpha + beta
    return (q - v) / temperature - beta / temperature * log_mu


def policy_exponent(q: jax.Array, v: jax.Array, log_mu: jax.Array, alpha: float, beta: float) -> jax.Array:
    """soft_advantage clipped to [-10, 10], so the policy's weights stay finite in float32."""
    return jnp.clip(soft_advantage(q, v, log_mu, alpha, beta), -EXP_CLIP, EXP_CLIP)


def local_value_loss(q_local: jax.Array, v_local: jax.Array, log_mu: jax.Array, alpha: float,
                     beta: float) -> jax.Array:
    """The exponential loss of V_i against fixed Q_i, on the *unclipped* soft advantage
    (exponential_value_loss shifts by the batch maximum, so it cannot overflow). With the
    clipped exponent, a sample above the clip gives V_i no gradient; once every sample of a
    batch is above it, only the linear term acts and V_i falls without end, every weight
    sits at exp(10) and the policy update is plain behaviour cloning (docs/inspo.md)."""
    z = soft_advantage(jax.lax.stop_gradient(q_local), v_local, log_mu, alpha, beta)
    return exponential_value_loss(z, v_local / (alpha + beta))


def local_value(weighted_advantage: jax.Array, mean_weight: jax.Array, floor: jax.Array) -> jax.Array:
    """Q_i(o_i, a_i) = L + E[w (Q - L)] / max(E[w], 1), both expectations given (o_i, a_i).

    The importance-sampling estimate of E_{teammates ~ updated policies}[Q] over the
    dataset's samples of (o_i, a_i). When the weights average below 1, the updated
    teammates put that much probability on actions the dataset lacks; that missing
    mass is valued at the floor L (pessimism). When they average above 1 (teammates'
    actions correlated in the data), the estimate is self-normalised instead, so it
    never leaves the range of the observed Q values.
    """
    return floor + weighted_advantage / jnp.maximum(mean_weight, 1.0)


def teammate_weights(log_ratios: jax.Array, before: jax.Array, max_weight: float) -> jax.Array:
    """w = prod_{j in before} pi_j/mu_j per sample, clipped above: [B, N] x [N] -> [B]."""
    log_w = jnp.sum(jnp.where(before, log_ratios, 0.0), axis=-1)
    return jnp.minimum(jnp.exp(log_w), max_weight)


class PackedLocalRegressions:
    """Discrete actions: both local regressions in one network with 2A outputs (the first A
    for E[w (Q - L)], the last A for E[w]), read at the given actions."""

    def __init__(self, hidden_sizes: Sequence[int], num_actions: int) -> None:
        self.network = MLPActionValues(hidden_sizes, 2 * num_actions)
        self.num_actions = num_actions

    def init(self, rng: jax.Array, inputs: jax.Array) -> Any:
        return self.network.init(rng, inputs)

    def __call__(self, params: Any, inputs: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = self.network.apply(params, inputs)
        a = self.num_actions
        return taken(out[..., :a], actions), taken(out[..., a:], actions)


class ActionInputLocalRegressions:
    """Box actions: the two local regressions as two networks with the action as an input
    (offline_common.ActionInputQ); parameters (E[w (Q - L)] net, E[w] net)."""

    def __init__(self, hidden_sizes: Sequence[int], action_dim: int) -> None:
        self.q = ActionInputQ(hidden_sizes, action_dim)

    def init(self, rng: jax.Array, inputs: jax.Array) -> Any:
        return tuple(self.q.init(key, inputs) for key in jax.random.split(rng))

    def __call__(self, params: Any, inputs: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.q(params[0], inputs, actions), self.q(params[1], inputs, actions)


def local_regressions(space: ActionSpace, hidden_sizes: Sequence[int]
                      ) -> PackedLocalRegressions | ActionInputLocalRegressions:
    """The local critics of an action space: E[w (Q - L) | o_i, a_i] and E[w | o_i, a_i] at
    the given actions [..., N] from local inputs [..., N, I]."""
    if isinstance(space, BoxActions):
        return ActionInputLocalRegressions(hidden_sizes, space.dim)
    return PackedLocalRegressions(hidden_sizes, space.num_actions)


class InSPO(StatelessPolicy):
    team_value_metric = "q_mean"

    def __init__(self, config: InSPOConfig, spec: EnvSpec) -> None:
        self.config = config
        self.spec = spec
        self.temperature = config.alpha + config.beta
        self.head = actor_head(spec.action_space, config.box_policy)
        self.actor = MLPPolicy(config.hidden_sizes, self.head.size)
        self.behaviour = SharedActor(config.hidden_sizes, spec, config.box_policy)
        self.q_joint = MLPValue(config.hidden_sizes)
        self.v_joint = MLPValue(config.hidden_sizes)
        self.local_regressions = local_regressions(spec.action_space, config.hidden_sizes)
        self.v_local = MLPValue(config.hidden_sizes)
        self.optimizer = make_optimizer(config.lr, config.max_grad_norm)

    # -- acting: one policy network per agent -------------------------------------
    def logits(self, policy: Any, obs: jax.Array, avail: jax.Array) -> jax.Array:
        """Every agent's own actor outputs [..., N, *] (see offline_common.actor_head)."""
        per_agent = jax.vmap(self.actor.apply, in_axes=(0, -2), out_axes=-2)
        return self.head.outputs(per_agent(policy, obs), avail)

    def action_distribution(
        self, params: Any, policy_state: jax.Array, obs: jax.Array, avail: jax.Array, starts: jax.Array
    ) -> tuple[ActionDistribution, jax.Array]:
        return self.head.distribution(self.logits(params, obs, avail)), policy_state

    def acting_params(self, state: InSPOState) -> Any:
        return state.policy

    # -- state ------------------------------------------------------------------------
    def _joint_input(self, state: jax.Array, actions: jax.Array) -> jax.Array:
        """[state, every agent's action features] (one-hot, or the raw vector on a box)."""
        features = self.head.features(actions)
        return jnp.concatenate([state, features.reshape(*features.shape[:-2], -1)], axis=-1)

    def init(self, rng: jax.Array) -> InSPOState:
        n, spec = self.spec.num_agents, self.spec
        k_pi, k_mu, k_q, k_v, k_ql, k_vl = jax.random.split(rng, 6)
        policy = jax.vmap(self.actor.init)(jax.random.split(k_pi, n), jnp.zeros((n, spec.obs_dim)))
        behaviour = self.behaviour.init_actor(k_mu)
        local_in = jnp.zeros((n, spec.obs_dim + n))
        critics = InSPOCritics(
            self.q_joint.init(k_q, jnp.zeros(spec.state_dim + n * self.head.feature_size)),
            self.v_joint.init(k_v, jnp.zeros(spec.state_dim)),
            self.local_regressions.init(k_ql, local_in),
            self.v_local.init(k_vl, local_in),
        )
        return InSPOState(
            policy, jax.vmap(self.optimizer.init)(policy), behaviour, self.optimizer.init(behaviour),
            critics, (critics.q_joint, critics.v_joint), self.optimizer.init(critics), jnp.zeros((), jnp.int32),
            jnp.zeros(()),
        )

    # -- losses -----------------------------------------------------------------------
    def _behaviour_loss(self, params: Any, batch: TransitionBatch) -> tuple[jax.Array, dict]:
        loss = -jnp.mean(self.behaviour.log_prob(params, batch.obs, batch.avail, batch.actions))
        return loss, {"behaviour_loss": loss}

    def _agent_outputs(self, agent_params: Any, agent: jax.Array, batch: TransitionBatch) -> jax.Array:
        """pi_agent's outputs at o_agent over the batch, from that agent's parameters only."""
        obs, avail = (jnp.take(x, agent, axis=1) for x in (batch.obs, batch.avail))
        return self.head.outputs(self.actor.apply(agent_params, obs), avail)

    def _agent_log_probs(self, agent_params: Any, agent: jax.Array, batch: TransitionBatch) -> jax.Array:
        """log pi_agent(a_agent | o_agent) over the batch."""
        return self.head.log_prob(self._agent_outputs(agent_params, agent, batch),
                                  jnp.take(batch.actions, agent, axis=1))

    def _agent_policy_loss(self, agent_params: Any, agent: jax.Array, batch: TransitionBatch,
                           weights: jax.Array) -> tuple[jax.Array, dict]:
        return -jnp.mean(weights * self._agent_log_probs(agent_params, agent, batch)), {}

    def _critic_loss(self, critics: InSPOCritics, target: tuple[Any, Any], batch: TransitionBatch,
                     joint_in: jax.Array, q_target: jax.Array, log_mu: jax.Array, local_weights: jax.Array,
                     floor: jax.Array) -> tuple[jax.Array, dict]:
        cfg, temp = self.config, self.temperature
        q = self.q_joint.apply(critics.q_joint, joint_in)
        next_v = self.v_joint.apply(target[1], batch.next_state)
        td_target = jax.lax.stop_gradient(batch.reward + cfg.gamma * (1.0 - batch.done) * next_v)
        q_loss = jnp.sum(batch.valid * (q - td_target) ** 2) / jnp.maximum(jnp.sum(batch.valid), 1.0)

        v = self.v_joint.apply(critics.v_joint, batch.state)
        z_joint = policy_exponent(q_target, v, jnp.sum(log_mu, axis=-1), cfg.alpha, cfg.beta)
        v_loss = exponential_value_loss(z_joint, v / temp)

        local_in = with_agent_id(batch.obs)
        weighted_advantage, mean_weight = self.local_regressions(critics.q_local, local_in, batch.actions)
        q_local_loss = (jnp.mean((weighted_advantage - local_weights * (q_target[:, None] - floor)) ** 2)
                        + jnp.mean((mean_weight - local_weights) ** 2))
        q_local = local_value(weighted_advantage, mean_weight, floor)

        v_local = self.v_local.apply(critics.v_local, local_in)
        v_local_loss = local_value_loss(q_local, v_local, log_mu, cfg.alpha, cfg.beta)
        metrics = {"q_loss": q_loss, "v_loss": v_loss, "q_local_loss": q_local_loss,
                   "v_local_loss": v_local_loss, "q_mean": jnp.mean(q)}
        return q_loss + v_loss + q_local_loss + v_local_loss, metrics

    # -- one iteration ----------------------------------------------------------------
    def _policy_step(self, policy: Any, policy_opt: Any, batch: TransitionBatch, agent: jax.Array,
                     weights: jax.Array) -> tuple[Any, Any, jax.Array]:
        """Update one agent's slice of the stacked parameters; returns its new outputs too."""
        params, opt_state = (jax.tree.map(lambda x: x[agent], tree) for tree in (policy, policy_opt))
        params, opt_state, _ = gradient_step(self.optimizer, params, opt_state, self._agent_policy_loss,
                                             agent, batch, weights)
        policy, policy_opt = (jax.tree.map(lambda full, part: full.at[agent].set(part), full, part)
                              for full, part in ((policy, params), (policy_opt, opt_state)))
        return policy, policy_opt, self._agent_outputs(params, agent, batch)

    def update(self, state: InSPOState, batch: TransitionBatch, rng: jax.Array) -> tuple[InSPOState, dict]:
        cfg, n = self.config, self.spec.num_agents
        behaviour, behaviour_opt, m_mu = gradient_step(
            self.optimizer, state.behaviour, state.behaviour_opt, self._behaviour_loss, batch)
        mu_outputs = jax.lax.stop_gradient(self.behaviour.logits(behaviour, batch.obs, batch.avail))
        log_mu = self.head.log_prob(mu_outputs, batch.actions)
        local_in = with_agent_id(batch.obs)
        q_local = local_value(*self.local_regressions(state.critics.q_local, local_in, batch.actions),
                              state.value_floor)
        v_local = self.v_local.apply(state.critics.v_local, local_in)
        exponent = policy_exponent(q_local, v_local, log_mu, cfg.alpha, cfg.beta)
        active = (state.step >= cfg.behaviour_warmup).astype(jnp.float32)

        order = jax.random.permutation(rng, n)
        position = jnp.argsort(order)

        old_log_ratios = self.head.log_ratio(self.logits(state.policy, batch.obs, batch.avail), mu_outputs,
                                             batch.actions)
        log_ratios = old_log_ratios
        local_weights = jnp.ones_like(log_mu)
        policy, policy_opt = state.policy, state.policy_opt
        for m in range(n):  # N is small and static: the loop unrolls
            agent = order[m]
            if cfg.sequential:
                w = teammate_weights(log_ratios, position < m, cfg.max_importance_weight)
            else:
                w = teammate_weights(old_log_ratios, jnp.arange(n) != agent, cfg.max_importance_weight)
            local_weights = local_weights.at[:, agent].set(w)
            weights = jnp.exp(jnp.take(exponent, agent, axis=1)) * active
            policy, policy_opt, new_outputs = self._policy_step(policy, policy_opt, batch, agent, weights)
            log_ratios = log_ratios.at[:, agent].set(self.head.log_ratio(
                new_outputs, jnp.take(mu_outputs, agent, axis=1), jnp.take(batch.actions, agent, axis=1)))

        joint_in = self._joint_input(batch.state, batch.actions)
        q_target = jax.lax.stop_gradient(self.q_joint.apply(state.target[0], joint_in))
        value_floor = jnp.minimum(state.value_floor, jnp.min(q_target))
        critics, critic_opt, m_critic = gradient_step(
            self.optimizer, state.critics, state.critic_opt, self._critic_loss, state.target, batch,
            joint_in, q_target, log_mu, local_weights, value_floor)
        target = soft_update(state.target, (critics.q_joint, critics.v_joint), cfg.tau)
        metrics = {**m_mu, **m_critic, **weight_diagnostics("weight", jnp.exp(exponent)),
                   **weight_diagnostics("teammate_weight", local_weights)}
        new_state = InSPOState(policy, policy_opt, behaviour, behaviour_opt, critics, target,
                               critic_opt, state.step + 1, value_floor)
        return new_state, metrics
