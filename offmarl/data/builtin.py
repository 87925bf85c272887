"""Offline datasets generated on the fly for the small games with known answers.

Matrix games: one-step episodes whose joint actions follow a distribution named in the
game's JSON file. Bridge: "optimal" (every episode from an optimal joint policy) and
"mix" (51% optimal and 49% uniformly random episodes). docs/games.md has the details.
"""

from __future__ import annotations

import numpy as np

from offmarl.data.dataset import OfflineDataset
from offmarl.envs import bridge, check_env_name, list_envs
from offmarl.envs.matrix import JointAction, MatrixGame, load_game
from offmarl.errors import ConfigError

DEFAULT_MATRIX_EPISODES = 1000
# name -> (episodes, fraction of episodes played by uniformly random actions)
BRIDGE_DATASETS: dict[str, tuple[int, float]] = {"optimal": (500, 0.0), "mix": (1000, 0.49)}


def builtin_dataset_names(env_name: str) -> list[str]:
    """The built-in datasets of an environment ([] for environments without any)."""
    family, scenario = check_env_name(env_name)
    if family == "matrix":
        return list(load_game(scenario).datasets)
    if family == "bridge":
        return list(BRIDGE_DATASETS)
    return []


def load_builtin_dataset(
    env_name: str, dataset_name: str, seed: int = 0, num_episodes: int | None = None
) -> OfflineDataset:
    """Generate a built-in dataset; deterministic given the seed."""
    names = builtin_dataset_names(env_name)
    if not names:
        with_data = [name for name in list_envs() if builtin_dataset_names(name)]
        raise ConfigError(
            f"environment {env_name!r} has no built-in datasets; those with some: "
            + ", ".join(with_data + ["matrix:<path>.json"])
        )
    if dataset_name not in names:
        raise ConfigError(f"unknown dataset {dataset_name!r} for {env_name}; valid: {', '.join(names)}")
    if num_episodes is not None and num_episodes < 1:
        raise ConfigError(f"num_episodes must be positive, got {num_episodes}")
    rng = np.random.default_rng(seed)
    family, scenario = check_env_name(env_name)
    if family == "matrix":
        game = load_game(scenario)
        episodes = DEFAULT_MATRIX_EPISODES if num_episodes is None else num_episodes
        return _matrix_dataset(game, game.datasets[dataset_name], episodes, rng)
    default_episodes, random_fraction = BRIDGE_DATASETS[dataset_name]
    episodes = default_episodes if num_episodes is None else num_episodes
    return _bridge_dataset(episodes, random_fraction, rng)


def allocate(distribution: dict[JointAction, float], num_episodes: int) -> dict[JointAction, int]:
    """Episode counts proportional to the probabilities (largest-remainder rounding)."""
    joints = list(distribution)
    exact = np.array([distribution[joint] for joint in joints]) * num_episodes
    counts = np.floor(exact).astype(int)
    # stable sort: ties go to the joint action listed first
    by_remainder = np.argsort(-(exact - counts), kind="stable")
    counts[by_remainder[: num_episodes - counts.sum()]] += 1
    return dict(zip(joints, counts.tolist()))


def _matrix_dataset(
    game: MatrixGame, distribution: dict[JointAction, float], num_episodes: int, rng: np.random.Generator
) -> OfflineDataset:
    counts = allocate(distribution, num_episodes)
    actions = np.array([joint for joint, count in counts.items() for _ in range(count)], np.int32)
    actions = actions[rng.permutation(num_episodes)]
    n, a = game.num_agents, game.num_actions
    rewards = game.payoff[tuple(actions.T)].astype(np.float32)
    return OfflineDataset(
        observations=np.broadcast_to(np.eye(n, dtype=np.float32), (num_episodes, n, n)).copy(),
        actions=actions,
        rewards=np.repeat(rewards[:, None], n, axis=1),
        terminals=np.ones((num_episodes, n), np.float32),
        truncations=np.zeros((num_episodes, n), np.float32),
        states=np.zeros((num_episodes, 1), np.float32),
        legals=np.ones((num_episodes, n, a), np.float32),
    )


def _optimal_joint_actions(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[E, 2] joint actions drawn uniformly among the optimal ones in each episode's cells."""
    q_values = bridge.optimal_action_values()[cells[:, 0], cells[:, 1]].reshape(len(cells), -1)
    optimal = q_values >= q_values.max(axis=1, keepdims=True) - 1e-9
    joint = np.argmax(np.where(optimal, rng.random(q_values.shape), -1.0), axis=1)
    return np.stack(np.divmod(joint, bridge.NUM_ACTIONS), axis=1).astype(np.int32)


def _bridge_dataset(num_episodes: int, random_fraction: float, rng: np.random.Generator) -> OfflineDataset:
    """Play all episodes in lockstep for the time limit, then keep each one's live steps."""
    tables = bridge.bridge_tables()
    num_random = round(random_fraction * num_episodes)
    plays_randomly = rng.permutation(np.arange(num_episodes) < num_random)
    num_agents, horizon = bridge.NUM_AGENTS, bridge.TIME_LIMIT
    cells = np.tile(bridge.start_cells(), (num_episodes, 1))
    running = np.ones(num_episodes, bool)
    step_cells, step_actions, step_rewards, step_running, step_terminal = [], [], [], [], []
    for _ in range(horizon):
        random_actions = rng.integers(0, bridge.NUM_ACTIONS, (num_episodes, num_agents), dtype=np.int32)
        actions = np.where(plays_randomly[:, None], random_actions, _optimal_joint_actions(cells, rng))
        moved = tables.next_cells[cells[:, 0], cells[:, 1], actions[:, 0], actions[:, 1]]
        step_cells.append(cells)
        step_actions.append(actions)
        step_rewards.append(tables.rewards[moved[:, 0], moved[:, 1]])
        step_running.append(running)
        step_terminal.append(tables.terminal[moved[:, 0], moved[:, 1]])
        running = running & ~step_terminal[-1]
        cells = moved

    # [episodes, steps, ...]; boolean indexing keeps episode-major, time-ordered rows
    keep = np.stack(step_running, axis=1)
    cells = np.stack(step_cells, axis=1)[keep]
    terminal = np.stack(step_terminal, axis=1)[keep]
    last_step = np.zeros((num_episodes, horizon), bool)
    last_step[:, -1] = True
    truncated = last_step[keep] & ~terminal

    def per_agent(flags: np.ndarray) -> np.ndarray:
        return np.repeat(flags[:, None], num_agents, axis=1).astype(np.float32)

    return OfflineDataset(
        observations=tables.observations[cells[:, 0], cells[:, 1]],
        actions=np.stack(step_actions, axis=1)[keep],
        rewards=per_agent(np.stack(step_rewards, axis=1)[keep]),
        terminals=per_agent(terminal),
        truncations=per_agent(truncated),
        states=tables.states[cells[:, 0], cells[:, 1]],
        legals=np.ones((len(cells), num_agents, bridge.NUM_ACTIONS), np.float32),
    )
