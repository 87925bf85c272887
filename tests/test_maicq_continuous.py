"""MAICQ with box (continuous) actions: the critic and actor losses against NumPy hand
computations (the sampled baseline recomputed from the same policy noise), the baseline's
small-std limit, and updates on data shaped like mpe:simple_spread_continuous.

MAICQ is built from its class with a BoxActions EnvSpec (the registry's capability flag
is set elsewhere)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import box_transition_batch, dense, local_inputs, mlp, tanh_gaussian_log_prob

from offmarl.algos.maicq import MAICQ, MAICQConfig
from offmarl.envs.base import BoxActions, EnvSpec
from offmarl.networks import with_agent_id
from offmarl.types import TransitionBatch

# A box that is neither symmetric nor unit-sized, so the rescaling onto it is exercised.
LOW, HIGH = np.array([-1.0, 0.0]), np.array([1.0, 3.0])
SPEC = EnvSpec(name="fake_box", num_agents=3, obs_dim=5, state_dim=7, num_actions=0, max_episode_steps=10,
               has_win=False, action_space=BoxActions(tuple(LOW), tuple(HIGH)))
# mpe:simple_spread_continuous: 3 agents, 18-dim observations, the state their concatenation,
# 5-dim actions in [0, 1], 25 steps.
SPREAD = EnvSpec(name="mpe:simple_spread_continuous", num_agents=3, obs_dim=18, state_dim=54, num_actions=0,
                 max_episode_steps=25, has_win=False, action_space=BoxActions((0.0,) * 5, (1.0,) * 5))


def f32(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def box_batch(spec: EnvSpec, seed: int, size: int, faces: bool = True) -> TransitionBatch:
    """Uniform box actions (with `faces`, two exactly on the box's faces), masks of width 0,
    terminals and a time-limit cut."""
    rng = np.random.default_rng(seed)
    n, low, high = spec.num_agents, np.array(spec.action_space.low), np.array(spec.action_space.high)

    def actions() -> np.ndarray:
        a = low + (high - low) * rng.uniform(size=(size, n, len(low)))
        if faces:
            a[0, 0], a[1, -1] = low, high
        return a

    return box_transition_batch(spec, rng, size, actions)


# -- NumPy versions of the networks (float64) -------------------------------------------------



def np_q(params: dict, obs: jax.Array, actions: np.ndarray) -> np.ndarray:
    """Q_i(o_i, a_i): an MLP on [o_i, one-hot i, a_i]; actions [..., B, N, D] -> [..., B, N]."""
    actions = np.asarray(actions, np.float64)
    inputs = np.broadcast_to(local_inputs(obs), actions.shape[:-1] + (obs.shape[-1] + obs.shape[1],))
    return mlp(params["params"]["MLPValue_0"], np.concatenate([inputs, actions], axis=-1))[..., 0]


def np_mixer(params: dict, state: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """k = |Dense_1(relu(Dense_0 s))|, b = Dense_2(relu(Dense_0 s))."""
    p = params["params"]
    hidden = np.maximum(dense(p["Dense_0"], np.asarray(state, np.float64)), 0.0)
    return np.abs(dense(p["Dense_1"], hidden)), dense(p["Dense_2"], hidden)[..., 0]


def np_policy(params: dict, obs: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """The actor's pre-tanh means and log-stds, clamped as the head does ([-9, 9], [-5, 2])."""
    mean, log_std = np.split(mlp(params["params"], local_inputs(obs)), 2, axis=-1)
    return np.clip(mean, -9.0, 9.0), np.clip(log_std, -5.0, 2.0)


def np_batch_softmax(x: np.ndarray, valid: np.ndarray, beta: float) -> np.ndarray:
    """n_valid exp(x / beta) / sum over valid rows, per column; 0 on invalid rows."""
    keep = valid > 0
    e = np.exp((x - x[keep].max(axis=0)) / beta) * keep.reshape((-1,) + (1,) * (x.ndim - 1))
    return keep.sum() * e / e.sum(axis=0)


def np_sampled_v(q_params: object, policy_params: object, obs: np.ndarray, key: jax.Array, num: int) -> np.ndarray:
    """(1/K) sum_k Q_i(o_i, a^k), a^k = c + h tanh(mean + std eps_k), eps_k = normal(split(key, K)[k])."""
    mean, log_std = np_policy(policy_params, obs)
    eps = np.stack([np.asarray(jax.random.normal(k, mean.shape), np.float64) for k in jax.random.split(key, num)])
    samples = (HIGH + LOW) / 2 + (HIGH - LOW) / 2 * np.tanh(mean + np.exp(log_std) * eps)  # [K, B, N, D]
    return np.mean(np_q(q_params, obs, samples), axis=0)


@pytest.mark.parametrize("target_weights,target_baseline", [("advantage", "policy"), ("q", "policy"),
                                                             ("advantage", "data")])
def test_continuous_maicq_losses_match_numpy_with_the_sampled_baseline(target_weights: str,
                                                                       target_baseline: str) -> None:
    """Critic: the discrete ICQ target on Q_i read at the dataset's (next) float actions, its
    weights the batch softmax of Q_tot'(s', a') - V_tot'(s') (V_tot' = sum_i k_i' V_i' + b',
    V_i' the target Q_i's mean over K policy samples at o_i' from the second half of
    split(rng); or, in-sample, an MLP V(s') that a third loss term fits to Q_tot' on the rows
    that bootstrap) or of Q_tot' alone. Actor: A_i = Q_i(o_i, a_i) - (1/K) sum_k Q_i(o_i, a^k)
    with the samples from the first half; no gradient from the actor loss into Q or the mixer."""
    config = MAICQConfig(hidden_sizes=(8, 8), mixer_hidden_size=8, gamma=0.9, advantage_beta=0.5,
                         target_q_beta=2.0, num_action_samples=4, target_weights=target_weights,
                         target_baseline=target_baseline)
    algo = MAICQ(config, SPEC)
    init = jax.jit(algo.init)
    state, other = init(jax.random.PRNGKey(4)), init(jax.random.PRNGKey(5)).params
    # Spread the policy's outputs; online and target critics differ.
    params = state.params._replace(policy=jax.tree.map(lambda x: 3.0 * x, state.params.policy),
                                   q=jax.tree.map(lambda x: 2.0 * x, state.params.q))
    state = state._replace(target_q=other.q, target_mixer=other.mixer)
    # Off the box's faces, where float32 resolves atanh only to a few per cent.
    batch = box_batch(SPEC, 31, size=8, faces=False)
    rng = jax.random.PRNGKey(7)
    reward, done, valid = (np.asarray(x, np.float64) for x in (batch.reward, batch.done, batch.valid))

    q = np_q(params.q, batch.obs, batch.actions)
    k, b = np_mixer(params.mixer, batch.state)
    next_k, next_b = np_mixer(state.target_mixer, batch.next_state)
    next_q_tot = np.sum(next_k * np_q(state.target_q, batch.next_obs, batch.next_actions), -1) + next_b
    rng_actor, rng_target = jax.random.split(rng)
    bootstraps = valid * (1 - done)
    want_value = 0.0
    if target_baseline == "data":
        next_v_tot = mlp(params.state_value["params"], np.asarray(batch.next_state, np.float64))[..., 0]
        want_value = 0.5 * np.sum(bootstraps * (next_v_tot - next_q_tot) ** 2) / bootstraps.sum()
    elif target_weights == "advantage":
        next_v_tot = np.sum(next_k * np_sampled_v(state.target_q, params.policy, batch.next_obs, rng_target,
                                                  config.num_action_samples), -1) + next_b
    else:
        next_v_tot = 0.0
    w_q = np_batch_softmax(next_q_tot - next_v_tot, bootstraps, config.target_q_beta)
    assert w_q.std() > 0.1  # the in-sample weights are not all one
    target = reward + config.gamma * (1 - done) * w_q * next_q_tot
    want_critic = 0.5 * np.sum(valid * (np.sum(k * q, -1) + b - target) ** 2) / valid.sum()

    mean, log_std = np_policy(params.policy, batch.obs)
    advantage = q - np_sampled_v(params.q, params.policy, batch.obs, rng_actor, config.num_action_samples)
    w_a = np_batch_softmax(advantage, np.ones(len(q)), config.advantage_beta)
    assert w_a.std() > 0.1
    log_pi = tanh_gaussian_log_prob(mean, log_std, np.asarray(batch.actions), LOW, HIGH)
    want_actor = -np.mean(k * w_a * log_pi)

    @jax.jit
    def actor_grads_and_loss(p: object, key: jax.Array) -> tuple:
        """(d policy_loss / d params, (total loss, metrics))."""
        return jax.grad(lambda q: (lambda out: (out[1]["policy_loss"], out))(algo._loss(q, state, batch, key)),
                        has_aux=True)(p)

    grads, (total, metrics) = actor_grads_and_loss(params, rng)
    np.testing.assert_allclose(float(metrics["q_loss"]), want_critic, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["policy_loss"]), want_actor, rtol=1e-4)
    np.testing.assert_allclose(float(total), want_critic + want_actor + want_value, rtol=1e-4)
    if target_baseline == "data":
        np.testing.assert_allclose(float(metrics["value_loss"]), want_value, rtol=1e-4)
        assert want_value > 10 * 1e-4 * abs(want_critic + want_actor)  # the total's check sees the value term
    np.testing.assert_allclose(float(metrics["weight_mean"]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["weight_max"]), w_a.max(), rtol=1e-4)
    # Other samples, another baseline: the actor loss moves; the critic's only through V_tot'.
    _, (_, other_metrics) = actor_grads_and_loss(params, jax.random.PRNGKey(8))
    policy_free_target = target_weights == "q" or target_baseline == "data"
    assert (float(other_metrics["q_loss"]) == float(metrics["q_loss"])) == policy_free_target
    assert abs(float(other_metrics["policy_loss"]) - want_actor) > 1e-4
    # The actor loss trains the policy only.
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves((grads.q, grads.mixer, grads.state_value)))
    assert all(np.any(np.asarray(g)) for g in jax.tree.leaves(grads.policy))


