"""InSPO with box (continuous) actions (docs/inspo.md, "Continuous actions"): the
tanh-Gaussian density ratios of the teammates' weights, the losses against float64 NumPy
hand computations, the Gaussian closed form of the weighted update, and whole updates on
data shaped like mpe:simple_spread_continuous."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import box_transition_batch, local_inputs, log_softmax, mlp, tanh_gaussian_log_prob

from offmarl.algos.inspo import InSPO, InSPOConfig, policy_exponent
from offmarl.algos.offline_common import CategoricalHead, TanhGaussianHead
from offmarl.envs.base import BoxActions, EnvSpec
from offmarl.networks.distributions import TanhGaussian
from offmarl.types import TransitionBatch

# A box that is neither symmetric nor unit-sized, so the rescaling onto it is exercised.
LOW, HIGH = np.array([-1.0, 0.0]), np.array([1.0, 3.0])
# mpe:simple_spread_continuous: 3 agents, 18 observations each, 5 forces in [0, 1].
SPREAD_LOW, SPREAD_HIGH = np.zeros(5), np.ones(5)
SPREAD_SPEC = EnvSpec(name="mpe:simple_spread_continuous", num_agents=3, obs_dim=18, state_dim=54, num_actions=0,
                      max_episode_steps=25, has_win=False,
                      action_space=BoxActions(tuple(SPREAD_LOW), tuple(SPREAD_HIGH)))
# One learner (beta > 0, so log mu enters the weights), compiled once for all the tests.
BATCH = 16  # one batch size everywhere: one compilation of the update
CONFIG = InSPOConfig(hidden_sizes=(8,), alpha=0.2, beta=0.1, gamma=0.9, behaviour_warmup=0)


def f32(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def box_batch(spec: EnvSpec, seed: int, size: int) -> TransitionBatch:
    """Random box data; some actions on the box's faces, a terminal and a time-limit cut."""
    rng = np.random.default_rng(seed)
    n, low, high = spec.num_agents, np.array(spec.action_space.low), np.array(spec.action_space.high)

    def actions() -> np.ndarray:  # 20% beyond the box, clipped onto its faces like an environment would
        return np.clip(low + (high - low) * rng.uniform(-0.1, 1.1, size=(size, n, len(low))), low, high)

    return box_transition_batch(spec, rng, size, actions)


@functools.cache
def spread_learner() -> tuple[InSPO, Callable, Callable]:
    """InSPO with CONFIG on the spread's spec, its compiled init and update."""
    algo = InSPO(CONFIG, SPREAD_SPEC)
    return algo, jax.jit(algo.init), jax.jit(algo.update)


# -- (1) the teammates' density ratios -------------------------------------------------------


def test_tanh_gaussian_log_ratio_is_the_density_ratio_with_jacobians_and_zero_for_equal_policies() -> None:
    """head.log_ratio = log pi(a) - log mu(a) of the two tanh-Gaussians with their Jacobians
    (NumPy, float64), the clamps of the means and log-stds applied; exactly 0 when pi = mu,
    also on the box's faces, where it stays finite."""
    head = TanhGaussianHead(tuple(LOW), tuple(HIGH))
    rng = np.random.default_rng(0)
    pi = np.concatenate([rng.normal(size=(6, 2)), rng.normal(size=(6, 2)) - 0.5], axis=-1)
    mu = np.concatenate([rng.normal(size=(6, 2)), rng.normal(size=(6, 2)) - 0.5], axis=-1)
    pi[0, 0], mu[1, 2], mu[2, 3] = 11.0, -6.0, 2.7  # a mean and log-stds beyond their clamps
    actions = LOW + (HIGH - LOW) * rng.uniform(0.05, 0.95, size=(6, 2))
    want = (tanh_gaussian_log_prob(pi[:, :2], pi[:, 2:], actions, LOW, HIGH)
            - tanh_gaussian_log_prob(mu[:, :2], mu[:, 2:], actions, LOW, HIGH))
    got = np.asarray(head.log_ratio(f32(pi), f32(mu), f32(actions)))
    assert got.shape == (6,) and np.abs(want).min() > 0.05
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    faces = np.stack([LOW, HIGH, [LOW[0], HIGH[1]], [HIGH[0], LOW[1]], LOW, HIGH])
    assert np.all(np.asarray(head.log_ratio(f32(pi), f32(pi), f32(faces))) == 0.0)
    assert np.all(np.asarray(head.log_ratio(f32(mu), f32(mu), f32(actions))) == 0.0)
    at_faces = np.asarray(head.log_ratio(f32(pi), f32(mu), f32(faces)))
    assert np.isfinite(at_faces).all()
    # On the faces float32 resolves 1 - 1e-6 to a few per cent only: a loose tolerance.
    np.testing.assert_allclose(at_faces, tanh_gaussian_log_prob(pi[:, :2], pi[:, 2:], faces, LOW, HIGH)
                               - tanh_gaussian_log_prob(mu[:, :2], mu[:, 2:], faces, LOW, HIGH), rtol=0.05)
    # The distribution's own method agrees with the head (which builds the distributions).
    dist = head.distribution(f32(pi))
    assert isinstance(dist, TanhGaussian)
    np.testing.assert_array_equal(np.asarray(dist.log_ratio(head.distribution(f32(mu)), f32(actions))), got)


