"""Tests of PPO (`offmarl.algos.ppo`): GAE, the targets `prepare_batch` fixes, and the
clipped loss, each against a NumPy recomputation from the same network outputs."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
from oracles import log_softmax

from offmarl.algos.ppo import PPO, IPPOConfig, MAPPOConfig, PPOConfig, PPOTargets, gae
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
T, B, N = 6, 4, 3
HIDDEN = (16, 16)
RTOL, ATOL = 2e-5, 1e-6
METRICS = [
    "loss",
    "policy_loss",
    "value_loss",
    "entropy",
    "entropy_per_agent",
    "ratio_mean",
    "clipped_fraction",
    "approx_kl",
    "value_mean",
]
KINDS = {"mappo": MAPPOConfig, "ippo": IPPOConfig}


# -- oracles -------------------------------------------------------------------------
def gae_oracle(
    rewards: np.ndarray, discounts: np.ndarray, values: np.ndarray, bootstrap_value: np.ndarray,
    lambda_: float,
) -> np.ndarray:
    """A_t = sum_{u=t}^{T-1} (prod_{k=t}^{u-1} lambda gamma_k) delta_u, with
    delta_u = r_u + gamma_u V(x_{u+1}) - V(x_u) and V(x_T) = bootstrap; [T, ...], explicit loops."""
    rewards = np.asarray(rewards, np.float64)
    num_steps = rewards.shape[0]
    shape = rewards.shape
    r = rewards.reshape(num_steps, -1)
    d = np.asarray(discounts, np.float64).reshape(num_steps, -1)
    v = np.concatenate(
        [np.asarray(values, np.float64).reshape(num_steps, -1),
         np.asarray(bootstrap_value, np.float64).reshape(1, -1)]
    )
    out = np.zeros_like(r)
    for b in range(r.shape[1]):
        for t in range(num_steps):
            total = 0.0
            for u in range(t, num_steps):
                trace = 1.0
                for k in range(t, u):
                    trace *= lambda_ * d[k, b]
                delta = r[u, b] + d[u, b] * v[u + 1, b] - v[u, b]
                total += trace * delta
            out[t, b] = total
    return out.reshape(shape)


def with_agent_id_np(obs: np.ndarray) -> np.ndarray:
    """[..., N, D] -> [..., N, D + N]: each agent's one-hot id appended."""
    ids = np.broadcast_to(np.eye(obs.shape[-2], dtype=obs.dtype), obs.shape[:-2] + (obs.shape[-2],) * 2)
    return np.concatenate([obs, ids], axis=-1)


def hand_values(algo: PPO, params: dict, obs: np.ndarray, state: np.ndarray) -> np.ndarray:
    """The critic MLP applied to the documented input: the state (MAPPO, [..]) or each
    agent's own observation (IPPO, [.., N])."""
    cfg = algo.config
    if cfg.critic == "state":
        inputs = np.asarray(state)
    elif cfg.critic == "decentralised":
        inputs = with_agent_id_np(np.asarray(obs)) if cfg.agent_id else np.asarray(obs)
    else:
        inputs = np.asarray(obs).reshape(obs.shape[:-2] + (-1,))
    return np.asarray(MLPValue(cfg.hidden_sizes).apply(params["critic"], jnp.asarray(inputs)), np.float64)


def hand_log_pi(algo: PPO, params: dict, rollout: Rollout) -> np.ndarray:
    """log pi(. | o_t) [T, B, N, A] from the actor MLP, masked to the available actions."""
    obs = np.asarray(rollout.obs[:-1])
    inputs = with_agent_id_np(obs) if algo.config.agent_id else obs
    logits = np.asarray(
        MLPPolicy(algo.config.hidden_sizes, algo.spec.num_actions).apply(params["actor"], jnp.asarray(inputs)),
        np.float64,
    )
    logits = np.where(np.asarray(rollout.avail[:-1]), logits, -np.inf)
    return log_softmax(logits)