def test_sampled_baseline_approaches_q_at_the_greedy_action_as_the_std_shrinks() -> None:
    """With every log-std at the clamp -5 (std 0.0067) the K-sample baseline is Q_i at the
    rescaled tanh(mean), up to the samples' spread; with log-std 0 it is not."""
    algo = MAICQ(MAICQConfig(hidden_sizes=(16, 16), num_action_samples=10), SPEC)
    params = jax.jit(algo.init)(jax.random.PRNGKey(1)).params
    q_params = jax.tree.map(lambda x: 3.0 * x, params.q)  # a Q that bends over the box
    batch = box_batch(SPEC, 3, size=32)
    inputs = with_agent_id(batch.obs)
    d = len(LOW)

    @jax.jit
    def gap_and_spread(log_std: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(max |V_i - Q_i(o_i, mode)| over the batch for a policy whose log-std outputs are all
        `log_std`, those outputs, the std of Q_i at the dataset actions)."""
        head = params.policy["params"]["Dense_0"]
        head = {"kernel": head["kernel"].at[:, d:].set(0.0), "bias": head["bias"].at[d:].set(log_std)}
        policy = {"params": {**params.policy["params"], "Dense_0": head}}
        dist = algo.head.distribution(algo.logits(policy, batch.obs, batch.avail))
        baseline = algo.baseline(algo.q_net, q_params, inputs, dist, jax.random.PRNGKey(2))
        largest = jnp.max(jnp.abs(baseline - algo.q_net(q_params, inputs, dist.mode())))
        return largest, dist.log_std, jnp.std(algo.q_net(q_params, inputs, batch.actions))

    def gap(log_std: float) -> float:
        value, outputs, _ = gap_and_spread(jnp.float32(log_std))
        assert np.allclose(np.asarray(outputs), log_std)
        return float(value)

    spread = float(gap_and_spread(jnp.float32(0.0))[2])
    narrow, wide = gap(-5.0), gap(0.0)
    assert narrow < 0.01 * spread, (narrow, spread)
    assert wide > 0.1 * spread, (wide, spread)
    assert gap(-10.0) == narrow  # below the clamp nothing changes


def test_update_on_simple_spread_continuous_shaped_data_is_finite_moves_and_is_deterministic() -> None:
    algo = MAICQ(MAICQConfig(hidden_sizes=(32, 32), mixer_hidden_size=16), SPREAD)
    update = jax.jit(algo.update)
    batches = [box_batch(SPREAD, 40 + i, size=32) for i in range(2)]
    initial = jax.jit(algo.init)(jax.random.PRNGKey(0))

    def run(seed: int) -> tuple[object, list[dict]]:
        state, metrics = initial, []
        for i, batch in enumerate(batches):
            state, m = update(state, batch, jax.random.fold_in(jax.random.PRNGKey(seed), i))
            metrics.append({key: float(v) for key, v in m.items()})
        return state, metrics

    state, metrics = run(0)
    assert {"q_loss", "policy_loss", "q_tot", "weight_mean", "weight_ess_fraction"} <= set(metrics[0])
    assert all(np.isfinite(v) for m in metrics for v in m.values()), metrics
    pairs = list(zip(jax.tree.leaves(initial.params), jax.tree.leaves(state.params), strict=True))
    assert all(np.any(np.asarray(a) != np.asarray(b)) for a, b in pairs)
    again_state, again_metrics = run(0)
    assert again_metrics == metrics
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again_state)))
    # The seed only drives the baselines' samples (the actor's, and V_tot' in the critic's
    # target weights, which at beta_Q = 1000 move the critic loss by little): another seed
    # moves the policy differently.
    other_state, other_metrics = run(1)
    assert other_metrics[0]["q_loss"] == pytest.approx(metrics[0]["q_loss"], rel=1e-3)
    assert any(np.any(np.asarray(a) != np.asarray(b))
               for a, b in zip(jax.tree.leaves(state.params.policy), jax.tree.leaves(other_state.params.policy)))
