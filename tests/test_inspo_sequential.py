"""InSPO's teammate importance weights inside one `update` (docs/inspo.md, "Sequential
updates with importance resampling"), recomputed by hand in float64 NumPy.

The update draws the order of the agents from its rng; agent i_m's weight is
w_{<m} = min(prod_{j<m} pi_new^{i_j}(a^{i_j}|o^{i_j}) / mu^{i_j}(a^{i_j}|o^{i_j}), max_importance_weight)
with the teammates' policies *after* their own step of this update and mu after its
behaviour-cloning step; the ablation (sequential=False) gives every agent the product over
all its teammates of the ratios from before the update. The weights are not returned:
they are the regression targets of the local critic, so they are checked through what
the update reports and does with them (the local critic's loss, the weight diagnostics,
and the critics' optimiser step on the library's loss fed with the by-hand weights). Each
agent's own step (weighted BC with exp(exponent), from its parameters only) is checked
first, since the sequential weights are read from its result."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import local_inputs, log_softmax, mlp
from test_offline_losses import SPEC, random_batch
from test_offline_update_order import expected_step, f32, f64, leaves_close, np_value, warm_opt_state

from offmarl.algos import ALGORITHMS
from offmarl.algos.inspo import InSPOState
from offmarl.types import TransitionBatch

RNG = jax.random.PRNGKey(1)  # the order it draws, [2, 0, 1], is neither 0, 1, 2 nor its reverse
MAX_WEIGHT = 2.0  # binds on some samples and not on others
RTOL, ATOL = 1e-4, 1e-5


def take(values: np.ndarray, actions: Any) -> np.ndarray:
    """values[..., a] at the dataset actions: [B, N, A] x [B, N] -> [B, N]."""
    return np.take_along_axis(values, np.asarray(actions)[..., None], axis=-1)[..., 0]


def masked_log_probs(logits: np.ndarray, batch: TransitionBatch) -> np.ndarray:
    """[B, N] log-softmax over the available actions, at the dataset actions."""
    return take(log_softmax(np.where(np.asarray(batch.avail), logits, -np.inf)), batch.actions)


def np_agents_log_pi(policy: Any, batch: TransitionBatch) -> np.ndarray:
    """[B, N] log pi_i(a_i|o_i), agent i by its own parameters (stacked on axis 0), no agent id."""
    n = batch.obs.shape[1]
    logits = np.stack([mlp(jax.tree.map(lambda x: x[i], policy)["params"], f64(batch.obs[:, i])) for i in range(n)],
                      axis=1)
    return masked_log_probs(logits, batch)


def np_weights_sequential(log_ratio_new: np.ndarray, order: np.ndarray, max_weight: float) -> np.ndarray:
    """[B, N]: agent order[m] gets min(prod_{k<m} ratio of order[k], max_weight), ratios multiplied one by one."""
    weights = np.ones_like(log_ratio_new)
    for m, agent in enumerate(order):
        product = np.ones(len(log_ratio_new))
        for teammate in order[:m]:
            product = product * np.exp(log_ratio_new[:, teammate])
        weights[:, agent] = np.minimum(product, max_weight)
    return weights


def np_weights_simultaneous(log_ratio_old: np.ndarray, max_weight: float) -> np.ndarray:
    """[B, N]: agent i gets min(prod_{j != i} old ratio of j, max_weight)."""
    n = log_ratio_old.shape[1]
    weights = np.ones_like(log_ratio_old)
    for agent in range(n):
        product = np.ones(len(log_ratio_old))
        for teammate in range(n):
            if teammate != agent:
                product = product * np.exp(log_ratio_old[:, teammate])
        weights[:, agent] = np.minimum(product, max_weight)
    return weights


def inspo_case(sequential: bool) -> tuple[Any, InSPOState, TransitionBatch]:
    """InSPO (policies moving from the first update) whose policies and mu are far from
    uniform and from each other, online and target critics apart, warm optimiser states."""
    config = ALGORITHMS["inspo"].config_class(hidden_sizes=(8, 8), alpha=0.5, beta=0.1, gamma=0.9, lr=0.05,
                                              behaviour_warmup=0, max_importance_weight=MAX_WEIGHT,
                                              sequential=sequential)
    algo = ALGORITHMS["inspo"].build(config, SPEC)
    init = jax.jit(algo.init)
    state, other = init(jax.random.PRNGKey(0)), init(jax.random.PRNGKey(2))

    def spread(params: Any, scale: float) -> Any:  # the actors' output layers start at a 0.01 scale
        layers = params["params"]
        return {"params": {**layers, "Dense_0": jax.tree.map(lambda x: scale * x, layers["Dense_0"])}}

    policy = spread(state.policy, 150.0)
    behaviour = spread(other.behaviour, 150.0)
    opt = algo.optimizer
    policy_opt = jax.vmap(lambda p, g: opt.update(g, opt.init(p), p)[1])(
        policy, jax.tree.map(lambda x: 0.3 * jax.random.normal(jax.random.PRNGKey(3), x.shape), policy))
    state = state._replace(policy=policy, policy_opt=policy_opt, behaviour=behaviour,
                           target=(other.critics.q_joint, other.critics.v_joint),
                           critic_opt=warm_opt_state(opt, state.critics, 4), value_floor=jnp.float32(-0.5))
    return algo, state, random_batch(43, size=16)


@pytest.mark.parametrize("sequential", [True, False], ids=["sequential", "simultaneous"])
def test_teammate_weights_used_by_the_update_match_numpy(sequential: bool) -> None:
    algo, state, batch = inspo_case(sequential)
    cfg, n = algo.config, SPEC.num_agents
    temperature = cfg.alpha + cfg.beta
    new, metrics = jax.jit(algo.update)(state, batch, RNG)
    order = np.asarray(jax.random.permutation(RNG, n))  # as the update draws it
    assert list(order) == [2, 0, 1]

    # mu after its behaviour-cloning step; the policies before and after the update.
    log_mu = masked_log_probs(mlp(new.behaviour["params"], local_inputs(batch.obs)), batch)
    log_ratio_old = np_agents_log_pi(state.policy, batch) - log_mu
    log_ratio_new = np_agents_log_pi(new.policy, batch) - log_mu

    # (1) Each agent's own step: weighted BC with exp(exponent) of the critics before the
    # update, from its own parameters and Adam state only.
    out = mlp(state.critics.q_local["params"], local_inputs(batch.obs))
    a = SPEC.num_actions
    advantage, mean_weight = take(out[..., :a], batch.actions), take(out[..., a:], batch.actions)
    q_local = f64(state.value_floor) + advantage / np.maximum(mean_weight, 1.0)
    v_local = np_value(state.critics.v_local, local_inputs(batch.obs))
    exponent = np.clip((q_local - v_local) / temperature - cfg.beta / temperature * log_mu, -10, 10)
    assert np.abs(exponent).max() > 0.1
    agent_step = jax.jit(lambda params, opt_state, agent, w: expected_step(
        algo.optimizer, params, opt_state, lambda p: algo._agent_policy_loss(p, agent, batch, w)[0]))
    for agent in range(n):
        params, opt_state = (jax.tree.map(lambda x: x[agent], tree) for tree in (state.policy, state.policy_opt))
        want = agent_step(params, opt_state, jnp.int32(agent), f32(np.exp(exponent[:, agent])))
        got = tuple(jax.tree.map(lambda x: x[agent], tree) for tree in (new.policy, new.policy_opt))
        leaves_close(got, want)

    # (2) The teammates' weights by hand, both schemes, and the alternatives a bug would give.
    sequential_weights = np_weights_sequential(log_ratio_new, order, MAX_WEIGHT)
    simultaneous_weights = np_weights_simultaneous(log_ratio_old, MAX_WEIGHT)
    stale_sequential = np_weights_sequential(log_ratio_old, order, MAX_WEIGHT)  # teammates not yet updated
    weights = sequential_weights if sequential else simultaneous_weights
    other_weights = simultaneous_weights if sequential else sequential_weights
    assert np.all(sequential_weights[:, order[0]] == 1.0)  # the first agent has no updated teammate
    assert np.abs(sequential_weights - simultaneous_weights).max() > 0.3
    assert np.abs(sequential_weights - stale_sequential).max() > 0.1
    assert (weights == MAX_WEIGHT).any() and ((weights < MAX_WEIGHT) & (weights != 1.0)).any()

    # (3) What the update reports of the weights it used.
    np.testing.assert_allclose(float(metrics["teammate_weight_mean"]), weights.mean(), rtol=RTOL)
    np.testing.assert_allclose(float(metrics["teammate_weight_max"]), weights.max(), rtol=RTOL)
    np.testing.assert_allclose(float(metrics["teammate_weight_std"]), weights.std(), rtol=1e-3)

    # (4) The local critic's loss at the critics before the step: regressions onto
    # w (Q^targ - L) and w, with the floor L lowered to the batch's least target Q.
    one_hot = np.eye(a)[np.asarray(batch.actions)].reshape(len(batch.reward), -1)
    joint_in = np.concatenate([f64(batch.state), one_hot], axis=-1)
    q_target = np_value(state.target[0], joint_in)
    floor = min(float(state.value_floor), q_target.min())

    def local_loss(w: np.ndarray) -> float:
        return float(np.mean((advantage - w * (q_target[:, None] - floor)) ** 2) + np.mean((mean_weight - w) ** 2))

    np.testing.assert_allclose(float(metrics["q_local_loss"]), local_loss(weights), rtol=RTOL)
    assert abs(local_loss(other_weights) - local_loss(weights)) > 100 * RTOL * local_loss(weights)

    # (5) The critics' step is one optimiser step on the library's critic loss with these weights.
    want_critics = expected_step(algo.optimizer, state.critics, state.critic_opt, lambda c: algo._critic_loss(
        c, state.target, batch, f32(joint_in), f32(q_target), f32(log_mu), f32(weights), jnp.float32(floor))[0])
    leaves_close((new.critics, new.critic_opt), want_critics)
