"""MABrax (multi-agent MuJoCo on brax): names, hopper_3x1's spec, and one compiled rollout.

Building an environment compiles nothing; the rollout test compiles MABrax (a minute or
two on 2 cores), so it is marked slow.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offmarl.envs import has_continuous_actions, list_envs, make_env
from offmarl.envs.base import BoxActions


@pytest.fixture(scope="module")
def hopper():
    return make_env("mabrax:hopper_3x1")


def test_scenarios_match_jaxmarl_registry_and_list_without_jax() -> None:
    from importlib.metadata import version

    from offmarl.envs import mabrax
    from offmarl.envs.jaxmarl_adapter import quiet_import_jaxmarl

    assert version("jaxmarl") == "0.2.0", "update mabrax.SCENARIOS for the new JaxMARL"
    quiet_import_jaxmarl()
    from jaxmarl.environments.mabrax.mappings import _agent_action_mapping
    from jaxmarl.registration import registered_envs

    jaxmarl_mabrax = [env_id for env_id in registered_envs if env_id in _agent_action_mapping]
    assert sorted(jaxmarl_mabrax) == sorted([*mabrax.SCENARIOS.values(), "humanoid_9|8"])
    names = [f"mabrax:{s}" for s in mabrax.scenario_names()]
    assert names == ["mabrax:hopper_3x1", "mabrax:halfcheetah_6x1", "mabrax:ant_4x2", "mabrax:walker2d_2x3"]
    assert set(names) <= set(list_envs())
    code = (
        "import sys, offmarl.envs as e\n"
        "names = [n for n in e.list_envs() if n.startswith('mabrax:')]\n"
        "assert names and all(e.has_continuous_actions(n) for n in names)\n"
        "assert 'jax' not in sys.modules and 'jaxmarl' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_hopper_spec(hopper) -> None:
    spec = hopper.spec
    # 3 agents seeing 8, 9 and 8 entries of brax's 11: "max" gives 3 + 9 each.
    assert (spec.num_agents, spec.obs_dim, spec.state_dim, spec.num_actions) == (3, 12, 11, 0)
    assert spec.action_space == BoxActions((-1.0,), (1.0,)) and spec.continuous
    assert not spec.has_win and spec.max_episode_steps == 1000
    assert has_continuous_actions("mabrax:hopper_3x1")
    assert hopper.settings == {"jaxmarl_id": "hopper_3x1", "homogenisation_method": "max",
                               "episode_length": 1000, "backend": "positional"}


@pytest.mark.slow
def test_hopper_rollout_clips_actions_rewards_the_team_and_resets(hopper) -> None:
    """16 envs, 100 steps of random actions, most outside the box: envs 8-15 start as
    envs 0-7 and take the same actions clipped by hand, so after the first step (the
    environment's own clipping) both halves agree. Later steps drift apart: the batch
    lanes round differently and hopping is chaotic."""
    from jaxmarl.environments.mabrax.mappings import _agent_observation_mapping

    half, steps = 8, 100

    @jax.jit
    def rollout(key):
        k0, k1 = jax.random.split(key)
        state, ts = jax.vmap(hopper.reset)(jnp.tile(jax.random.split(k0, half), (2, 1)))

        def body(state, key):
            ka, ke = jax.random.split(key)
            actions = jax.random.uniform(ka, (half, 3, 1), minval=-4.0, maxval=4.0)
            actions = jnp.concatenate([actions, jnp.clip(actions, -1.0, 1.0)])
            state, ts = jax.vmap(hopper.step)(jnp.tile(jax.random.split(ke, half), (2, 1)), state, actions)
            return state, (ts, state.reward, state.info["steps"])

        return ts, jax.lax.scan(body, state, jax.random.split(k1, steps))[1]

    first, (ts, brax_reward, brax_steps) = jax.tree.map(np.asarray, rollout(jax.random.PRNGKey(0)))
    for x in (ts.obs, ts.state, ts.reward):
        assert np.isfinite(x).all()
        np.testing.assert_allclose(x[0, :half], x[0, half:], rtol=1e-5, atol=1e-6)
    assert ts.obs.shape == (steps, 2 * half, 3, 12) and ts.state.shape == (steps, 2 * half, 11)
    assert ts.avail.shape == (steps, 2 * half, 3, 0) and not ts.won.any()

    # JaxMARL's "max" layout: agent i has i zeros, a 1, then its part of brax's observation.
    for i, idx in enumerate(_agent_observation_mapping["hopper_3x1"].values()):
        obs = np.concatenate([first.obs[None], ts.obs])[..., i, :]
        state = np.concatenate([first.state[None], ts.state])
        assert (obs[..., :i] == 0).all() and (obs[..., i] == 1).all()
        np.testing.assert_array_equal(obs[..., i + 1 : i + 1 + idx.size], state[..., np.asarray(idx)])

    # The team reward is brax's reward, the same for every agent (not summed over agents).
    alive = ~ts.done
    np.testing.assert_allclose(ts.reward[alive], brax_reward[alive], rtol=1e-6)
    # Falls end episodes; the state after a done is a fresh episode's (torso at 1.25 m).
    assert ts.done.any(), "saturated random actions should topple some hoppers in 100 steps"
    assert (brax_steps[ts.done] == 0).all() and (brax_steps[alive] > 0).all()
    np.testing.assert_allclose(ts.state[ts.done][:, 0], 1.25, atol=0.01)
    assert not (ts.done[1:] & ts.done[:-1]).any()
