"""The offline learners' pure losses against float64 NumPy hand computations, InSPO's
closed form on a one-state game, the update/acting contract of every registered
offline algorithm on a small fake environment, and the continuous (box) forms of BC and
OMIGA computed by hand from their networks' parameters."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from oracles import (
    box_transition_batch,
    censored_gaussian_log_prob,
    dense,
    local_inputs,
    log_softmax,
    mlp,
    tanh_gaussian_log_prob,
)

from offmarl.algos import ALGORITHMS, check_action_support
from offmarl.algos.bc import bc_loss
from offmarl.algos.inspo import InSPOConfig, local_value, local_value_loss, policy_exponent, teammate_weights
from offmarl.algos.iql_cql import iql_cql_loss
from offmarl.algos.maicq import icq_actor_loss, icq_critic_loss
from offmarl.algos.offline_common import exponential_value_loss, weight_diagnostics
from offmarl.algos.omiga import local_advantage_exponent, omiga_q_loss, omiga_v_loss, weighted_bc_loss
from offmarl.algos.offline_common import TanhGaussianHead
from offmarl.envs.base import BoxActions, EnvSpec
from offmarl.networks.distributions import CensoredGaussian, TanhGaussian
from offmarl.errors import ConfigError
from offmarl.types import TransitionBatch

B, N, A = 3, 2, 3
RTOL, ATOL = 1e-5, 1e-6
OFFLINE = [name for name, entry in ALGORITHMS.items() if entry.kind == "offline"]
SPEC = EnvSpec(name="fake", num_agents=3, obs_dim=5, state_dim=7, num_actions=4,
               max_episode_steps=10, has_win=False)


def f32(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def np_exponential_value_loss(z: np.ndarray, linear: np.ndarray) -> float:
    """mean(exp(z - m) + exp(-m) linear), m = max(max z, -1)."""
    m = max(z.max(), -1.0)
    return float(np.mean(np.exp(z - m) + np.exp(-m) * linear))


# -- the in-sample exponential value loss ----------------------------------------------


@pytest.mark.parametrize("offset", [-4.0, 0.0, 3.0], ids=["m=-1", "m=max z", "large z"])
def test_exponential_value_loss_matches_numpy(offset: float) -> None:
    """Both branches of the shift m = max(max z, -1): max z below and above -1."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(B, N)) * 0.5 + offset
    linear = rng.normal(size=(B, N))
    assert (z.max() < -1.0) == (offset < -1.0)
    got = float(exponential_value_loss(f32(z), f32(linear)))
    np.testing.assert_allclose(got, np_exponential_value_loss(z, linear), rtol=RTOL)


def test_exponential_value_loss_minimiser_is_the_soft_value() -> None:
    """With z = (target - V)/temp and linear = V/temp, dL/dV = exp(-m)/temp (1 - mean exp(z)):
    zero exactly at V* = temp log mean exp(target/temp), negative below it, positive above."""
    rng = np.random.default_rng(1)
    target = rng.normal(size=(B, N))
    temp = 0.5
    v_star = temp * np.log(np.mean(np.exp(target / temp)))

    def loss(v: jax.Array) -> jax.Array:
        return exponential_value_loss((f32(target) - v) / temp, jnp.full((B, N), v / temp))

    grad = jax.grad(loss)
    for v in [v_star - 1.0, v_star - 0.1, v_star + 0.1, v_star + 1.0]:
        z = (target - v) / temp
        m = max(z.max(), -1.0)
        want = np.exp(-m) / temp * (1.0 - np.mean(np.exp(z)))
        got = float(grad(jnp.float32(v)))
        np.testing.assert_allclose(got, want, rtol=1e-4)
        assert np.sign(got) == np.sign(v - v_star) and abs(got) > 1e-2
    assert abs(float(grad(jnp.float32(v_star)))) < 1e-5


# -- OMIGA -------------------------------------------------------------------------------


def omiga_inputs(seed: int) -> dict[str, np.ndarray]:
    """Mixer weights >= 0, one terminal and one time-limit-cut (invalid) sample."""
    rng = np.random.default_rng(seed)
    return {
        "q_taken": rng.normal(size=(B, N)),
        "w": np.abs(rng.normal(size=(B, N))),
        "b": rng.normal(size=B),
        "reward": rng.normal(size=B),
        "done": np.array([0.0, 1.0, 0.0]),
        "next_v_target": rng.normal(size=(B, N)),
        "next_w_target": np.abs(rng.normal(size=(B, N))),
        "next_b_target": rng.normal(size=B),
        "valid": np.array([1.0, 1.0, 0.0]),
    }


def test_local_advantage_exponent_matches_numpy_and_clips() -> None:
    rng = np.random.default_rng(2)
    w, q, v = np.abs(rng.normal(size=(B, N))) * 3, rng.normal(size=(B, N)), rng.normal(size=(B, N))
    alpha = 0.1
    raw = (w * q - w * v) / alpha
    assert raw.max() > 10 and raw.min() < -10 and (np.abs(raw) < 10).any()  # both clips bind
    got = np.asarray(local_advantage_exponent(f32(w), f32(q), f32(v), alpha))
    np.testing.assert_allclose(got, np.clip(raw, -10, 10), rtol=RTOL, atol=ATOL)


