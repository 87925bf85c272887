"""Tests of the MA-Trace loss (`offmarl.algos.matrace.MATrace.loss`) against a NumPy recomputation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import log_softmax, vtrace_oracle

from offmarl.algos.matrace import MATrace, MATraceConfig
from offmarl.envs.base import EnvSpec
from offmarl.errors import ConfigError
from offmarl.networks import MLPPolicy, MLPValue
from offmarl.types import Rollout

SPEC = EnvSpec(
    name="handmade",
    num_agents=3,
    obs_dim=4,
    state_dim=6,
    num_actions=5,
    max_episode_steps=20,
    has_win=False,
)
T, B = 6, 4
RTOL, ATOL = 2e-5, 1e-6
METRICS = [
    "loss",
    "policy_loss",
    "value_loss",
    "entropy",
    "entropy_cost",
    "target_entropy",
    "rho_mean",
    "rho_clipped_fraction",
    "rho_ess",
    "entropy_per_agent",
    "behaviour_kl",
    "behaviour_kl_cost",
    "value_mean",
]


def make_config(critic: str = "obs", **overrides: object) -> MATraceConfig:
    """A small config whose clips all bind on the random rollouts below."""
    fields: dict[str, object] = dict(
        gamma=0.9,
        rho_bar=1.0,
        c_bar=0.8,
        pg_rho_bar=1.2,
        lambda_=0.95,
        critic=critic,
        baseline_cost=0.7,
        entropy_mode="fixed",
        entropy_cost=0.05,
        hidden_sizes=(16, 16),
        behaviour_kl_cost=0.0,
        behaviour_kl_target=0.0,
        normalize_observations=False,  # make_params fills every leaf at random: no valid moments
    )
    fields.update(overrides)
    return MATraceConfig(**fields)  # type: ignore[arg-type]


def make_rollout(seed: int, spec: EnvSpec = SPEC) -> Rollout:
    """A random rollout: some actions unavailable, behaviour actions always available, some dones."""
    rng = np.random.default_rng(seed)
    n, a = spec.num_agents, spec.num_actions
    avail = rng.uniform(size=(T + 1, B, n, a)) > 0.4
    forced = rng.integers(a, size=(T + 1, B, n, 1))
    np.put_along_axis(avail, forced, True, axis=-1)  # at least one available action per agent
    # Behaviour actions: a uniformly random available action.
    scores = np.where(avail[:-1], rng.uniform(size=(T, B, n, a)), -1.0)
    actions = scores.argmax(axis=-1).astype(np.int32)
    dones = rng.uniform(size=(T, B)) < 0.2
    dones[2, 0] = True
    assert (~avail).any() and avail.any(axis=-1).all()
    return Rollout(
        obs=jnp.asarray(rng.normal(size=(T + 1, B, n, spec.obs_dim)), jnp.float32),
        state=jnp.asarray(rng.normal(size=(T + 1, B, spec.state_dim)), jnp.float32),
        avail=jnp.asarray(avail),
        starts=jnp.asarray(np.concatenate([np.ones((1, B), bool), dones[:-1]])),
        policy_state=jnp.zeros((T, B, n, 0)),
        actions=jnp.asarray(actions),
        behaviour_log_probs=jnp.asarray(rng.uniform(-2.5, -0.2, size=(T, B, n)), jnp.float32),
        rewards=jnp.asarray(rng.normal(size=(T, B)), jnp.float32),
        dones=jnp.asarray(dones),
    )


def make_params(algo: MATrace, seed: int) -> dict:
    """Random params with the structure `algo.init` returns (found by eval_shape, to skip the slow
    orthogonal initialisers); weights are scaled so the policy is far from uniform.

    entropy_param is set as `init` documents: exp(10 p) equals the config's entropy_cost.
    """
    rng = np.random.default_rng(seed)

    def fill(leaf: jax.ShapeDtypeStruct) -> jax.Array:
        if len(leaf.shape) == 2:  # Dense kernel [fan_in, fan_out]
            value = 1.5 * rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])
        else:
            value = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    params = jax.tree.map(fill, jax.eval_shape(algo.init, jax.random.PRNGKey(0)))
    params["entropy_param"] = jnp.asarray(np.log(algo.config.entropy_cost) / 10.0, jnp.float32)
    return params


def hand_loss(algo: MATrace, params: dict, rollout: Rollout) -> dict[str, float]:
    """The MA-Trace loss and metrics recomputed in float64 NumPy from the networks' outputs."""
    cfg = algo.config
    logits = np.asarray(algo.unroll_logits(params, rollout), np.float64)
    values = np.asarray(algo.values(params, rollout.obs, rollout.state), np.float64)
    log_pi = log_softmax(logits)  # [T, B, N, A]
    probs = np.exp(log_pi)
    entropy = -np.sum(np.where(probs > 0, probs * log_pi, 0.0), axis=-1)  # [T, B, N]
    actions = np.asarray(rollout.actions)
    log_pi_a = np.take_along_axis(log_pi, actions[..., None], axis=-1)[..., 0]  # [T, B, N]
    agent_log_rhos = log_pi_a - np.asarray(rollout.behaviour_log_probs, np.float64)
    if not cfg.importance_weights:
        agent_log_rhos = np.zeros_like(agent_log_rhos)
    discounts = cfg.gamma * (1.0 - np.asarray(rollout.dones, np.float64))
    rewards = np.asarray(rollout.rewards, np.float64)
    clips = dict(rho_bar=cfg.rho_bar, c_bar=cfg.c_bar, pg_rho_bar=cfg.pg_rho_bar, lambda_=cfg.lambda_)
    n = algo.spec.num_agents
    if cfg.critic == "decentralised":
        # One V-trace per (env, agent) column, each with the agent's own ratio and value.
        assert values.shape == (T + 1, B, n)
        log_rhos = agent_log_rhos
        vs, pg = vtrace_oracle(
            agent_log_rhos.reshape(T, B * n),
            np.repeat(discounts[..., None], n, axis=-1).reshape(T, B * n),
            np.repeat(rewards[..., None], n, axis=-1).reshape(T, B * n),
            values[:-1].reshape(T, B * n),
            values[-1].reshape(B * n),
            **clips,
        )
        vs, pg = vs.reshape(T, B, n), pg.reshape(T, B, n)
        if cfg.normalize_advantages:
            pg = (pg - pg.mean()) / (pg.std() + 1e-8)
        policy_loss = -np.mean(np.sum(log_pi_a * pg, axis=-1))
    else:
        assert values.shape == (T + 1, B)
        log_rhos = agent_log_rhos.sum(axis=-1)  # joint ratio = product of the agents' ratios
        vs, pg = vtrace_oracle(log_rhos, discounts, rewards, values[:-1], values[-1], **clips)
        if cfg.pg_ratio == "per_agent":  # agent i's TD clipped by its own ratio, not the product
            team_td = rewards + discounts * np.concatenate([vs[1:], values[-1:]]) - values[:-1]
            pg = np.minimum(cfg.pg_rho_bar, np.exp(agent_log_rhos)) * team_td[..., None]
        else:
            pg = np.repeat(pg[..., None], n, axis=-1)
        if cfg.normalize_advantages:
            pg = (pg - pg.mean()) / (pg.std() + 1e-8)
        policy_loss = -np.mean(np.sum(log_pi_a * pg, axis=-1))
    value_loss = cfg.baseline_cost * 0.5 * np.mean((vs - values[:-1]) ** 2)
    mean_entropy = np.mean(entropy.sum(axis=-1))
    entropy_loss = -cfg.entropy_cost * mean_entropy
    log_ratio = np.clip(log_pi_a - np.asarray(rollout.behaviour_log_probs, np.float64), -20, 20)
    behaviour_kl = np.mean(np.sum(np.exp(log_ratio) - 1 - log_ratio, axis=-1))
    rhos = np.exp(log_rhos)
    return {
        "loss": policy_loss + value_loss + entropy_loss + cfg.behaviour_kl_cost * behaviour_kl,
        "behaviour_kl": behaviour_kl,
        "behaviour_kl_cost": cfg.behaviour_kl_cost,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": mean_entropy,
        "entropy_cost": cfg.entropy_cost,
        "target_entropy": cfg.target_entropy,  # progress 0: the schedule's start
        "rho_mean": np.mean(rhos),
        "rho_clipped_fraction": np.mean(rhos > cfg.rho_bar),
        "rho_ess": np.sum(rhos) ** 2 / (rhos.size * np.sum(rhos**2)),
        "entropy_per_agent": mean_entropy / n,
        "value_mean": np.mean(values),
        "vs": vs,
        "pg": pg,
    }


