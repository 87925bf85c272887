"""Small games with known answers: matrix games, Bridge, and their built-in datasets."""

from __future__ import annotations

import heapq
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offmarl.data.builtin import builtin_dataset_names, load_builtin_dataset
from offmarl.envs import check_env_name, list_envs, make_env
from offmarl.envs.bridge import BridgeState, cell_index, optimal_return
from offmarl.envs.matrix import load_game
from offmarl.errors import ConfigError

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def bridge():
    return make_env("bridge")


@pytest.fixture(scope="module")
def mix():
    return load_builtin_dataset("bridge", "mix", seed=0)


def _write_game(tmp_path: Path, game: object) -> str:
    path = tmp_path / "game.json"
    path.write_text(json.dumps(game))
    return str(path)


# ---------------------------------------------------------------- matrix games


def test_xor_pays_the_payoff_of_every_joint_action() -> None:
    env = make_env("matrix:xor")
    spec = env.spec
    assert (spec.num_agents, spec.num_actions, spec.obs_dim, spec.state_dim) == (2, 2, 2, 1)
    assert spec.max_episode_steps == 1 and not spec.has_win
    state, ts = env.reset(KEY)
    np.testing.assert_array_equal(ts.obs, np.eye(2))
    assert ts.avail.all() and not bool(ts.done)
    step = jax.jit(env.step)
    for joint, payoff in {(0, 0): 0.0, (0, 1): 1.0, (1, 0): 1.0, (1, 1): -2.0}.items():
        state, ts = step(KEY, state, jnp.array(joint, jnp.int32))
        assert float(ts.reward) == payoff
        assert bool(ts.done) and not bool(ts.won)
        np.testing.assert_array_equal(ts.obs, np.eye(2))


def test_mne_game_punishes_independent_choices() -> None:
    payoff = load_game("mne").payoff
    optimum = payoff.max()
    assert sorted(zip(*np.nonzero(payoff == optimum))) == [(0, 0), (1, 1)]
    # balanced data: BC marginals are 50/50 over {0, 1}; sampling them miscoordinates
    marginal = np.array([0.5, 0.5, 0.0])
    assert marginal @ payoff @ marginal == pytest.approx(-5.0)
    assert marginal @ payoff @ marginal < payoff[2, 2] < optimum
    # uniform data: against a uniform partner the safe action looks best to each agent alone
    independent_values = payoff.mean(axis=1)
    assert independent_values.argmax() == 2 and payoff[2, 2] < optimum


def test_xor_02_20_dataset_has_the_published_proportions() -> None:
    data = load_builtin_dataset("matrix:xor", "02_20", seed=3)
    joints, counts = np.unique(data.actions, axis=0, return_counts=True)
    assert joints.tolist() == [[0, 1], [1, 0]] and counts.tolist() == [492, 508]
    assert data.num_episodes == 1000 and (data.episode_lengths() == 1).all()
    np.testing.assert_array_equal(data.rewards, np.ones((1000, 2)))
    assert data.terminals.all() and not data.truncations.any() and data.legals.all()
    assert data.observations.shape == (1000, 2, 2) and data.states.shape == (1000, 1)
    again = load_builtin_dataset("matrix:xor", "02_20", seed=3)
    other = load_builtin_dataset("matrix:xor", "02_20", seed=4)
    np.testing.assert_array_equal(again.actions, data.actions)
    assert not np.array_equal(other.actions, data.actions)


def test_matrix_datasets_follow_their_distributions() -> None:
    thirds = load_builtin_dataset("matrix:xor", "00_02_20", num_episodes=300)
    assert np.unique(thirds.actions, axis=0, return_counts=True)[1].tolist() == [100, 100, 100]
    balanced = load_builtin_dataset("matrix:mne", "balanced")
    assert set(map(tuple, balanced.actions.tolist())) == {(0, 0), (1, 1)}
    assert (balanced.actions[:, 0] == 0).sum() == 500
    assert builtin_dataset_names("matrix:mne") == ["balanced", "imbalanced", "uniform"]
    assert len(np.unique(load_builtin_dataset("matrix:mne", "uniform").actions, axis=0)) == 9