def numpy_q_tot_and_target(x: dict, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Q_tot(s, a) and its unclipped TD target r + gamma (1 - d) V_tot^targ(s'), by hand."""
    q_tot = np.sum(x["w"] * x["q_taken"], axis=-1) + x["b"]
    next_v_tot = np.sum(x["next_w_target"] * x["next_v_target"], axis=-1) + x["next_b_target"]
    return q_tot, x["reward"] + gamma * (1 - x["done"]) * next_v_tot


def test_omiga_q_loss_matches_numpy_with_no_gradient_into_the_target() -> None:
    x = omiga_inputs(3)
    gamma = 0.9
    q_tot, target = numpy_q_tot_and_target(x, gamma)
    want = np.sum(x["valid"] * (q_tot - target) ** 2) / x["valid"].sum()

    def loss(q_taken: jax.Array, next_v: jax.Array) -> jax.Array:
        args = {k: f32(v) for k, v in x.items()} | {"q_taken": q_taken, "next_v_target": next_v}
        return omiga_q_loss(**args, gamma=gamma)

    got = float(loss(f32(x["q_taken"]), f32(x["next_v_target"])))
    np.testing.assert_allclose(got, want, rtol=RTOL)
    d_q, d_next = jax.grad(loss, argnums=(0, 1))(f32(x["q_taken"]), f32(x["next_v_target"]))
    want_d_q = 2 * (x["valid"] * (q_tot - target))[:, None] * x["w"] / x["valid"].sum()
    np.testing.assert_allclose(np.asarray(d_q), want_d_q, rtol=1e-4, atol=ATOL)
    assert np.all(np.asarray(d_q)[2] == 0.0)  # the invalid sample
    assert np.all(np.asarray(d_next) == 0.0)


def test_omiga_q_loss_clips_only_the_targets_above_max_target() -> None:
    x = omiga_inputs(6)
    gamma = 0.9
    q_tot, target = numpy_q_tot_and_target(x, gamma)
    bound = float(np.median(target))
    assert (target > bound).any() and (target < bound).any()  # the clip binds on some samples only
    want = np.sum(x["valid"] * (q_tot - np.minimum(target, bound)) ** 2) / x["valid"].sum()
    got = float(omiga_q_loss(**{k: f32(v) for k, v in x.items()}, gamma=gamma, max_target=bound))
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_omiga_q_loss_without_valid_samples_is_zero() -> None:
    x = omiga_inputs(4) | {"valid": np.zeros(B)}
    assert float(omiga_q_loss(**{k: f32(v) for k, v in x.items()}, gamma=0.9)) == 0.0


def test_omiga_v_loss_matches_numpy_with_clipped_exponent() -> None:
    rng = np.random.default_rng(5)
    q, v, w = rng.normal(size=(B, N)), rng.normal(size=(B, N)), np.abs(rng.normal(size=(B, N)))
    alpha = 0.15
    raw = (w * q - w * v) / alpha
    assert np.abs(raw).max() > 10  # the clip binds for some sample
    want = np_exponential_value_loss(np.clip(raw, -10, 10), w * v / alpha)
    got = float(omiga_v_loss(f32(q), f32(v), f32(w), alpha))
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_weighted_bc_loss_matches_numpy_and_holds_weights_constant() -> None:
    rng = np.random.default_rng(6)
    log_probs, z = -np.abs(rng.normal(size=(B, N))), rng.normal(size=(B, N))
    got = float(weighted_bc_loss(f32(log_probs), f32(z)))
    np.testing.assert_allclose(got, -np.mean(np.exp(z) * log_probs), rtol=RTOL)
    d_logp, d_z = jax.grad(weighted_bc_loss, argnums=(0, 1))(f32(log_probs), f32(z))
    np.testing.assert_allclose(np.asarray(d_logp), -np.exp(z) / z.size, rtol=RTOL)
    assert np.all(np.asarray(d_z) == 0.0)


def test_bc_loss_is_the_mean_negative_log_likelihood() -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(B, N, A))
    actions = rng.integers(A, size=(B, N))
    log_probs = np.take_along_axis(log_softmax(logits), actions[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(float(bc_loss(f32(log_probs))), -log_probs.mean(), rtol=RTOL)


# -- InSPO -------------------------------------------------------------------------------


def test_policy_exponent_matches_numpy_and_clips() -> None:
    rng = np.random.default_rng(8)
    q, v = rng.normal(size=(B, N)) * 2, rng.normal(size=(B, N))
    log_mu = np.log(rng.uniform(0.05, 1.0, size=(B, N)))
    alpha, beta = 0.2, 0.1
    tau = alpha + beta
    raw = (q - v) / tau - beta / tau * log_mu
    assert np.abs(raw).max() > 10 and (np.abs(raw) < 10).any()
    got = np.asarray(policy_exponent(f32(q), f32(v), f32(log_mu), alpha, beta))
    np.testing.assert_allclose(got, np.clip(raw, -10, 10), rtol=RTOL, atol=ATOL)


def test_local_value_climbs_from_far_below_where_the_clipped_exponent_would_sink() -> None:
    """Q_i far above V_i (every exponent beyond the clip, as at the start of SMAX runs at
    alpha 0.1): the local value loss still drives V_i up to V* = tau log mean exp(Q/tau).
    On the clipped exponent the same loss has only its linear term left, which pushes V_i
    down for ever (the policy's weights then all sit at exp(10): plain BC)."""
    alpha, beta = 0.1, 0.0
    q = f32([1.5, 2.0, 2.5])
    log_mu = jnp.full(3, np.log(1 / 3), jnp.float32)
    v_star = alpha * np.log(np.mean(np.exp(np.array([1.5, 2.0, 2.5]) / alpha)))

    def clipped_loss(v: jax.Array) -> jax.Array:  # one V for the three samples, as V_i(o)
        vs = jnp.full(3, v)
        return exponential_value_loss(policy_exponent(q, vs, log_mu, alpha, beta), vs / alpha)

    assert float(jax.grad(clipped_loss)(jnp.float32(0.0))) > 0  # descent lowers V: the trap
    optimiser = optax.adam(0.01)
    v = jnp.float32(0.0)
    opt_state = optimiser.init(v)
    grad = jax.jit(jax.grad(lambda v: local_value_loss(q, jnp.full(3, v), log_mu, alpha, beta)))
    for _ in range(1500):
        updates, opt_state = optimiser.update(grad(v), opt_state)
        v = optax.apply_updates(v, updates)
    assert float(v) == pytest.approx(v_star, abs=0.02)


@pytest.mark.parametrize("before", [[0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1]])
def test_teammate_weights_are_clipped_products_of_ratios(before: list[int]) -> None:
    """w = min(prod_{j in before} pi_j/mu_j, max_weight), the ratios multiplied one by one."""
    rng = np.random.default_rng(9)
    log_ratios = rng.normal(size=(5, 3)) * 1.5
    max_weight = 2.5
    want = np.ones(5)
    for j in range(3):
        if before[j]:
            want = want * np.exp(log_ratios[:, j])
    want = np.minimum(want, max_weight)
    got = np.asarray(teammate_weights(f32(log_ratios), jnp.asarray(before, bool), max_weight))
    np.testing.assert_allclose(got, want, rtol=RTOL)
    if sum(before) >= 2:
        assert (want == max_weight).any() and (want < max_weight).any()


# One state, three actions; the "dataset" holds each action in proportion to mu exactly.
MU = np.array([0.5, 0.3, 0.2])
DATA_ACTIONS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
Q = np.array([0.1, 0.35, -0.2])


@pytest.mark.parametrize("alpha,beta", [(0.1, 0.0), (0.1, 0.1), (0.3, 0.2)])
def test_inspo_closed_form_on_a_one_state_game(alpha: float, beta: float) -> None:
    """The weighted-BC fixed point pi ∝ mu exp(policy_exponent) equals
    mu^(alpha/tau) exp(Q/tau) normalised (tau = alpha + beta); the in-sample V loss is
    minimised at the normaliser V* = tau log sum mu^(alpha/tau) exp(Q/tau), where the
    weights are exactly pi*/mu; and weighted BC on the dataset is stationary at pi*."""
    tau = alpha + beta
    closed = MU ** (alpha / tau) * np.exp(Q / tau)
    closed /= closed.sum()
    v_star = tau * np.log(np.sum(MU ** (alpha / tau) * np.exp(Q / tau)))

    def exponent(v: float) -> np.ndarray:
        return np.asarray(policy_exponent(f32(Q), jnp.float32(v), f32(np.log(MU)), alpha, beta), np.float64)

    assert np.abs(exponent(v_star)).max() < 10  # the clip does not bind
    np.testing.assert_allclose(MU * np.exp(exponent(v_star)), closed, rtol=1e-5)
    fixed_point = MU * np.exp(exponent(0.37))  # any V: the fixed point is the normalised weight
    np.testing.assert_allclose(fixed_point / fixed_point.sum(), closed, rtol=1e-5)
    assert np.abs(closed - MU).max() > 0.05  # the update really moves away from BC

    q_d, log_mu_d = f32(Q[DATA_ACTIONS]), f32(np.log(MU[DATA_ACTIONS]))

    def v_loss(v: jax.Array) -> jax.Array:
        return local_value_loss(q_d, jnp.full(q_d.shape, v), log_mu_d, alpha, beta)

    assert abs(float(jax.grad(v_loss)(jnp.float32(v_star)))) < 1e-5
    for v in (v_star - 0.05, v_star + 0.05):
        assert np.sign(float(jax.grad(v_loss)(jnp.float32(v)))) == np.sign(v - v_star)

    weights_d = policy_exponent(q_d, jnp.float32(v_star), log_mu_d, alpha, beta)

    def bc_objective(logits: jax.Array) -> jax.Array:
        return weighted_bc_loss(jax.nn.log_softmax(logits)[DATA_ACTIONS], weights_d)

    at_fixed_point = np.asarray(jax.grad(bc_objective)(f32(np.log(closed))))
    np.testing.assert_allclose(at_fixed_point, 0.0, atol=1e-6)
    assert np.abs(np.asarray(jax.grad(bc_objective)(f32(np.log(MU))))).max() > 1e-2


# -- IQL + CQL ---------------------------------------------------------------------------


def test_iql_cql_loss_matches_numpy_over_available_actions_only() -> None:
    """logsumexp runs over available actions (unavailable ones hold large Q values that
    would dominate it otherwise); the TD part skips the invalid sample."""
    rng = np.random.default_rng(10)
    q = rng.normal(size=(B, N, A))
    avail = np.array([[[1, 1, 0], [0, 1, 1]], [[1, 1, 1], [1, 0, 1]], [[0, 0, 1], [1, 1, 0]]], bool)
    q = np.where(avail, q, 8.0)
    actions = np.array([[0, 2], [1, 0], [2, 1]])
    assert avail[np.arange(B)[:, None], np.arange(N)[None], actions].all()
    target = rng.normal(size=(B, N))
    valid = np.array([1.0, 0.0, 1.0])
    cql_weight = 2.0

    q_taken = np.take_along_axis(q, actions[..., None], axis=-1)[..., 0]
    td = np.sum(valid[:, None] * (q_taken - target) ** 2) / (valid.sum() * N)
    lse = np.array([[np.log(np.sum(np.exp(q[b, i][avail[b, i]]))) for i in range(N)] for b in range(B)])
    cql = np.mean(lse - q_taken)
    total, got_td, got_cql = iql_cql_loss(f32(q), jnp.asarray(avail), jnp.asarray(actions, jnp.int32),
                                          f32(target), f32(valid), cql_weight)
    np.testing.assert_allclose(float(got_td), td, rtol=RTOL)
    np.testing.assert_allclose(float(got_cql), cql, rtol=RTOL)
    np.testing.assert_allclose(float(total), td + cql_weight * cql, rtol=RTOL)


def test_weight_diagnostics_match_numpy_and_the_ess_limits() -> None:
    w = np.random.default_rng(5).exponential(size=(8, 3))
    got = {k: float(v) for k, v in weight_diagnostics("w", f32(w)).items()}
    assert got["w_mean"] == pytest.approx(w.mean(), rel=RTOL) and got["w_std"] == pytest.approx(w.std(), rel=1e-4)
    assert got["w_max"] == pytest.approx(w.max(), rel=RTOL)
    assert got["w_ess_fraction"] == pytest.approx(w.sum() ** 2 / (w.size * (w**2).sum()), rel=1e-4)
    assert float(weight_diagnostics("w", jnp.ones(10))["w_ess_fraction"]) == pytest.approx(1.0)
    one_hot = jnp.zeros(10).at[3].set(5.0)
    assert float(weight_diagnostics("w", one_hot)["w_ess_fraction"]) == pytest.approx(0.1)


# -- MAICQ ---------------------------------------------------------------------------------


def np_batch_softmax(x: np.ndarray, valid: np.ndarray, beta: float) -> np.ndarray:
    """n_valid exp(x / beta) / sum over valid rows, per column; 0 on invalid rows."""
    keep = valid > 0
    e = np.exp((x - x[keep].max(axis=0)) / beta) * keep.reshape((-1,) + (1,) * (x.ndim - 1))
    return keep.sum() * e / e.sum(axis=0)


def test_icq_critic_loss_matches_numpy_with_in_sample_weights_over_valid_rows() -> None:
    """Target r + gamma (1 - d) w Q_tot' with w = n softmax(Q_tot' / beta) over the rows that
    bootstrap (valid, not done); the invalid row is out of the mean too; no gradient into the target."""
    rng = np.random.default_rng(21)
    size, gamma, beta = 6, 0.9, 0.7
    q_tot, reward, next_q = rng.normal(size=size), rng.normal(size=size), rng.normal(size=size) * 2
    done = np.array([0, 1, 0, 0, 0, 1.0])
    valid = np.array([1, 1, 0, 1, 1, 1.0])
    bootstraps = valid * (1 - done)  # done rows' next states belong to other episodes
    w = np_batch_softmax(next_q, bootstraps, beta)
    assert w[2] == 0 and w[1] == 0 and np.isclose(w.sum(), bootstraps.sum()) and w.std() > 0.1
    target = reward + gamma * (1 - done) * w * next_q
    expected = 0.5 * np.sum(valid * (q_tot - target) ** 2) / valid.sum()
    got = icq_critic_loss(f32(q_tot), f32(reward), f32(done), f32(next_q), f32(valid), gamma, beta)
    np.testing.assert_allclose(float(got), expected, rtol=RTOL)
    grad_target = jax.grad(lambda n: icq_critic_loss(f32(q_tot), f32(reward), f32(done), n, f32(valid),
                                                     gamma, beta))(f32(next_q))
    assert not np.any(np.asarray(grad_target))
    # A huge temperature (the released code's 1000) leaves the plain SARSA target.
    flat = icq_critic_loss(f32(q_tot), f32(reward), f32(done), f32(next_q), f32(valid), gamma, 1e6)
    sarsa = reward + gamma * (1 - done) * next_q
    np.testing.assert_allclose(float(flat), 0.5 * np.sum(valid * (q_tot - sarsa) ** 2) / valid.sum(), rtol=1e-4)


def iterate_icq_target(reward: np.ndarray, gamma: float, beta: float, advantage: bool, iterations: int) -> np.ndarray:
    """Q <- the target icq_critic_loss regresses onto, `iterations` times, on states that lead
    to themselves with one action each (all rows valid, none done; V_tot' = Q_tot' with
    advantage weights, 0 without). The target is read off the loss's gradient at Q_tot = 0:
    d loss / d Q_tot = -target / n."""
    ones, zeros = jnp.ones(len(reward)), jnp.zeros(len(reward))

    def target(q: jax.Array) -> jax.Array:
        grad = jax.grad(icq_critic_loss)(zeros, f32(reward), zeros, q, ones, gamma, beta, q if advantage else 0.0)
        return -len(reward) * grad

    return np.asarray(jax.jit(lambda: jax.lax.fori_loop(0, iterations, lambda _, q: target(q), zeros))(), np.float64)


def test_icq_target_with_q_weights_diverges_on_values_in_the_hundreds_and_with_advantage_weights_does_not() -> None:
    """docs/maicq.md: n softmax_batch(Q_tot' / beta) also weighs each next state by its value,
    so at beta_Q = 1000 the best states of a batch whose values span a few hundred (a
    hopper's) get weights above 1/gamma and their targets grow without end. Iterated on 128
    states that lead to themselves (every advantage 0) with rewards 0..3 per step, the
    released form runs away; the advantage form converges to r / (1 - gamma)."""
    gamma, beta = 0.99, 1000.0
    reward = np.linspace(0.0, 3.0, 128)
    released = iterate_icq_target(reward, gamma, beta, advantage=False, iterations=200)
    assert not np.all(np.isfinite(released)) or released.max() > 100 * reward.max() / (1 - gamma)
    np.testing.assert_allclose(iterate_icq_target(reward, gamma, beta, advantage=True, iterations=3000),
                               reward / (1 - gamma), rtol=1e-3, atol=1e-3)
    # On SMAX's scale (rewards a hundred times smaller) the released form stays bounded, but
    # still discounts states below the batch's mean more and those above it less.
    small = reward / 100
    released_small = iterate_icq_target(small, gamma, beta, advantage=False, iterations=3000)
    ratio = released_small[1:] / (small[1:] / (1 - gamma))
    assert 0.7 < ratio.min() < 0.9 and 1.05 < ratio.max() < 1.4, (ratio.min(), ratio.max())


def test_icq_actor_loss_matches_numpy_and_holds_weights_advantages_and_k_constant() -> None:
    rng = np.random.default_rng(22)
    size, beta = 5, 0.1
    logits = rng.normal(size=(size, N, A))
    avail = rng.uniform(size=(size, N, A)) > 0.3
    avail[..., 0] = True
    probs = np.where(avail, np.exp(logits), 0.0)
    probs /= probs.sum(-1, keepdims=True)
    actions = np.zeros((size, N), int)
    q = rng.normal(size=(size, N, A))
    k = np.abs(rng.normal(size=(size, N)))
    log_pi = np.log(np.take_along_axis(probs, actions[..., None], -1)[..., 0])
    advantage = np.take_along_axis(q, actions[..., None], -1)[..., 0] - np.sum(probs * q, -1)
    w = np_batch_softmax(advantage, np.ones(size), beta)
    expected = -np.mean(k * w * log_pi)
    got, weights = icq_actor_loss(f32(log_pi), f32(advantage), f32(k), beta)
    np.testing.assert_allclose(float(got), expected, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(weights), w, rtol=1e-4)
    grads = jax.grad(lambda a_, k_: icq_actor_loss(f32(log_pi), a_, k_, beta)[0],
                     argnums=(0, 1))(f32(advantage), f32(k))
    assert not any(np.any(np.asarray(g)) for g in grads)


def test_maicq_copies_its_targets_every_period_and_not_between() -> None:
    algo = ALGORITHMS["maicq"].build(
        ALGORITHMS["maicq"].config_class(hidden_sizes=(16, 16), target_update_period=3), SPEC)
    update = jax.jit(algo.update)
    state = jax.jit(algo.init)(jax.random.PRNGKey(0))
    for step in range(1, 5):
        previous = state
        state, _ = update(state, random_batch(200 + step), jax.random.PRNGKey(step))
        copied = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.target_q),
                                                          jax.tree.leaves(state.params.q)))
        kept = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.target_q),
                                                        jax.tree.leaves(previous.target_q)))
        assert (copied, kept) == ((True, False) if step == 3 else (False, True)), step