def hand_targets(algo: PPO, params: dict, rollout: Rollout) -> dict[str, np.ndarray]:
    """Values, GAE advantages (team reward, discounts gamma (1 - done), bootstrap V(x_T)) and returns."""
    cfg = algo.config
    values = hand_values(algo, params, np.asarray(rollout.obs), np.asarray(rollout.state))
    rewards = np.asarray(rollout.rewards, np.float64)
    discounts = cfg.gamma * (1.0 - np.asarray(rollout.dones, np.float64))
    if cfg.critic == "decentralised":
        assert values.shape == (T + 1, B, N)
        rewards = np.repeat(rewards[..., None], N, axis=-1)
        discounts = np.repeat(discounts[..., None], N, axis=-1)
    else:
        assert values.shape == (T + 1, B)
    advantages = gae_oracle(rewards, discounts, values[:-1], values[-1], cfg.gae_lambda)
    return {"values": values[:-1], "advantages": advantages, "returns": advantages + values[:-1]}


def hand_loss(algo: PPO, params: dict, rollout: Rollout) -> dict:
    """The PPO loss and metrics recomputed in float64 NumPy from the networks' outputs."""
    cfg = algo.config
    targets: PPOTargets = rollout.extras
    old_values = np.asarray(targets.values, np.float64)
    returns = np.asarray(targets.returns, np.float64)
    advantages = np.asarray(targets.advantages, np.float64)

    log_pi = hand_log_pi(algo, params, rollout)
    probs = np.exp(log_pi)
    entropy = -np.sum(probs * np.where(probs > 0, log_pi, 0.0), axis=-1)  # [T, B, N]
    log_pi_a = np.take_along_axis(log_pi, np.asarray(rollout.actions)[..., None], axis=-1)[..., 0]
    ratios = np.exp(log_pi_a - np.asarray(rollout.behaviour_log_probs, np.float64))  # [T, B, N]

    if cfg.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    if cfg.critic != "decentralised":
        advantages = np.repeat(advantages[..., None], N, axis=-1)  # team advantage per agent
    assert advantages.shape == ratios.shape == (T, B, N)
    eps = cfg.clip_eps
    surrogate = np.minimum(ratios * advantages, np.clip(ratios, 1 - eps, 1 + eps) * advantages)
    policy_loss = -np.mean(surrogate)

    values = hand_values(algo, params, np.asarray(rollout.obs[:-1]), np.asarray(rollout.state[:-1]))
    plain_error = (values - returns) ** 2
    clipped_error = (old_values + np.clip(values - old_values, -eps, eps) - returns) ** 2
    value_error = np.maximum(plain_error, clipped_error) if cfg.clip_value else plain_error
    value_loss = cfg.value_cost * 0.5 * np.mean(value_error)

    mean_entropy = np.mean(entropy)
    return {
        "loss": policy_loss + value_loss - cfg.entropy_cost * mean_entropy,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": mean_entropy,
        "entropy_per_agent": mean_entropy,
        "ratio_mean": np.mean(ratios),
        "clipped_fraction": np.mean(np.abs(ratios - 1.0) > eps),
        "approx_kl": np.mean((ratios - 1.0) - np.log(ratios)),
        "value_mean": np.mean(values),
        # Diagnostics (not metrics of the loss):
        "advantages": advantages,
        "log_pi_a": log_pi_a,
        "value_clip_binds": np.mean(clipped_error > plain_error),
        "value_loss_unclipped": cfg.value_cost * 0.5 * np.mean(plain_error),
    }


# -- handmade inputs ----------------------------------------------------------------
def make_config(kind: str, **overrides: object) -> PPOConfig:
    fields: dict[str, object] = dict(
        gamma=0.9,
        gae_lambda=0.8,
        clip_eps=0.2,
        value_cost=0.7,
        entropy_cost=0.05,
        hidden_sizes=HIDDEN,
    )
    fields.update(overrides)
    return KINDS[kind](**fields)  # type: ignore[arg-type]