def assert_metrics_match(total: jax.Array, metrics: dict, expected: dict[str, float]) -> None:
    """Compare the loss and every reported metric with the hand computation."""
    assert sorted(metrics) == sorted(METRICS)
    np.testing.assert_allclose(float(total), expected["loss"], rtol=RTOL, atol=ATOL)
    for name in METRICS:
        np.testing.assert_allclose(
            float(metrics[name]), expected[name], rtol=RTOL, atol=ATOL, err_msg=name
        )


SETTINGS = [
    {},
    dict(rho_bar=2.0, c_bar=1.5, pg_rho_bar=0.7, lambda_=1.0, gamma=0.99, agent_id=True),
    dict(pg_ratio="per_agent", behaviour_kl_cost=0.3, pg_rho_bar=0.7),
]


@pytest.mark.parametrize("overrides", SETTINGS, ids=["paper-clips", "loose-clips-agent-id", "per-agent-kl"])
@pytest.mark.parametrize("critic", ["obs", "state", "decentralised"])
def test_loss_matches_hand_computation(critic: str, overrides: dict) -> None:
    """Total loss and every metric equal the NumPy recomputation for each critic."""
    if critic == "decentralised":  # its V-trace already clips each agent's own ratio
        overrides = {k: v for k, v in overrides.items() if k != "pg_ratio"}
    algo = MATrace(make_config(critic, **overrides), SPEC)
    params = make_params(algo, seed=1)
    rollout = make_rollout(seed=2)
    expected = hand_loss(algo, params, rollout)
    # The rollout must exercise clipping both ways and a non-trivial loss.
    assert 0.0 < expected["rho_clipped_fraction"] < 1.0
    assert abs(expected["policy_loss"]) > 1e-3 and expected["value_loss"] > 1e-3
    total, metrics = algo.loss(params, rollout)
    assert_metrics_match(total, metrics, expected)