# -- every registered offline algorithm ----------------------------------------------------


def random_batch(seed: int, size: int = 16) -> TransitionBatch:
    """Some actions unavailable; the taken actions always available; a terminal and a cut."""
    rng = np.random.default_rng(seed)
    n, a = SPEC.num_agents, SPEC.num_actions

    def availability() -> np.ndarray:
        avail = rng.uniform(size=(size, n, a)) > 0.4
        np.put_along_axis(avail, rng.integers(a, size=(size, n, 1)), True, axis=-1)
        return avail

    avail = availability()
    actions = np.where(avail, rng.uniform(size=avail.shape), -1.0).argmax(axis=-1)
    assert (~avail).any()
    return TransitionBatch(
        obs=f32(rng.normal(size=(size, n, SPEC.obs_dim))),
        state=f32(rng.normal(size=(size, SPEC.state_dim))),
        avail=jnp.asarray(avail),
        actions=jnp.asarray(actions, jnp.int32),
        reward=f32(rng.normal(size=size)),
        done=f32(np.arange(size) % 5 == 0),
        next_obs=f32(rng.normal(size=(size, n, SPEC.obs_dim))),
        next_state=f32(rng.normal(size=(size, SPEC.state_dim))),
        next_avail=jnp.asarray(availability()),
        next_actions=jnp.asarray(rng.integers(a, size=(size, n)), jnp.int32),
        valid=f32(np.arange(size) % 7 != 3),
    )