def make_rollout(seed: int, spec: EnvSpec = SPEC) -> Rollout:
    """A random rollout: some actions unavailable, behaviour actions always available, some
    dones; behaviour log-probs are placeholders (see `set_behaviour`)."""
    rng = np.random.default_rng(seed)
    n, a = spec.num_agents, spec.num_actions
    avail = rng.uniform(size=(T + 1, B, n, a)) > 0.4
    forced = rng.integers(a, size=(T + 1, B, n, 1))
    np.put_along_axis(avail, forced, True, axis=-1)
    scores = np.where(avail[:-1], rng.uniform(size=(T, B, n, a)), -1.0)
    actions = scores.argmax(axis=-1).astype(np.int32)
    dones = rng.uniform(size=(T, B)) < 0.2
    dones[2, 0] = True
    return Rollout(
        obs=jnp.asarray(rng.normal(size=(T + 1, B, n, spec.obs_dim)), jnp.float32),
        state=jnp.asarray(rng.normal(size=(T + 1, B, spec.state_dim)), jnp.float32),
        avail=jnp.asarray(avail),
        starts=jnp.asarray(np.concatenate([np.ones((1, B), bool), dones[:-1]])),
        policy_state=jnp.zeros((T, B, n, 0)),
        actions=jnp.asarray(actions),
        behaviour_log_probs=jnp.zeros((T, B, n), jnp.float32),
        rewards=jnp.asarray(rng.normal(size=(T, B)), jnp.float32),
        dones=jnp.asarray(dones),
    )


def make_params(algo: PPO, seed: int) -> dict:
    """Random params shaped like `algo.init`'s; weights scaled so the policy is far from uniform."""
    rng = np.random.default_rng(seed)

    def fill(leaf: jax.ShapeDtypeStruct) -> jax.Array:
        if len(leaf.shape) == 2:
            value = 1.5 * rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])
        else:
            value = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree.map(fill, jax.eval_shape(algo.init, jax.random.PRNGKey(0)))


