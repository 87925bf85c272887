"""The GRU actor: the learner's unroll reproduces acting step by step, memory resets at episode starts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.algos import MATrace, MATraceConfig
from offmarl.envs.base import EnvSpec
from offmarl.types import Rollout

SPEC = EnvSpec("toy", num_agents=2, obs_dim=3, state_dim=4, num_actions=4, max_episode_steps=10, has_win=False)
T, B = 6, 3


def _setup():
    algo = MATrace(MATraceConfig(actor="gru", hidden_sizes=(8, 5)), SPEC)
    params = algo.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    obs = jnp.asarray(rng.normal(size=(T + 1, B, 2, 3)), jnp.float32)
    avail = jnp.ones((T + 1, B, 2, 4), bool)
    starts = np.zeros((T, B), bool)
    starts[0] = True
    starts[3, 1] = True  # env 1 starts a new episode at step 3
    return algo, params, obs, avail, jnp.asarray(starts)


def test_unroll_matches_acting_step_by_step() -> None:
    algo, params, obs, avail, starts = _setup()
    memory = algo.initial_policy_state((B,))
    assert memory.shape == (B, 2, 5)
    acted, memories = [], []
    for t in range(T):
        memories.append(memory)
        logits, memory = algo.policy_step(params, memory, obs[t], avail[t], starts[t])
        acted.append(logits)
    rollout = Rollout(obs=obs, state=jnp.zeros((T + 1, B, 4)), avail=avail, starts=starts,
                      policy_state=jnp.stack(memories), actions=jnp.zeros((T, B, 2), jnp.int32),
                      behaviour_log_probs=jnp.zeros((T, B, 2)), rewards=jnp.zeros((T, B)),
                      dones=jnp.zeros((T, B), bool))
    np.testing.assert_allclose(algo.unroll_logits(params, rollout), jnp.stack(acted), rtol=1e-5, atol=1e-6)


def test_memory_carries_information_and_resets_at_starts() -> None:
    algo, params, obs, avail, _ = _setup()
    memory = algo.initial_policy_state((B,))
    no_start, start = jnp.zeros((B,), bool), jnp.ones((B,), bool)
    _, after_first = algo.policy_step(params, memory, obs[0], avail[0], start)
    continued, _ = algo.policy_step(params, after_first, obs[1], avail[1], no_start)
    fresh, _ = algo.policy_step(params, memory, obs[1], avail[1], start)
    restarted, _ = algo.policy_step(params, after_first, obs[1], avail[1], start)
    assert np.abs(np.asarray(continued - fresh)).max() > 1e-4  # the past matters
    np.testing.assert_allclose(restarted, fresh, rtol=1e-6)  # ...until an episode starts