def small_config(name: str) -> object:
    """Hidden 16-16; InSPO's policies start moving after 5 updates."""
    config = ALGORITHMS[name].config_class(hidden_sizes=(16, 16))
    if isinstance(config, InSPOConfig):
        config = dataclasses.replace(config, behaviour_warmup=5)
    return config


UPDATES = 6


@functools.cache
def trained(name: str) -> tuple[object, list, list[dict]]:
    """The algorithm, its states after 0..UPDATES updates on fresh random batches, and the
    metrics of each update (one compilation per algorithm, shared by the tests)."""
    algo = ALGORITHMS[name].build(small_config(name), SPEC)
    update = jax.jit(algo.update)
    states, metrics = [jax.jit(algo.init)(jax.random.PRNGKey(0))], []
    for step in range(1, UPDATES + 1):
        state, step_metrics = update(states[-1], random_batch(100 + step), jax.random.PRNGKey(step))
        states.append(state)
        metrics.append({k: float(v) for k, v in step_metrics.items()})
    return algo, states, metrics


def all_leaves_differ(a: object, b: object) -> bool:
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    return bool(pairs) and all(np.any(np.asarray(x) != np.asarray(y)) for x, y in pairs)


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_algorithm_updates_and_acts(name: str) -> None:
    """Updates give finite metrics and new acting parameters; policy_step on them gives
    [B, N, A] logits whose argmax is always an available action."""
    algo, states, metrics = trained(name)
    assert all(m and all(np.isfinite(v) for v in m.values()) for m in metrics), metrics
    assert all_leaves_differ(algo.acting_params(states[0]), algo.acting_params(states[-1]))

    batch = random_batch(11)
    size = batch.obs.shape[0]
    memory = algo.initial_policy_state((size,))
    logits, _ = algo.policy_step(algo.acting_params(states[-1]), memory, batch.obs, batch.avail,
                                 jnp.ones(size, bool))
    assert logits.shape == (size, SPEC.num_agents, SPEC.num_actions)
    greedy = np.asarray(jnp.argmax(logits, axis=-1))
    avail = np.asarray(batch.avail)
    assert avail[np.arange(size)[:, None], np.arange(SPEC.num_agents)[None], greedy].all()
    assert np.isfinite(np.asarray(logits)[avail]).all()


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_config_rejects_a_zero_learning_rate(name: str) -> None:
    config = ALGORITHMS[name].config_class()
    config.validate()
    with pytest.raises(ConfigError, match="lr=0.0 is invalid"):
        dataclasses.replace(config, lr=0.0).validate()