def test_normalized_advantages_match_hand_computation() -> None:
    """normalize_advantages standardises the pg advantages within the minibatch."""
    algo = MATrace(make_config("obs", normalize_advantages=True), SPEC)
    params = make_params(algo, seed=3)
    rollout = make_rollout(seed=4)
    total, metrics = algo.loss(params, rollout)
    expected = hand_loss(algo, params, rollout)
    assert_metrics_match(total, metrics, expected)
    plain = MATrace(make_config("obs"), SPEC).loss(params, rollout)[1]["policy_loss"]
    assert abs(float(plain) - float(metrics["policy_loss"])) > 1e-3


@pytest.mark.parametrize(("critic", "pg_ratio"), [("obs", "joint"), ("obs", "per_agent"), ("decentralised", "joint")])
def test_gradients_hold_targets_constant(critic: str, pg_ratio: str) -> None:
    """Loss gradients equal those of the hand surrogate with vs and pg advantages as constants.

    This fails if gradient leaks through the ratios or V-trace targets.
    """
    algo = MATrace(make_config(critic, pg_ratio=pg_ratio), SPEC)
    params = make_params(algo, seed=5)
    rollout = make_rollout(seed=6)
    expected = hand_loss(algo, params, rollout)
    vs = jnp.asarray(expected["vs"], jnp.float32)
    pg = jnp.asarray(expected["pg"], jnp.float32)
    cfg = algo.config

    def surrogate(p: dict) -> jax.Array:
        log_pi = jax.nn.log_softmax(algo.unroll_logits(p, rollout))
        log_pi_a = jnp.take_along_axis(log_pi, rollout.actions[..., None], axis=-1)[..., 0]
        entropy = -jnp.sum(jnp.exp(log_pi) * log_pi, axis=-1).sum(axis=-1)
        values = algo.values(p, rollout.obs, rollout.state)[:-1]
        policy_loss = -jnp.mean(jnp.sum(log_pi_a * pg, axis=-1))
        value_loss = cfg.baseline_cost * 0.5 * jnp.mean((vs - values) ** 2)
        return policy_loss + value_loss - cfg.entropy_cost * jnp.mean(entropy)

    grads = jax.grad(lambda p: algo.loss(p, rollout)[0])(params)
    expected_grads = jax.grad(surrogate)(params)
    flat, _ = jax.tree.flatten(grads)
    flat_expected, _ = jax.tree.flatten(expected_grads)
    assert len(flat) == len(flat_expected)
    for g, e in zip(flat, flat_expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-6)
    assert max(float(jnp.abs(g).max()) for g in flat) > 1e-3