SQUARE = [[0, 1], [1, 0]]
BAD_GAMES = [
    ("not json", "not valid JSON"),
    ([1, 2], "must be a JSON object"),
    ({"payof": [[0, 1], [1, 0]]}, "unknown key 'payof'"),
    ({"description": "no payoff"}, "missing key 'payoff'"),
    ({"payoff": [[0, 1], [1]]}, "'payoff' is ragged"),
    ({"payoff": [[0, 1, 2], [1, 0, 2]]}, "'payoff' must give every agent the same number of actions"),
    ({"payoff": [0, 1]}, "'payoff' must be nested at least two deep"),
    ({"payoff": [[0, "x"], [1, 0]]}, "'payoff' entry [0][1]"),
    ({"payoff": SQUARE, "datasets": []}, "'datasets' must be an object"),
    ({"payoff": SQUARE, "datasets": {"d": {"0,1,0": 1.0}}}, "dataset 'd': joint action '0,1,0' has 3"),
    ({"payoff": SQUARE, "datasets": {"d": {"0,2": 1.0}}}, "dataset 'd': joint action '0,2' is out of range"),
    ({"payoff": SQUARE, "datasets": {"d": {"0,a": 1.0}}}, "dataset 'd': joint action '0,a' must be"),
    ({"payoff": SQUARE, "datasets": {"d": {"0,1": 0.5, "0, 1": 0.5}}}, "'0, 1' is listed twice"),
    ({"payoff": SQUARE, "datasets": {"d": {"0,1": 1.5, "1,0": -0.5}}}, "probability of '1,0'"),
    ({"payoff": SQUARE, "datasets": {"d": {"0,1": 0.5, "1,0": 0.4}}}, "dataset 'd': probabilities sum to 0.9"),
]


@pytest.mark.parametrize(("game", "message"), BAD_GAMES)
def test_bad_game_files_give_one_line_config_errors(tmp_path: Path, game: object, message: str) -> None:
    path = tmp_path / "game.json"
    path.write_text(game if isinstance(game, str) else json.dumps(game))
    with pytest.raises(ConfigError) as error:
        make_env(f"matrix:{path}")
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_game_file_and_unknown_game_are_named() -> None:
    with pytest.raises(ConfigError, match="matrix game file not found: /nonexistent/g.json"):
        check_env_name("matrix:/nonexistent/g.json")
    with pytest.raises(ConfigError, match="unknown matrix scenario 'xr'.*valid: mne, xor, or a path ending in .json"):
        check_env_name("matrix:xr")


def test_user_game_file_with_three_agents(tmp_path: Path) -> None:
    payoff = np.arange(8, dtype=float).reshape(2, 2, 2).tolist()
    path = _write_game(tmp_path, {"payoff": payoff, "datasets": {"corner": {"1,1,1": 1.0}}})
    env = make_env(f"matrix:{path}")
    assert env.spec.num_agents == 3 and env.spec.obs_dim == 3 and env.settings["payoff"] == payoff
    state, _ = env.reset(KEY)
    _, ts = env.step(KEY, state, jnp.array([1, 0, 1]))
    assert float(ts.reward) == 5.0
    data = load_builtin_dataset(f"matrix:{path}", "corner", num_episodes=10)
    assert (data.actions == 1).all() and (data.rewards == 7.0).all()


def test_env_names_include_the_games() -> None:
    names = list_envs()
    assert {"bridge", "matrix:xor", "matrix:mne", "smax:3m", "mpe:simple_spread"} <= set(names)
    assert check_env_name("bridge") == ("bridge", "")
    assert check_env_name("matrix:xor") == ("matrix", "xor")
    with pytest.raises(ConfigError, match="unknown environment 'bridges'.*smax:<scenario>.*bridge"):
        check_env_name("bridges")