def test_inspo_policies_stay_still_during_the_behaviour_warmup() -> None:
    """behaviour_warmup=5: updates 1-5 leave the policies exactly as initialised while mu
    moves from the first update; update 6 moves every policy parameter."""
    _, states, _ = trained("inspo")
    initial = jax.tree.leaves(states[0].policy)
    for step in range(1, 6):
        assert all(np.array_equal(x, y) for x, y in zip(initial, jax.tree.leaves(states[step].policy))), step
    assert all_leaves_differ(states[0].behaviour, states[1].behaviour)
    assert all_leaves_differ(states[5].policy, states[6].policy)
    assert int(states[6].step) == 6


def test_local_value_values_missing_teammate_mass_at_the_floor_and_self_normalises_above_one() -> None:
    """XOR "02_20" for agent 2 when agent 1 now plays action 0 with probability 0.9 (mu = 0.49/0.51):
    a2 = 1 only appears with a1 = 0 (w = 0.9/0.49 > 1: self-normalised to Q = 1); a2 = 0 only
    with a1 = 1 (w = 0.1/0.51: the missing 0.8 of teammate mass is valued at the floor)."""
    q, floor = 1.0, -2.0
    w = np.array([0.9 / 0.49, 0.1 / 0.51])
    got = np.asarray(local_value(jnp.asarray(w * (q - floor)), jnp.asarray(w), jnp.asarray(floor)))
    expected = np.array([q, floor + w[1] * (q - floor)])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[0] > got[1]