def test_network_inputs_per_critic() -> None:
    """policy_step / values feed the documented inputs to the actor and critic MLPs."""
    rollout = make_rollout(seed=7)
    hidden = (16, 16)
    obs, state, avail = rollout.obs, rollout.state, rollout.avail
    for critic in ["obs", "state", "decentralised"]:
        algo = MATrace(make_config(critic), SPEC)
        params = make_params(algo, seed=8)
        got = np.asarray(algo.values(params, obs, state))
        critic_net = MLPValue(hidden)
        if critic == "obs":
            # Agents' observations concatenated in agent order.
            want = critic_net.apply(params["critic"], obs.reshape(T + 1, B, -1))
        elif critic == "state":
            want = critic_net.apply(params["critic"], state)
        else:
            want = critic_net.apply(params["critic"], obs)  # V_i(o_i), [T+1, B, N]
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6, atol=1e-6)
    raw = MLPPolicy(hidden, SPEC.num_actions).apply(params["actor"], obs)
    memory = algo.initial_policy_state(obs.shape[:-2])
    logits = np.asarray(algo.policy_step(params, memory, obs, avail, np.ones(obs.shape[:-2], bool))[0])
    np.testing.assert_allclose(logits[np.asarray(avail)], np.asarray(raw)[np.asarray(avail)], rtol=1e-6)
    assert (logits[~np.asarray(avail)] <= -1e8).all()


def test_decentralised_value_depends_only_on_own_observation() -> None:
    """In the decentralised critic, changing agent 0's observation changes V_0 only."""
    algo = MATrace(make_config("decentralised"), SPEC)
    params = make_params(algo, seed=9)
    rollout = make_rollout(seed=10)
    v0 = np.asarray(algo.values(params, rollout.obs, rollout.state))
    v1 = np.asarray(algo.values(params, rollout.obs.at[..., 0, :].add(1.0), rollout.state + 1.0))
    assert np.abs(v1[..., 0] - v0[..., 0]).min() > 0.0
    np.testing.assert_array_equal(v1[..., 1:], v0[..., 1:])


@pytest.mark.parametrize("critic", ["obs", "decentralised"])
def test_importance_weights_off_sets_ratios_to_one(critic: str) -> None:
    """importance_weights=False: rho_mean == 1 and the loss is the hand loss with log_rhos = 0."""
    algo = MATrace(make_config(critic, importance_weights=False), SPEC)
    params = make_params(algo, seed=11)
    rollout = make_rollout(seed=12)
    total, metrics = algo.loss(params, rollout)
    assert float(metrics["rho_mean"]) == 1.0
    assert float(metrics["rho_clipped_fraction"]) == 0.0
    expected = hand_loss(algo, params, rollout)  # uses zero log-ratios for this config
    assert_metrics_match(total, metrics, expected)
    # Same inputs with ratios on give a different loss: the flag really changes something.
    weighted = MATrace(dataclasses.replace(algo.config, importance_weights=True), SPEC)
    total_weighted, metrics_weighted = weighted.loss(params, rollout)
    assert abs(float(metrics_weighted["rho_mean"]) - 1.0) > 1e-2
    assert abs(float(total_weighted) - float(total)) > 1e-4


