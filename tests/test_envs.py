"""Environment adapters: shapes, masks, rewards and the derived win flag."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offmarl.envs import check_env_name, list_envs
from offmarl.errors import ConfigError


def test_smax_3m_spec_matches_jaxmarl(smax_3m) -> None:
    spec = smax_3m.spec
    assert (spec.num_agents, spec.obs_dim, spec.state_dim, spec.num_actions) == (3, 75, 72, 8)
    assert spec.max_episode_steps == 100 and spec.has_win
    assert smax_3m.settings["attack_mode"] == "closest"


def test_smax_reset_masks_stop_available_and_no_attack(smax_3m) -> None:
    _, ts = smax_3m.reset(jax.random.PRNGKey(0))
    avail = np.asarray(ts.avail)
    assert avail.dtype == bool and avail.shape == (3, 8)
    assert avail[:, 4].all()  # stop is always available
    assert not avail[:, 5:].any()  # no enemy in range at reset
    assert ts.obs.shape == (3, 75) and ts.state.shape == (72,)
    assert float(ts.reward) == 0.0 and not bool(ts.done)


def _random_episodes(env, steps: int, num_envs: int, seed: int):
    """Roll random available actions; returns stacked rewards, dones, wins per step."""

    def policy_step(carry, key):
        state, ts = carry
        k_act, k_env = jax.random.split(key)
        logits = jnp.where(ts.avail, 0.0, -1e9)
        actions = jax.random.categorical(k_act, logits)
        state, ts = jax.vmap(env.step)(jax.random.split(k_env, num_envs), state, actions)
        return (state, ts), (ts.reward, ts.done, ts.won, ts.avail, actions)

    state, ts = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(seed), num_envs))
    _, out = jax.lax.scan(policy_step, (state, ts), jax.random.split(jax.random.PRNGKey(seed + 1), steps))
    return out


def test_smax_win_flag_only_on_episode_end_with_bonus(smax_3m) -> None:
    rewards, dones, wins, _, _ = map(np.asarray, _random_episodes(smax_3m, 150, 32, 0))
    assert dones.any(), "random play should finish some 3m episodes in 150 steps"
    assert not (wins & ~dones).any()
    np.testing.assert_array_equal(wins, dones & (rewards >= 1.0))
    # Without a win the per-step reward is damage only, below the +1 win bonus.
    assert (rewards[~wins] < 1.0).all() and (rewards >= 0).all()


def test_mpe_spread_spec_and_team_reward(mpe_spread) -> None:
    spec = mpe_spread.spec
    assert (spec.num_agents, spec.obs_dim, spec.num_actions) == (3, 18, 5)
    assert spec.state_dim == 3 * 18 and not spec.has_win
    rewards, dones, wins, avail, _ = map(np.asarray, _random_episodes(mpe_spread, 30, 4, 0))
    assert avail.all() and not wins.any()
    assert (rewards < 0).all()  # distance penalties
    # JaxMARL ends MPE episodes when the step counter passes max_steps=25: 26 steps.
    assert dones[25].all() and not dones[:25].any()


def test_mpe_spread_continuous_has_a_box_and_moves_with_forces() -> None:
    """mpe:simple_spread_continuous: 5 forces in [0, 1] per agent, no masks; different
    forces move the agents differently, and the spec says continuous."""
    from offmarl.envs import has_continuous_actions, make_env
    from offmarl.envs.base import BoxActions, DiscreteActions

    env = make_env("mpe:simple_spread_continuous")
    spec = env.spec
    assert spec.continuous and spec.action_space == BoxActions((0.0,) * 5, (1.0,) * 5)
    assert spec.num_actions == 0 and (spec.num_agents, spec.obs_dim) == (3, 18)
    assert has_continuous_actions("mpe:simple_spread_continuous") and not has_continuous_actions("mpe:simple_spread")
    assert make_env("matrix:xor").spec.action_space == DiscreteActions(2)
    state, ts = env.reset(jax.random.PRNGKey(0))
    assert ts.avail.shape == (3, 0)
    key = jax.random.PRNGKey(1)
    _, still = env.step(key, state, jnp.zeros((3, 5)))
    _, pushed = env.step(key, state, jnp.tile(jnp.array([0.0, 1.0, 0.0, 1.0, 0.0]), (3, 1)))
    assert not np.allclose(np.asarray(still.obs), np.asarray(pushed.obs))
    assert np.isfinite(float(pushed.reward))


def test_algorithms_without_continuous_support_are_refused_naming_both_sides() -> None:
    from offmarl.algos import ALGORITHMS
    from offmarl.runners.experiment import resolve_experiment, resolve_offline_experiment

    refused = [name for name, entry in ALGORITHMS.items() if not entry.continuous]
    assert set(refused) >= {"iql_cql"}
    for name in refused:
        entry = ALGORITHMS[name]
        with pytest.raises(ConfigError, match=f"algorithm '{name}' supports discrete actions only, and "
                                              "'mpe:simple_spread_continuous' has continuous actions; "
                                              "offline algorithms with continuous support: bc, omiga, inspo, maicq"):
            if entry.kind == "online":
                resolve_experiment(name, "mpe:simple_spread_continuous", 0)
            else:
                resolve_offline_experiment(name, "mpe:simple_spread_continuous", "x.vlt:good", 0)


def test_env_names_listed_and_validated() -> None:
    names = list_envs()
    for name in ("smax:3m", "smax:2s3z", "smax:5m_vs_6m", "smax:27m_vs_30m", "mpe:simple_spread"):
        assert name in names
    assert check_env_name("smax:3m") == ("smax", "3m")
    with pytest.raises(ConfigError, match="unknown smax scenario '4m'.*valid: 3m, 2s3z"):
        check_env_name("smax:4m")
    with pytest.raises(ConfigError, match="unknown environment 'atari:pong'.*smax:<scenario>"):
        check_env_name("atari:pong")


def test_static_scenario_lists_match_jaxmarl() -> None:
    """`offmarl envs` lists SMAX maps and MPE tasks without importing JaxMARL; these
    static lists must stay what the pinned JaxMARL offers."""
    from importlib.metadata import version

    from offmarl.envs import mpe, smax
    from offmarl.envs.jaxmarl_adapter import quiet_import_jaxmarl

    assert version("jaxmarl") == "0.2.0", "update smax.MAP_NAMES / mpe.SCENARIOS for the new JaxMARL"
    quiet_import_jaxmarl()
    from jaxmarl.environments.smax import map_name_to_scenario
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO
    from jaxmarl.registration import registered_envs

    assert smax.scenario_names() == list(MAP_NAME_TO_SCENARIO)
    for map_name in smax.scenario_names():
        map_name_to_scenario(map_name)  # the public lookup make_smax uses accepts every name
    assert mpe.scenario_names() == ["simple_spread", "simple_spread_continuous"]  # cooperative tasks
    for jaxmarl_id, _ in mpe.SCENARIOS.values():
        assert jaxmarl_id in registered_envs


def test_matrix_names_listed_without_jax_match_matrix_module() -> None:
    from offmarl.envs import _matrix_names, matrix

    assert _matrix_names() == matrix.scenario_names()
    assert [n for n in list_envs() if n.startswith("matrix:")] == [f"matrix:{n}" for n in _matrix_names()]


def test_box_actions_outside_the_bounds_are_clipped_by_the_environment() -> None:
    from offmarl.envs import make_env

    env = make_env("mpe:simple_spread_continuous")
    state, _ = env.reset(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(3)
    inside = jnp.tile(jnp.array([0.0, 1.0, 0.0, 1.0, 0.0]), (3, 1))
    _, clipped = env.step(key, state, inside)
    _, beyond = env.step(key, state, inside * 7.0 - 3.0 * (inside == 0))
    np.testing.assert_array_equal(np.asarray(clipped.obs), np.asarray(beyond.obs))