# -- continuous (box) actions: BC and OMIGA --------------------------------------------------

# A box that is neither symmetric nor unit-sized, so the rescaling onto it is exercised.
LOW, HIGH = np.array([-1.0, 0.0]), np.array([1.0, 3.0])
BOX_SPEC = EnvSpec(name="fake_box", num_agents=3, obs_dim=5, state_dim=7, num_actions=0, max_episode_steps=10,
                   has_win=False, action_space=BoxActions(tuple(LOW), tuple(HIGH)))
CONTINUOUS = [name for name in OFFLINE if ALGORITHMS[name].continuous]


def box_batch(seed: int, size: int = 6) -> TransitionBatch:
    """Box actions, masks of width 0, a terminal and a time-limit cut."""
    rng = np.random.default_rng(seed)
    n, d = BOX_SPEC.num_agents, BOX_SPEC.action_space.dim

    def actions() -> np.ndarray:
        return LOW + (HIGH - LOW) * rng.uniform(size=(size, n, d))

    return box_transition_batch(BOX_SPEC, rng, size, actions)



def np_actor_log_prob(params: dict, batch: TransitionBatch) -> np.ndarray:
    """[B, N] log pi(a|o) of the shared tanh-Gaussian actor, by hand from its parameters."""
    outputs = mlp(params["params"], local_inputs(batch.obs))
    mean, log_std = np.split(outputs, 2, axis=-1)
    return tanh_gaussian_log_prob(mean, log_std, np.asarray(batch.actions), LOW, HIGH)