def perturb(params: dict, seed: int, scale: float) -> dict:
    """Params after a (pretend) few gradient steps: every leaf moved by scale * noise."""
    rng = np.random.default_rng(seed)

    def move(leaf: jax.Array) -> jax.Array:
        fan_in = leaf.shape[0] if leaf.ndim == 2 else 1
        return leaf + jnp.asarray(scale * rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree.map(move, params)


def set_behaviour(algo: PPO, params: dict, rollout: Rollout, noise: float, seed: int) -> Rollout:
    """Behaviour log-probs = the policy's at `params`, plus uniform(-noise, noise)."""
    log_pi_a = np.take_along_axis(
        hand_log_pi(algo, params, rollout), np.asarray(rollout.actions)[..., None], axis=-1
    )[..., 0]
    log_mu = log_pi_a + np.random.default_rng(seed).uniform(-noise, noise, size=log_pi_a.shape)
    return rollout._replace(behaviour_log_probs=jnp.asarray(log_mu, jnp.float32))


# -- 1. GAE ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(T, B), (T, B, N)], ids=["team", "per-agent"])
@pytest.mark.parametrize("lambda_", [0.0, 0.8, 1.0])
def test_gae_matches_brute_force_oracle(shape: tuple[int, ...], lambda_: float) -> None:
    rng = np.random.default_rng(21)
    rewards = rng.normal(size=shape)
    dones = rng.uniform(size=shape) < 0.25
    dones[2, 0] = True
    discounts = 0.9 * (1.0 - dones)
    values = rng.normal(size=shape)
    bootstrap = rng.normal(size=shape[1:])
    got = gae(*(jnp.asarray(x, jnp.float32) for x in (rewards, discounts, values, bootstrap)), lambda_)
    assert got.shape == shape
    want = gae_oracle(rewards, discounts, values, bootstrap, lambda_)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # lambda = 0 is the one-step TD error.
    if lambda_ == 0.0:
        next_values = np.concatenate([values[1:], bootstrap[None]])
        np.testing.assert_allclose(want, rewards + discounts * next_values - values, atol=1e-12)
    # An episode's end cuts the sum: what follows the done at [2, 0] does not reach t <= 2.
    later = rewards.copy()
    later[3:] += 5.0
    later_values = values.copy()
    later_values[3:] -= 3.0
    cut = gae(*(jnp.asarray(x, jnp.float32) for x in (later, discounts, later_values, bootstrap + 1.0)), lambda_)
    np.testing.assert_allclose(np.asarray(cut)[:3, 0], np.asarray(got)[:3, 0], rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(cut)[3:, 0] - np.asarray(got)[3:, 0]).min() > 1e-3


def test_gae_matches_rlax_without_episode_ends() -> None:
    """rlax.truncated_generalized_advantage_estimation per batch column: r_t, discount_t,
    values V(x_0) .. V(x_T) (bootstrap last)."""
    rng = np.random.default_rng(22)
    rewards = rng.normal(size=(T, B)).astype(np.float32)
    discounts = np.full((T, B), 0.95, np.float32)
    values = rng.normal(size=(T, B)).astype(np.float32)
    bootstrap = rng.normal(size=(B,)).astype(np.float32)
    lambda_ = 0.9
    got = np.asarray(gae(jnp.asarray(rewards), jnp.asarray(discounts), jnp.asarray(values),
                         jnp.asarray(bootstrap), lambda_))
    per_column = jax.vmap(rlax.truncated_generalized_advantage_estimation, in_axes=(1, 1, None, 1), out_axes=1)
    want = np.asarray(per_column(jnp.asarray(rewards), jnp.asarray(discounts), lambda_,
                                 jnp.asarray(np.concatenate([values, bootstrap[None]]))))
    assert want.shape == (T, B)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(want, gae_oracle(rewards, discounts, values, bootstrap, lambda_),
                               rtol=1e-5, atol=1e-5)


# -- 2. prepare_batch -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mappo", "ippo"])
def test_prepare_batch_stores_values_and_gae_targets(kind: str) -> None:
    algo = PPO(make_config(kind), SPEC)
    assert algo.decentralised_critic == (kind == "ippo")
    assert algo.config.critic == ("decentralised" if kind == "ippo" else "state")
    params = make_params(algo, seed=1)
    rollout = make_rollout(seed=2)
    prepared = algo.prepare_batch(params, rollout)
    targets = prepared.extras
    assert isinstance(targets, PPOTargets)
    shape = (T, B, N) if kind == "ippo" else (T, B)
    expected = hand_targets(algo, params, rollout)
    for name in ("values", "advantages", "returns"):
        got = np.asarray(getattr(targets, name))
        assert got.shape == shape, name
        np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(targets.returns),
                               np.asarray(targets.advantages) + np.asarray(targets.values), rtol=1e-6)
    assert np.abs(expected["advantages"]).max() > 0.1
    # Every other field is passed through untouched.
    for name in Rollout._fields:
        if name != "extras":
            np.testing.assert_array_equal(np.asarray(getattr(prepared, name)), np.asarray(getattr(rollout, name)))
    if kind == "ippo":
        # The team reward reaches every agent: each agent's column is its own GAE.
        values = hand_values(algo, params, np.asarray(rollout.obs), np.asarray(rollout.state))
        discounts = 0.9 * (1.0 - np.asarray(rollout.dones, np.float64))
        for i in range(N):
            want = gae_oracle(np.asarray(rollout.rewards), discounts, values[:-1, :, i], values[-1, :, i], 0.8)
            np.testing.assert_allclose(np.asarray(targets.advantages)[..., i], want, rtol=1e-5, atol=1e-5)