def test_builtin_dataset_errors_name_the_valid_choices() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'best' for bridge; valid: optimal, mix"):
        load_builtin_dataset("bridge", "best")
    with pytest.raises(ConfigError, match="valid: 02, 02_20, 00_02_20, random"):
        load_builtin_dataset("matrix:xor", "03")
    assert builtin_dataset_names("smax:3m") == []
    with pytest.raises(ConfigError, match="'smax:3m' has no built-in datasets.*bridge"):
        load_builtin_dataset("smax:3m", "any")


# ---------------------------------------------------------------- Bridge


def _place(row0: int, col0: int, row1: int, col1: int) -> BridgeState:
    return BridgeState(jnp.array([cell_index((row0, col0)), cell_index((row1, col1))]), jnp.zeros((), jnp.int32))


@pytest.mark.parametrize(
    ("start", "actions", "end"),
    [
        ((1, 2, 1, 3), (4, 3), (1, 2, 1, 3)),  # swapping on the bridge: neither moves
        ((1, 2, 1, 3), (1, 2), (1, 2, 1, 3)),  # up and down from the bridge are blocked
        ((1, 2, 1, 3), (3, 3), (1, 1, 1, 2)),  # agent 1 follows agent 0 into the cell it leaves
        ((1, 2, 1, 3), (4, 0), (1, 2, 1, 3)),  # agent 0 runs into agent 1, who stays
        ((1, 1, 1, 3), (4, 3), (1, 1, 1, 3)),  # both move into (1, 2): neither moves
        ((0, 0, 2, 0), (1, 3), (0, 0, 2, 0)),  # out of the grid
        ((2, 5, 1, 0), (3, 1), (2, 5, 0, 0)),  # agent 0 is home and stays; agent 1 arrives
    ],
)
def test_bridge_moves(bridge, start, actions, end) -> None:
    state, ts = jax.jit(bridge.step)(KEY, _place(*start), jnp.array(actions))
    if bool(ts.done):
        assert end == (2, 5, 0, 0) and float(ts.reward) == 0.0
    else:
        assert tuple(np.asarray(state.cells)) == (cell_index(end[:2]), cell_index(end[2:]))