def test_unavailable_actions_have_zero_probability() -> None:
    """Masked actions get zero probability; the loss and its gradients stay finite."""
    algo = MATrace(make_config("state"), SPEC)
    params = make_params(algo, seed=13)
    rollout = make_rollout(seed=14)
    logits = algo.unroll_logits(params, rollout)
    probs = np.asarray(jax.nn.softmax(logits))
    unavailable = ~np.asarray(rollout.avail[:-1])
    assert unavailable.sum() > 10
    assert probs[unavailable].max() < 1e-30
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-6)
    total, metrics = algo.loss(params, rollout)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    grads = jax.grad(lambda p: algo.loss(p, rollout)[0])(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    # Entropy is over the available actions only: bounded by log(#available) per agent.
    n_avail = np.asarray(rollout.avail[:-1]).sum(axis=-1)
    bound = np.mean(np.log(n_avail).sum(axis=-1))
    assert 0.0 < float(metrics["entropy"]) <= bound + 1e-5
    expected = hand_loss(algo, params, rollout)
    np.testing.assert_allclose(float(metrics["entropy"]), expected["entropy"], rtol=RTOL)


def test_single_available_action_contributes_nothing() -> None:
    """An agent with one available action has log pi = 0 and zero entropy in the loss."""
    algo = MATrace(make_config("obs"), SPEC)
    params = make_params(algo, seed=15)
    rollout = make_rollout(seed=16)
    avail = np.asarray(rollout.avail).copy()
    avail[..., 0, :] = False
    avail[..., 0, 2] = True
    actions = np.asarray(rollout.actions).copy()
    actions[..., 0] = 2
    rollout = rollout._replace(avail=jnp.asarray(avail), actions=jnp.asarray(actions))
    logits = algo.unroll_logits(params, rollout)
    log_pi = np.asarray(jax.nn.log_softmax(logits))
    np.testing.assert_allclose(log_pi[..., 0, 2], 0.0, atol=1e-6)
    total, metrics = algo.loss(params, rollout)
    assert_metrics_match(total, metrics, hand_loss(algo, params, rollout))


@pytest.mark.parametrize("gap", [0.5, -0.5])
def test_adaptive_entropy_gradient_sign(gap: float) -> None:
    """Adaptive mode: descent on entropy_param raises the cost below target, lowers it above."""
    fixed = MATrace(make_config("obs"), SPEC)
    params = make_params(fixed, seed=17)
    rollout = make_rollout(seed=18)
    entropy = float(fixed.loss(params, rollout)[1]["entropy"])
    n = SPEC.num_agents
    target = (entropy + gap) / n  # per agent; gap > 0: summed entropy below n * target
    algo = MATrace(make_config("obs", entropy_mode="adaptive", target_entropy=target), SPEC)
    total, metrics = algo.loss(params, rollout)
    cost = float(np.exp(10.0 * float(params["entropy_param"])))
    np.testing.assert_allclose(cost, 0.05, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["entropy_cost"]), cost, rtol=1e-5)
    grads = jax.grad(lambda p: algo.loss(p, rollout)[0])(params)
    g = float(grads["entropy_param"])
    # d/dp [exp(10 p) (H - n target)] = 10 exp(10 p) (H - n target)
    np.testing.assert_allclose(g, 10.0 * cost * (entropy - n * target), rtol=1e-4)
    if gap > 0:
        assert g < 0  # a gradient step increases p, hence the cost
    else:
        assert g > 0
    stepped = {**params, "entropy_param": params["entropy_param"] - 0.1 * g}
    new_cost = float(algo.loss(stepped, rollout)[1]["entropy_cost"])
    assert (new_cost > cost) if gap > 0 else (new_cost < cost)
    # The value of the loss: policy + value - cost * H + cost * (H - target).
    expected = hand_loss(fixed, params, rollout)
    np.testing.assert_allclose(
        float(total),
        expected["policy_loss"] + expected["value_loss"] - cost * n * target,
        rtol=RTOL,
        atol=ATOL,
    )
    # Actor and critic gradients equal fixed mode with the same cost.
    fixed_grads = jax.grad(lambda p: fixed.loss(p, rollout)[0])(params)
    for part in ("actor", "critic"):
        for a, b in zip(jax.tree.leaves(grads[part]), jax.tree.leaves(fixed_grads[part])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_fixed_entropy_mode_ignores_entropy_param() -> None:
    """Fixed mode: the cost is the config's and entropy_param gets no gradient."""
    algo = MATrace(make_config("obs", entropy_cost=0.03), SPEC)
    params = make_params(algo, seed=19)
    params = {**params, "entropy_param": jnp.asarray(0.3)}
    rollout = make_rollout(seed=20)
    total, metrics = algo.loss(params, rollout)
    np.testing.assert_allclose(float(metrics["entropy_cost"]), 0.03, rtol=1e-6)
    grads = jax.grad(lambda p: algo.loss(p, rollout)[0])(params)
    assert float(grads["entropy_param"]) == 0.0


def test_c_bar_above_rho_bar_is_rejected() -> None:
    """Theorem 1 needs c_bar <= rho_bar: validate() and the constructor raise ConfigError."""
    with pytest.raises(ConfigError, match="c_bar"):
        MATraceConfig(c_bar=2.0, rho_bar=1.0).validate()
    with pytest.raises(ConfigError):
        MATrace(MATraceConfig(c_bar=2.0, rho_bar=1.0), SPEC)
    MATraceConfig(c_bar=2.0, rho_bar=2.0).validate()  # equality is allowed


def test_target_entropy_schedule_follows_progress() -> None:
    """target(progress) = target_entropy * (1 - decay * progress), fed by the runner's progress."""
    algo = MATrace(make_config("obs", entropy_mode="adaptive", target_entropy=0.4,
                               target_entropy_decay=0.75), SPEC)
    params = make_params(algo, seed=3)
    rollout = make_rollout(seed=4)
    for progress, want in [(0.0, 0.4), (0.5, 0.25), (1.0, 0.1)]:
        _, metrics = algo.loss(params, rollout, progress)
        np.testing.assert_allclose(float(metrics["target_entropy"]), want, rtol=1e-6)
    with pytest.raises(ConfigError, match="target_entropy_decay=1.5 is invalid"):
        make_config(target_entropy_decay=1.5).validate()


def test_lag_robust_settings_are_off_by_default_and_agree_on_policy() -> None:
    """On-policy data (every ratio 1): the per-agent clip equals the joint one and the
    behaviour KL is exactly 0; stale data makes the KL positive."""
    algo = MATrace(make_config("obs"), SPEC)
    params = make_params(algo, seed=3)
    stale = make_rollout(seed=4)
    log_pi = jax.nn.log_softmax(algo.unroll_logits(params, stale))
    fresh = stale._replace(behaviour_log_probs=jnp.take_along_axis(log_pi, stale.actions[..., None], -1)[..., 0])
    joint = algo.loss(params, fresh)
    per_agent = MATrace(make_config("obs", pg_ratio="per_agent", behaviour_kl_cost=1.0), SPEC).loss(params, fresh)
    np.testing.assert_allclose(float(joint[0]), float(per_agent[0]), rtol=1e-6, atol=1e-7)
    assert float(per_agent[1]["behaviour_kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(algo.loss(params, stale)[1]["behaviour_kl"]) > 0.1
    defaults = MATraceConfig()
    assert (defaults.pg_ratio, defaults.behaviour_kl_cost, defaults.behaviour_kl_target) == ("joint", 0.1, 0.02)
    with pytest.raises(ConfigError, match="pg_ratio='mean' is invalid; valid choices: joint, per_agent"):
        make_config(pg_ratio="mean").validate()
    with pytest.raises(ConfigError, match="pg_ratio=per_agent needs a team critic"):
        make_config("decentralised", pg_ratio="per_agent").validate()


def test_update_anchored_kl_pulls_towards_the_policy_the_update_starts_from() -> None:
    """kl_anchor=update: prepare_batch stores the taken actions' log-probabilities under
    the starting parameters; the penalty is 0 there and, elsewhere, the k3 divergence to
    that policy (NumPy), while behaviour_kl keeps measuring the distance to mu."""
    anchored = MATrace(make_config("obs", behaviour_kl_cost=0.3, kl_anchor="update"), SPEC)
    plain = MATrace(make_config("obs"), SPEC)
    start, moved = make_params(anchored, seed=1), make_params(anchored, seed=5)
    rollout = make_rollout(seed=2)
    batch = anchored.prepare_batch(start, rollout)
    actions = np.asarray(rollout.actions)[..., None]
    log_pi_start = np.take_along_axis(log_softmax(np.asarray(anchored.unroll_logits(start, rollout), np.float64)),
                                      actions, axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(batch.extras), log_pi_start, rtol=1e-5, atol=1e-6)
    assert plain.prepare_batch(start, rollout).extras is None

    total, metrics = anchored.loss(start, batch)
    assert float(metrics["anchor_kl"]) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(float(total), float(plain.loss(start, batch)[0]), rtol=1e-6, atol=1e-7)

    total, metrics = anchored.loss(moved, batch)
    log_pi_moved = np.take_along_axis(log_softmax(np.asarray(anchored.unroll_logits(moved, rollout), np.float64)),
                                      actions, axis=-1)[..., 0]
    log_ratio = log_pi_moved - log_pi_start
    expected_kl = np.mean(np.sum(np.exp(log_ratio) - 1 - log_ratio, axis=-1))
    assert expected_kl > 0.05
    np.testing.assert_allclose(float(metrics["anchor_kl"]), expected_kl, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(total), float(plain.loss(moved, batch)[0]) + 0.3 * expected_kl,
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(metrics["behaviour_kl"]), hand_loss(anchored, moved, rollout)["behaviour_kl"],
                               rtol=RTOL, atol=ATOL)
    with pytest.raises(ConfigError, match="kl_anchor='learner' is invalid; valid choices: behaviour, update"):
        make_config(kl_anchor="learner").validate()


@pytest.mark.parametrize("kl_anchor", ["behaviour", "update"])
@pytest.mark.parametrize("gap", [0.05, -0.05])
def test_adaptive_kl_multiplier_gradient_sign(kl_anchor: str, gap: float) -> None:
    """behaviour_kl_target > 0: descent on kl_param raises the multiplier while the anchor's KL
    is above N x target and lowers it below; the networks see the fixed-cost loss."""
    fixed = MATrace(make_config("obs", behaviour_kl_cost=0.2, kl_anchor=kl_anchor), SPEC)
    params = make_params(fixed, seed=21)
    rollout = make_rollout(seed=22)
    if kl_anchor == "update":
        rollout = fixed.prepare_batch(make_params(fixed, seed=23), rollout)
    key = "behaviour_kl" if kl_anchor == "behaviour" else "anchor_kl"
    kl = float(fixed.loss(params, rollout)[1][key])
    assert kl > 0
    n = SPEC.num_agents
    target = (kl - gap) / n  # gap > 0: the KL is above the constraint
    algo = MATrace(make_config("obs", behaviour_kl_cost=0.2, behaviour_kl_target=target, kl_anchor=kl_anchor), SPEC)
    assert "kl_param" not in fixed.init(jax.random.PRNGKey(0))
    params = {**params, "kl_param": algo.init(jax.random.PRNGKey(0))["kl_param"]}
    total, metrics = algo.loss(params, rollout)
    np.testing.assert_allclose(float(metrics["behaviour_kl_cost"]), 0.2, rtol=1e-5)
    grads = jax.grad(lambda p: algo.loss(p, rollout)[0])(params)
    g = float(grads["kl_param"])
    np.testing.assert_allclose(g, 10.0 * 0.2 * (n * target - kl), rtol=1e-3)
    assert (g < 0) if gap > 0 else (g > 0)
    fixed_total = float(fixed.loss(params, rollout)[0])
    np.testing.assert_allclose(float(total), fixed_total + 0.2 * (n * target - kl), rtol=1e-5, atol=1e-6)
    fixed_grads = jax.grad(lambda p: fixed.loss(p, rollout)[0])(params)
    for part in ("actor", "critic"):
        for a, b in zip(jax.tree.leaves(grads[part]), jax.tree.leaves(fixed_grads[part])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_kl_target_needs_a_starting_cost() -> None:
    with pytest.raises(ConfigError, match="behaviour_kl_target"):
        MATraceConfig(behaviour_kl_cost=0.0, behaviour_kl_target=0.01).validate()
    with pytest.raises(ConfigError, match="behaviour_kl_target"):
        MATraceConfig(behaviour_kl_target=-1.0, behaviour_kl_cost=0.1).validate()