# -- 3. the loss --------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [True, False], ids=["norm-adv", "raw-adv"])
@pytest.mark.parametrize("clip_value", [True, False], ids=["clip-v", "no-clip-v"])
@pytest.mark.parametrize("kind", ["mappo", "ippo"])
def test_loss_matches_hand_computation(kind: str, clip_value: bool, normalize: bool) -> None:
    algo = PPO(make_config(kind, clip_value=clip_value, normalize_advantages=normalize), SPEC)
    start = make_params(algo, seed=3)
    rollout = set_behaviour(algo, start, make_rollout(seed=4), noise=0.5, seed=5)
    prepared = algo.prepare_batch(start, rollout)
    params = perturb(start, seed=6, scale=0.3)  # the passes have moved the params

    expected = hand_loss(algo, params, prepared)
    # The inputs exercise both clips, partly.
    assert 0.0 < expected["clipped_fraction"] < 1.0
    assert 0.0 < expected["value_clip_binds"] < 1.0
    assert abs(expected["value_loss"] - expected["value_loss_unclipped"]) > 1e-3 or not clip_value
    assert abs(expected["policy_loss"]) > 1e-3 and expected["value_loss"] > 1e-3
    assert expected["approx_kl"] > 1e-3

    total, metrics = algo.loss(params, prepared)
    assert sorted(metrics) == sorted(METRICS)
    np.testing.assert_allclose(float(total), expected["loss"], rtol=RTOL, atol=ATOL)
    for name in METRICS:
        np.testing.assert_allclose(float(metrics[name]), expected[name], rtol=RTOL, atol=ATOL, err_msg=name)
    assert 0.0 < float(metrics["clipped_fraction"]) < 1.0

    # The flags change the loss: the other setting's hand value is really different.
    if clip_value:
        assert abs(float(metrics["value_loss"]) - expected["value_loss_unclipped"]) > 1e-3
    flipped = PPO(make_config(kind, clip_value=clip_value, normalize_advantages=not normalize), SPEC)
    other = hand_loss(flipped, params, prepared)
    assert abs(other["policy_loss"] - float(metrics["policy_loss"])) > 1e-3


# -- 4. on-policy start -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mappo", "ippo"])
def test_first_pass_is_on_policy(kind: str) -> None:
    """At the prepare-time params with mu = pi: ratios are 1, nothing is clipped, KL is 0, and
    the policy loss's gradient is the plain policy gradient -mean(grad log pi(a) * A), nonzero."""
    algo = PPO(make_config(kind), SPEC)
    params = make_params(algo, seed=7)
    rollout = set_behaviour(algo, params, make_rollout(seed=8), noise=0.0, seed=0)
    prepared = algo.prepare_batch(params, rollout)
    total, metrics = algo.loss(params, prepared)
    np.testing.assert_allclose(float(metrics["ratio_mean"]), 1.0, atol=1e-5)
    assert float(metrics["clipped_fraction"]) == 0.0
    np.testing.assert_allclose(float(metrics["approx_kl"]), 0.0, atol=1e-6)
    expected = hand_loss(algo, params, prepared)
    np.testing.assert_allclose(float(total), expected["loss"], rtol=RTOL, atol=1e-5)

    grads = jax.grad(lambda p: algo.loss(p, prepared)[1]["policy_loss"])(params)
    actor_grads = jax.tree.leaves(grads["actor"])
    assert max(float(jnp.abs(g).max()) for g in actor_grads) > 1e-3
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["critic"]))

    advantages = jnp.asarray(expected["advantages"], jnp.float32)  # standardised, per agent

    def policy_gradient_surrogate(p: dict) -> jax.Array:
        log_pi = jax.nn.log_softmax(algo.unroll_logits(p, prepared))
        log_pi_a = jnp.take_along_axis(log_pi, prepared.actions[..., None], axis=-1)[..., 0]
        return -jnp.mean(log_pi_a * advantages)

    want = jax.tree.leaves(jax.grad(policy_gradient_surrogate)(params)["actor"])
    for g, w in zip(actor_grads, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-3, atol=1e-6)


# -- 5. validation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [("clip_eps", 0.0), ("clip_eps", 1.5), ("gae_lambda", 1.2), ("entropy_cost", -1.0)],
)
@pytest.mark.parametrize("kind", ["mappo", "ippo"])
def test_invalid_config_is_rejected(kind: str, field: str, value: float) -> None:
    config = make_config(kind, **{field: value})
    with pytest.raises(ConfigError, match=re.escape(f"{field}={value}")):
        config.validate()
    with pytest.raises(ConfigError, match=field):
        PPO(config, SPEC)


def test_boundary_config_values_are_accepted() -> None:
    for overrides in (dict(gae_lambda=0.0), dict(gae_lambda=1.0), dict(entropy_cost=0.0),
                      dict(clip_eps=0.99)):
        make_config("mappo", **overrides).validate()