def test_bridge_observations_and_time_limit(bridge) -> None:
    spec = bridge.spec
    assert (spec.num_agents, spec.obs_dim, spec.state_dim, spec.num_actions) == (2, 8, 4, 5)
    assert spec.max_episode_steps == 50 and not spec.has_win
    state, ts = bridge.reset(KEY)
    np.testing.assert_allclose(ts.obs[0], [0.5, 0.4, 0.5, 0.6, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(ts.obs[1], [0.5, 0.6, 0.5, 0.4, 0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(ts.state, [0.5, 0.4, 0.5, 0.6])

    def stay(state, _):
        state, ts = bridge.step(KEY, state, jnp.zeros(2, jnp.int32))
        return state, (ts.reward, ts.done)

    state, (rewards, dones) = jax.lax.scan(stay, state, None, length=51)
    assert np.flatnonzero(dones).tolist() == [49]
    np.testing.assert_allclose(rewards, -0.1 * np.sqrt(10.0), rtol=1e-6)
    assert int(state.steps) == 1  # step 51 is the first of the next episode


def test_bridge_is_jittable_and_vmappable(bridge) -> None:
    num_envs = 16

    def random_step(carry, key):
        state, _ = carry
        actions = jax.random.randint(key, (num_envs, 2), 0, 5)
        state, ts = jax.vmap(bridge.step)(jax.random.split(key, num_envs), state, actions)
        return (state, ts), ts.reward

    @jax.jit
    def rollout(key):
        state, ts = jax.vmap(bridge.reset)(jax.random.split(key, num_envs))
        return jax.lax.scan(random_step, (state, ts), jax.random.split(key, 60))

    (_, ts), rewards = rollout(KEY)
    assert ts.obs.shape == (num_envs, 2, 8) and ts.avail.shape == (num_envs, 2, 5)
    assert rewards.shape == (60, num_envs) and (rewards <= 0).all()


HOME = (-1, -1)  # the search's node for "both agents at their goals"


def _search_optimal_return(env) -> float:
    """Shortest path (Dijkstra, cost = -reward) over joint positions, through the jitted step."""
    joint_actions = jnp.array(list(itertools.product(range(5), repeat=2)))
    step_all = jax.jit(jax.vmap(env.step, in_axes=(None, None, 0)))
    start_state, _ = env.reset(KEY)
    start = tuple(np.asarray(start_state.cells).tolist())
    best = {start: 0.0}
    frontier = [(0.0, start)]
    while frontier:
        cost, cells = heapq.heappop(frontier)
        if cells == HOME:
            return -cost
        if cost > best[cells]:
            continue
        state = BridgeState(jnp.array(cells), jnp.zeros((), jnp.int32))
        next_states, ts = step_all(KEY, state, joint_actions)
        outcomes = zip(np.asarray(next_states.cells), np.asarray(ts.reward), np.asarray(ts.done))
        for next_cells, reward, done in outcomes:
            node = HOME if done else tuple(next_cells.tolist())
            new_cost = cost - float(reward)
            if new_cost < best.get(node, np.inf):
                best[node] = new_cost
                heapq.heappush(frontier, (new_cost, node))
    raise AssertionError("the goals are unreachable")


def test_bridge_optimum_by_search_matches_the_optimal_dataset(bridge) -> None:
    searched = _search_optimal_return(bridge)
    assert searched == pytest.approx(-1.26, abs=0.03)
    assert searched == pytest.approx(optimal_return(), abs=1e-5)
    data = load_builtin_dataset("bridge", "optimal")
    returns = data.episode_returns()
    assert data.num_episodes == 500
    np.testing.assert_allclose(returns, searched, atol=1e-5)
    assert (data.episode_lengths() == 8).all() and not data.truncations.any()
    # both "who yields" plans appear: agent 0 backs off left, or agent 1 backs off right
    first_actions = {tuple(a) for a in data.actions[np.r_[0, np.cumsum(data.episode_lengths())[:-1]]]}
    assert first_actions == {(3, 3), (4, 4)}


def test_bridge_mix_dataset_return_statistics(mix) -> None:
    returns = mix.episode_returns()
    assert mix.num_episodes == 1000
    assert -11.0 < returns.mean() < -8.0 and 7.0 < returns.std() < 10.5  # docs/references.md (games): -9.46 +- 8.65
    lengths = mix.episode_lengths()
    truncated = mix.truncations[mix.episode_ends, 0] > 0
    assert (lengths[truncated] == 50).all() and 0.4 < truncated.mean() < 0.6
    np.testing.assert_array_equal(mix.terminals[mix.episode_ends, 0] > 0, ~truncated)
    assert not mix.terminals[~mix.episode_ends].any() and not mix.truncations[~mix.episode_ends].any()


def test_bridge_dataset_replays_through_the_environment(bridge, mix) -> None:
    rows = int(np.flatnonzero(mix.episode_ends)[9]) + 1  # the first ten episodes

    def replay(carry, actions):
        state, ts = carry
        next_state, next_ts = bridge.step(KEY, state, actions)
        return (next_state, next_ts), (ts.obs, ts.state, next_ts.reward, next_ts.done)

    carry = bridge.reset(KEY)
    _, (obs, states, rewards, dones) = jax.lax.scan(replay, carry, jnp.asarray(mix.actions[:rows]))
    np.testing.assert_allclose(obs, mix.observations[:rows])
    np.testing.assert_allclose(states, mix.states[:rows])
    np.testing.assert_allclose(rewards, mix.rewards[:rows, 0])
    np.testing.assert_array_equal(dones, mix.episode_ends[:rows])