def test_tanh_gaussian_log_prob_matches_numpy_with_clamps_edges_and_box_rescaling() -> None:
    """The head's log-likelihood is the change of variables a = c + h tanh(u): log N(u) -
    sum log(h (1 - tanh^2 u)); log-stds below -5 and above 2 and means beyond +-9 are
    clamped, and actions on the box's edge (pulled 1e-6 inside) stay finite."""
    head = TanhGaussianHead(tuple(LOW), tuple(HIGH))
    mean = np.array([[0.3, -1.2], [12.0, 0.5], [0.0, -0.4]])
    log_std = np.array([[-0.5, 0.2], [-7.0, 3.0], [0.1, -1.0]])
    actions = np.array([[0.2, 2.5], [0.99, 0.4], [-0.9, 1.1]])
    got = np.asarray(head.log_prob(f32(np.concatenate([mean, log_std], axis=-1)), f32(actions)))
    want = tanh_gaussian_log_prob(mean, log_std, actions, LOW, HIGH)
    assert want.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # Without the clamps the second row would differ: they bind.
    unclamped = tanh_gaussian_log_prob(mean, log_std, actions, LOW, HIGH, mean_clip=np.inf,
                                       log_std_range=(-np.inf, np.inf))
    assert abs(unclamped[1] - want[1]) > 1.0
    # Actions on the box's edges: finite. (float32 resolves 1 - 1e-6 only to a few per cent
    # of the gap, hence the looser tolerance.)
    edges = np.stack([LOW, HIGH, [LOW[0], HIGH[1]]])
    at_edges = np.asarray(head.log_prob(f32(np.concatenate([mean, log_std], axis=-1)), f32(edges)))
    assert np.isfinite(at_edges).all()
    np.testing.assert_allclose(at_edges, tanh_gaussian_log_prob(mean, log_std, edges, LOW, HIGH), rtol=0.05)
    # A sample is inside the box; the mode is the rescaled tanh of the (clamped) mean.
    dist = head.distribution(f32(np.concatenate([mean, log_std], axis=-1)))
    assert isinstance(dist, TanhGaussian)
    np.testing.assert_allclose(np.asarray(dist.mode()), (HIGH + LOW) / 2 + (HIGH - LOW) / 2 * np.tanh(
        np.clip(mean, -9, 9)), rtol=1e-5, atol=1e-6)
    samples = np.asarray(dist.sample(jax.random.PRNGKey(0)))
    assert (samples >= LOW).all() and (samples <= HIGH).all()


def test_continuous_bc_loss_is_the_tanh_gaussian_negative_log_likelihood() -> None:
    algo = ALGORITHMS["bc"].build(ALGORITHMS["bc"].config_class(hidden_sizes=(8, 8)), BOX_SPEC)
    state = algo.init(jax.random.PRNGKey(3))
    # Spread the outputs so that means and log-stds differ clearly between agent-steps.
    policy = jax.tree.map(lambda x: 3.0 * x, state.policy)
    batch = box_batch(30)
    want = -np.mean(np_actor_log_prob(policy, batch))
    loss, metrics = algo._loss(policy, batch)
    np.testing.assert_allclose(float(loss), want, rtol=1e-4)
    assert float(metrics["policy_loss"]) == float(loss)
    # One gradient step raises the likelihood of the dataset actions.
    new_state, _ = jax.jit(algo.update)(state._replace(policy=policy, opt_state=algo.optimizer.init(policy)), batch,
                               jax.random.PRNGKey(0))
    assert -np.mean(np_actor_log_prob(new_state.policy, batch)) < want


def test_continuous_bc_with_box_policy_censored_is_the_censored_negative_log_likelihood() -> None:
    """Actions on the box's faces (a third of them here) score the Gaussian's mass beyond the
    face; the means are held within three half-widths of the centre (scipy oracle)."""
    algo = ALGORITHMS["bc"].build(ALGORITHMS["bc"].config_class(hidden_sizes=(8, 8), box_policy="censored"), BOX_SPEC)
    policy = jax.tree.map(lambda x: 3.0 * x, algo.init(jax.random.PRNGKey(3)).policy)
    layers = policy["params"]
    policy = {"params": {**layers, "Dense_0": jax.tree.map(lambda x: 8.0 * x, layers["Dense_0"])}}  # the output layer
    batch = box_batch(32, size=12)
    faces = np.random.default_rng(5).integers(0, 3, size=batch.actions.shape)  # 0 inside, 1 low, 2 high
    actions = np.where(faces == 1, LOW, np.where(faces == 2, HIGH, np.asarray(batch.actions)))
    batch = batch._replace(actions=f32(actions))
    mean, log_std = np.split(mlp(policy["params"], local_inputs(batch.obs)), 2, axis=-1)
    centre, half = (HIGH + LOW) / 2, (HIGH - LOW) / 2
    assert (np.abs(mean - centre) > 3 * half).any() and (np.abs(mean - centre) < 3 * half).any()  # the bound binds
    want = -np.mean(censored_gaussian_log_prob(mean, log_std, actions, LOW, HIGH))
    np.testing.assert_allclose(float(algo._loss(policy, batch)[0]), want, rtol=1e-4)


def test_an_unknown_box_policy_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="box_policy='beta' is invalid: valid choices are tanh, censored"):
        ALGORITHMS["omiga"].config_class(box_policy="beta").validate()