def test_categorical_log_ratio_is_the_log_softmax_difference() -> None:
    rng = np.random.default_rng(1)
    pi, mu, actions = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)), rng.integers(4, size=5)
    want = (np.take_along_axis(log_softmax(pi) - log_softmax(mu), actions[:, None], axis=-1)[:, 0])
    got = np.asarray(CategoricalHead(4).log_ratio(f32(pi), f32(mu), jnp.asarray(actions)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# -- (2) the losses against NumPy ------------------------------------------------------------



def np_value(params: dict, x: np.ndarray) -> np.ndarray:
    return mlp(params["params"], x)[..., 0]


def np_action_input_q(params: dict, obs: jax.Array, actions: jax.Array) -> np.ndarray:
    """A local critic with the action as an input: an MLP on [o_i, one-hot i, a_i]."""
    inputs = np.concatenate([local_inputs(obs), np.asarray(actions, np.float64)], axis=-1)
    return mlp(params["params"]["MLPValue_0"], inputs)[..., 0]


def np_tanh_gaussian(outputs: np.ndarray, actions: jax.Array) -> np.ndarray:
    mean, log_std = np.split(outputs, 2, axis=-1)
    return tanh_gaussian_log_prob(mean, log_std, np.asarray(actions), SPREAD_LOW, SPREAD_HIGH)


def np_exponent(q: np.ndarray, v: np.ndarray, log_mu: np.ndarray, config: InSPOConfig,
                clip: float = 10.0) -> np.ndarray:
    tau = config.alpha + config.beta
    return np.clip((q - v) / tau - config.beta / tau * log_mu, -clip, clip)


def np_exponential_value_loss(z: np.ndarray, linear: np.ndarray) -> float:
    m = max(z.max(), -1.0)
    return float(np.mean(np.exp(z - m) + np.exp(-m) * linear))


def test_continuous_inspo_losses_match_numpy() -> None:
    """Weighted likelihood of each agent's own tanh-Gaussian with weight
    exp(clip((Q_i - V_i)/tau - (beta/tau) log mu_i, +-10)); local critics with the action as an
    input regressed onto w (Q^targ - L) and w; the joint Q(s, [a_1 .. a_N]) by TD onto
    r + gamma (1 - d) V^targ(s'); the exponential losses of V and V_i (V_i's on the unclipped
    exponent)."""
    config, (algo, init, update) = CONFIG, spread_learner()
    state = init(jax.random.PRNGKey(4))
    # Spread the outputs; online critics distinct from the targets.
    state = state._replace(policy=jax.tree.map(lambda x: 3.0 * x, state.policy),
                           behaviour=jax.tree.map(lambda x: 2.0 * x, state.behaviour),
                           critics=jax.tree.map(lambda x: 2.0 * x, state.critics))
    # Interior actions: on the faces float32 resolves the log-likelihood to a few per cent only.
    batch = box_batch(SPREAD_SPEC, 5, size=BATCH)
    batch = batch._replace(actions=jnp.clip(batch.actions, 0.02, 0.98))
    reward, done, valid = (np.asarray(x, np.float64) for x in (batch.reward, batch.done, batch.valid))
    floor = -0.5
    tau = config.alpha + config.beta

    # The weights the update uses: mu after its behaviour-cloning step, the critics before.
    new_state, metrics = update(state._replace(value_floor=jnp.float32(floor)), batch,
                                              jax.random.PRNGKey(0))
    log_mu = np_tanh_gaussian(mlp(new_state.behaviour["params"], local_inputs(batch.obs)), batch.actions)
    adv_params, weight_params = state.critics.q_local
    q_local = floor + (np_action_input_q(adv_params, batch.obs, batch.actions)
                       / np.maximum(np_action_input_q(weight_params, batch.obs, batch.actions), 1.0))
    v_local = np_value(state.critics.v_local, local_inputs(batch.obs))
    z = np_exponent(q_local, v_local, log_mu, config)
    assert np.abs(z).max() > 0.5 and (np.abs(z) < 10).any()
    # (float32 exponents near the clip: exp amplifies their rounding)
    np.testing.assert_allclose(float(metrics["weight_mean"]), np.exp(z).mean(), rtol=1e-3)
    np.testing.assert_allclose(float(metrics["weight_max"]), np.exp(z).max(), rtol=1e-3)

    # Each agent's weighted likelihood, from its own parameters only.
    policy_loss = jax.jit(algo._agent_policy_loss)
    for agent in range(SPREAD_SPEC.num_agents):
        params = jax.tree.map(lambda x: x[agent], state.policy)
        log_pi = np_tanh_gaussian(mlp(params["params"], np.asarray(batch.obs[:, agent], np.float64)),
                                  batch.actions[:, agent])
        got = policy_loss(params, jnp.int32(agent), batch, f32(np.exp(z[:, agent])))[0]
        np.testing.assert_allclose(float(got), -np.mean(np.exp(z[:, agent]) * log_pi), rtol=1e-4)

    # The critics' losses on given targets, log mu and teammates' weights.
    critics, target = state.critics, state.target
    joint_in = np.concatenate([np.asarray(batch.state, np.float64),
                               np.asarray(batch.actions, np.float64).reshape(BATCH, -1)], axis=-1)
    np.testing.assert_array_equal(np.asarray(algo._joint_input(batch.state, batch.actions)), f32(joint_in))
    q_target = np_value(target[0], joint_in)
    local_weights = np.random.default_rng(6).uniform(0.2, 2.0, size=(BATCH, SPREAD_SPEC.num_agents))
    _, got = jax.jit(algo._critic_loss)(critics, target, batch, f32(joint_in), f32(q_target), f32(log_mu),
                               f32(local_weights), jnp.float32(floor))

    q = np_value(critics.q_joint, joint_in)
    td = reward + config.gamma * (1 - done) * np_value(target[1], np.asarray(batch.next_state, np.float64))
    np.testing.assert_allclose(float(got["q_loss"]), np.sum(valid * (q - td) ** 2) / valid.sum(), rtol=1e-4)
    v = np_value(critics.v_joint, np.asarray(batch.state, np.float64))
    want_v = np_exponential_value_loss(np_exponent(q_target, v, log_mu.sum(-1), config), v / tau)
    np.testing.assert_allclose(float(got["v_loss"]), want_v, rtol=1e-4)
    advantage = np_action_input_q(critics.q_local[0], batch.obs, batch.actions)
    mean_weight = np_action_input_q(critics.q_local[1], batch.obs, batch.actions)
    want_local = (np.mean((advantage - local_weights * (q_target[:, None] - floor)) ** 2)
                  + np.mean((mean_weight - local_weights) ** 2))
    np.testing.assert_allclose(float(got["q_local_loss"]), want_local, rtol=1e-4)
    v_i = np_value(critics.v_local, local_inputs(batch.obs))
    z_local = np_exponent(floor + advantage / np.maximum(mean_weight, 1.0), v_i, log_mu, config, clip=np.inf)
    np.testing.assert_allclose(float(got["v_local_loss"]), np_exponential_value_loss(z_local, v_i / tau), rtol=1e-4)
    # The local critics read the action they are given.
    centre = jnp.broadcast_to(f32((SPREAD_LOW + SPREAD_HIGH) / 2), batch.actions.shape)
    other, _ = algo.local_regressions(critics.q_local, f32(local_inputs(batch.obs)), centre)
    assert np.abs(np.asarray(other) - advantage).max() > 1e-3


# -- (3) the Gaussian closed form ------------------------------------------------------------


@pytest.mark.parametrize("squashed", [False, True], ids=["gaussian", "wide tanh box"])
@pytest.mark.parametrize("alpha,beta", [(0.3, 0.0), (0.3, 0.2)])
def test_weighted_likelihood_recovers_the_gaussian_closed_form(alpha: float, beta: float, squashed: bool) -> None:
    """mu = N(m, s^2), Q(a) = -c (a - a*)^2: pi* ∝ mu^(alpha/tau) exp(Q/tau) is Gaussian with
    precision (alpha/tau)/s^2 + 2c/tau and mean (m (alpha/tau)/s^2 + a* 2c/tau) / precision.
    Weighted maximum likelihood of a Gaussian over samples of mu, weights exp(policy_exponent)
    at V = the value loss's minimiser, recovers both. "wide tanh box": mu is the tanh-Gaussian
    head on [-50, 50] (near linear there), log mu with its Jacobian, as InSPO reads it."""
    m, s, c, a_star, n = 0.5, 1.0, 0.25, 2.0, 400_000
    tau = alpha + beta
    precision = (alpha / tau) / s**2 + 2 * c / tau
    want_mean, want_var = (m * (alpha / tau) / s**2 + a_star * 2 * c / tau) / precision, 1 / precision

    rng = np.random.default_rng(2)
    if squashed:
        width = 50.0
        head = TanhGaussianHead((-width,), (width,))
        outputs = f32(np.broadcast_to([m / width, np.log(s / width)], (n, 2)))
        a = width * np.tanh(rng.normal(m / width, s / width, size=n))
        log_mu = np.asarray(head.log_prob(outputs, f32(a[:, None])), np.float64)
    else:
        a = rng.normal(m, s, size=n)
        log_mu = -0.5 * ((a - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    q = -c * (a - a_star) ** 2
    log_terms = q / tau - beta / tau * log_mu  # V = tau log E_mu[mu^(-beta/tau) exp(Q/tau)]
    v = tau * (np.log(np.mean(np.exp(log_terms - log_terms.max()))) + log_terms.max())
    z = np.asarray(policy_exponent(f32(q), jnp.float32(v), f32(log_mu), alpha, beta), np.float64)
    assert z.max() < 10  # the upper clip does not bind
    w = np.exp(z)
    np.testing.assert_allclose(w.mean(), 1.0, rtol=0.02)  # the V loss's stationarity condition
    mean = np.sum(w * a) / np.sum(w)
    var = np.sum(w * (a - mean) ** 2) / np.sum(w)
    np.testing.assert_allclose([mean, var], [want_mean, want_var], rtol=0.02)
    assert abs(want_mean - m) > 0.5 and abs(want_var - s**2) > 0.3  # far from behaviour cloning


# -- (4) whole updates on mpe:simple_spread_continuous-shaped data ------------------------------


def spread_run(seed: int) -> tuple[InSPO, list, list[dict]]:
    """The states after 0, 1, 2 updates from `seed` (policies moving from the first) and the
    metrics of each."""
    algo, init, update = spread_learner()
    states, metrics = [init(jax.random.PRNGKey(seed))], []
    for step in range(2):
        state, step_metrics = update(states[-1], box_batch(SPREAD_SPEC, 10 + step, size=BATCH),
                                     jax.random.PRNGKey(100 * seed + step))
        states.append(state)
        metrics.append({k: np.asarray(v) for k, v in step_metrics.items()})
    return algo, states, metrics


def all_leaves_differ(a: object, b: object) -> bool:
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    return bool(pairs) and all(np.any(np.asarray(x) != np.asarray(y)) for x, y in pairs)


def test_updates_on_spread_shaped_box_data_are_finite_move_every_network_and_act_in_the_box() -> None:
    algo, states, metrics = spread_run(0)
    assert all(np.isfinite(v).all() for m in metrics for v in m.values()), metrics
    assert float(metrics[-1]["teammate_weight_std"]) > 0  # the density ratios are not all one
    first, last = states[0], states[-1]
    for part in ("policy", "behaviour", "critics", "target"):
        assert all_leaves_differ(getattr(first, part), getattr(last, part)), part
    batch = box_batch(SPREAD_SPEC, 3, size=8)
    dist, _ = algo.action_distribution(algo.acting_params(last), algo.initial_policy_state((8,)), batch.obs,
                                       batch.avail, jnp.ones(8, bool))
    assert isinstance(dist, TanhGaussian)
    for actions in (np.asarray(dist.mode()), np.asarray(dist.sample(jax.random.PRNGKey(1)))):
        assert actions.shape == (8, 3, 5) and (actions >= 0).all() and (actions <= 1).all()
    assert np.isfinite(np.asarray(dist.log_prob(batch.actions))).all()


def test_two_updates_are_deterministic_per_seed() -> None:
    _, states, metrics = spread_run(0)
    _, again, metrics_again = spread_run(0)
    for a, b in zip(jax.tree.leaves(states), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for m, m_again in zip(metrics, metrics_again, strict=True):
        assert m.keys() == m_again.keys() and all(np.array_equal(m[k], m_again[k]) for k in m)
    _, other, _ = spread_run(1)
    assert all_leaves_differ(states[-1].policy, other[-1].policy)