def np_mixer(params: dict, state: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """OMIGA's mixer by hand: w = |Dense_1(relu(Dense_0 s))|, b = Dense_2(relu(Dense_0 s))."""
    p = params["params"]
    hidden = np.maximum(dense(p["Dense_0"], np.asarray(state, np.float64)), 0.0)
    return np.abs(dense(p["Dense_1"], hidden)), dense(p["Dense_2"], hidden)[..., 0]


def np_q(params: dict, obs: jax.Array, actions: jax.Array) -> np.ndarray:
    """The continuous local Q_i(o_i, a_i): an MLP on [o_i, one-hot i, a_i]."""
    inputs = np.concatenate([local_inputs(obs), np.asarray(actions, np.float64)], axis=-1)
    return mlp(params["params"]["MLPValue_0"], inputs)[..., 0]


def np_v(params: dict, obs: jax.Array) -> np.ndarray:
    return mlp(params["params"], local_inputs(obs))[..., 0]


def test_continuous_omiga_losses_match_numpy() -> None:
    """Q_i(o_i, a_i) takes the dataset action as an input; the Q, V and policy losses are
    those of the discrete OMIGA on these values (target networks distinct from the online ones)."""
    config = ALGORITHMS["omiga"].config_class(hidden_sizes=(8, 8), mixer_hidden_size=8, alpha=0.5, gamma=0.9)
    algo = ALGORITHMS["omiga"].build(config, BOX_SPEC)
    state = algo.init(jax.random.PRNGKey(4))
    online = jax.tree.map(lambda x: 2.0 * x, state.critics)  # online and target differ
    target, policy = state.target, jax.tree.map(lambda x: 3.0 * x, state.policy)
    batch = box_batch(31)
    reward, done, valid = (np.asarray(x, np.float64) for x in (batch.reward, batch.done, batch.valid))

    q, q_target = np_q(online.q, batch.obs, batch.actions), np_q(target.q, batch.obs, batch.actions)
    v = np_v(online.v, batch.obs)
    w, b = np_mixer(online.mixer, batch.state)
    w_target, _ = np_mixer(target.mixer, batch.state)
    next_w, next_b = np_mixer(target.mixer, batch.next_state)
    td_target = reward + config.gamma * (1 - done) * (np.sum(next_w * np_v(target.v, batch.next_obs), -1) + next_b)
    want_q = np.sum(valid * (np.sum(w * q, -1) + b - td_target) ** 2) / valid.sum()
    z = np.clip((w_target * q_target - w_target * v) / config.alpha, -10, 10)
    assert np.abs(z).max() > 0.1  # the weights are not all one
    want_v = np_exponential_value_loss(z, w_target * v / config.alpha)
    want_pi = -np.mean(np.exp(z) * np_actor_log_prob(policy, batch))

    got_z = algo._exponent(online.v, target, batch)
    np.testing.assert_allclose(np.asarray(got_z), z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(algo._q_loss((online.q, online.mixer), target, batch)[0]), want_q, rtol=1e-4)
    np.testing.assert_allclose(float(algo._v_loss(online.v, target, batch)[0]), want_v, rtol=1e-4)
    np.testing.assert_allclose(float(algo._policy_loss(policy, batch, got_z)[0]), want_pi, rtol=1e-4)
    # Q depends on the action it is given.
    other = batch._replace(actions=f32(np.broadcast_to((LOW + HIGH) / 2, batch.actions.shape)))
    assert np.abs(np.asarray(algo.q_net(online.q, local_inputs(batch.obs), other.actions))
                  - q).max() > 1e-3


@functools.cache
def trained_box(name: str, box_policy: str = "tanh") -> tuple[object, list, list[dict]]:
    extra = {"behaviour_warmup": 0} if name == "inspo" else {}  # InSPO's policies wait out the warm-up
    algo = ALGORITHMS[name].build(ALGORITHMS[name].config_class(hidden_sizes=(16, 16), box_policy=box_policy,
                                                                **extra), BOX_SPEC)
    update = jax.jit(algo.update)
    states, metrics = [jax.jit(algo.init)(jax.random.PRNGKey(0))], []
    for step in range(1, 4):
        state, step_metrics = update(states[-1], box_batch(100 + step, size=16), jax.random.PRNGKey(step))
        states.append(state)
        metrics.append({k: float(v) for k, v in step_metrics.items()})
    return algo, states, metrics


def test_every_offline_learner_but_iql_cql_learns_from_box_actions() -> None:
    assert CONTINUOUS == ["bc", "omiga", "inspo", "maicq"]
    with pytest.raises(ConfigError, match="'iql_cql' supports discrete actions only, and 'mpe:x' has continuous "
                                          "actions; offline algorithms with continuous support: bc, omiga, inspo, maicq"):
        check_action_support("iql_cql", "mpe:x", True)


@pytest.mark.parametrize("box_policy", ["tanh", "censored"])
@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_offline_algorithm_updates_and_acts_inside_the_box(name: str, box_policy: str) -> None:
    """Finite metrics, new acting parameters; the policy's distribution is the one
    `box_policy` names, on the box, and its samples and greedy actions lie inside it."""
    algo, states, metrics = trained_box(name, box_policy)
    assert all(m and all(np.isfinite(v) for v in m.values()) for m in metrics), metrics
    assert all_leaves_differ(algo.acting_params(states[0]), algo.acting_params(states[-1]))
    batch = box_batch(12, size=16)

    @jax.jit
    def act(params: object) -> tuple:
        dist, _ = algo.action_distribution(params, algo.initial_policy_state((16,)), batch.obs, batch.avail,
                                           jnp.ones(16, bool))
        return dist, dist.mode(), dist.sample(jax.random.PRNGKey(1)), dist.log_prob(batch.actions)

    dist, mode, sample, log_probs = act(algo.acting_params(states[-1]))
    assert isinstance(dist, {"tanh": TanhGaussian, "censored": CensoredGaussian}[box_policy])
    for actions in (np.asarray(mode), np.asarray(sample)):
        assert actions.shape == (16, BOX_SPEC.num_agents, 2)
        assert (actions >= LOW).all() and (actions <= HIGH).all()
    assert np.isfinite(np.asarray(log_probs)).all()
