"""Bridge: two agents must pass each other over a one-lane bridge (docs/references.md, games).

    1ABBAA      B is blocked, every other cell is free (the digits only mark the two
    AAAAAA      goal corners). Agent 0 starts at (1, 2) and must reach (2, 5); agent 1
    AABBA2      starts at (1, 3) and must reach (0, 0).

Both agents start on the bridge (row 1, columns 2-3) facing each other, so one of them
has to back off the bridge and step aside. Rules and rewards are in docs/games.md. The
dynamics are tabulated once in NumPy (`bridge_tables`), and the jitted environment, the
optimal policy and the built-in datasets all read the same tables.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.envs.base import EnvSpec
from offmarl.types import TimeStep

GRID = ("1ABBAA", "AAAAAA", "AABBA2")
ROWS, COLS = len(GRID), len(GRID[0])
NUM_CELLS = ROWS * COLS
STARTS = ((1, 2), (1, 3))
GOALS = ((2, 5), (0, 0))
MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # stay, up, down, left, right
NUM_AGENTS, NUM_ACTIONS = 2, len(MOVES)
TIME_LIMIT = 50
DISTANCE_PENALTY = 0.1

Cell = tuple[int, int]


def is_free(cell: Cell) -> bool:
    """Inside the grid and not blocked."""
    row, col = cell
    return 0 <= row < ROWS and 0 <= col < COLS and GRID[row][col] != "B"


def cell_index(cell: Cell) -> int:
    return cell[0] * COLS + cell[1]


def resolve_moves(positions: tuple[Cell, Cell], actions: tuple[int, int]) -> tuple[Cell, Cell]:
    """One simultaneous move of both agents.

    An agent at its goal stays there. A move out of the grid or into a blocked cell
    fails (the agent stays). If the two agents would end in the same cell, or would swap
    cells, neither moves; an agent may follow the other into the cell it is leaving.
    """
    targets = []
    for agent, (position, action) in enumerate(zip(positions, actions)):
        target = (position[0] + MOVES[action][0], position[1] + MOVES[action][1])
        stays = position == GOALS[agent] or not is_free(target)
        targets.append(position if stays else target)
    first, second = targets
    if first == second or (first == positions[1] and second == positions[0]):
        return positions
    return first, second


def team_reward(positions: tuple[Cell, Cell]) -> float:
    """-0.1 x the agents' mean Euclidean distance to their goals (0 when both are there)."""
    distances = [math.dist(position, goal) for position, goal in zip(positions, GOALS)]
    return -DISTANCE_PENALTY * sum(distances) / NUM_AGENTS


def _normalised(cell: Cell) -> list[float]:
    return [cell[0] / (ROWS - 1), cell[1] / (COLS - 1)]


class BridgeTables(NamedTuple):
    """Everything about Bridge as arrays indexed by the two agents' flat cell indices."""

    next_cells: np.ndarray  # [NUM_CELLS, NUM_CELLS, A, A, 2] int32, cells after a joint action
    rewards: np.ndarray  # [NUM_CELLS, NUM_CELLS] float32, reward of a step that ends here
    terminal: np.ndarray  # [NUM_CELLS, NUM_CELLS] bool, both agents at their goals
    valid: np.ndarray  # [NUM_CELLS, NUM_CELLS] bool, two different free cells
    observations: np.ndarray  # [NUM_CELLS, NUM_CELLS, 2, 8] float32
    states: np.ndarray  # [NUM_CELLS, NUM_CELLS, 4] float32


@functools.cache
def bridge_tables() -> BridgeTables:
    """Tabulate the rules, rewards and observations for every pair of cells."""
    cells = [(row, col) for row in range(ROWS) for col in range(COLS)]
    shape = (NUM_CELLS, NUM_CELLS)
    next_cells = np.zeros(shape + (NUM_ACTIONS, NUM_ACTIONS, NUM_AGENTS), np.int32)
    rewards = np.zeros(shape, np.float32)
    terminal = np.zeros(shape, bool)
    valid = np.zeros(shape, bool)
    observations = np.zeros(shape + (NUM_AGENTS, 8), np.float32)
    states = np.zeros(shape + (4,), np.float32)
    agent_ids = np.eye(NUM_AGENTS, dtype=np.float32)
    for i, first in enumerate(cells):
        for j, second in enumerate(cells):
            positions = (first, second)
            valid[i, j] = first != second and is_free(first) and is_free(second)
            terminal[i, j] = positions == GOALS
            rewards[i, j] = team_reward(positions)
            states[i, j] = _normalised(first) + _normalised(second)
            for agent in range(NUM_AGENTS):
                own, other = positions[agent], positions[1 - agent]
                features = _normalised(own) + _normalised(other) + _normalised(GOALS[agent])
                observations[i, j, agent] = np.concatenate([features, agent_ids[agent]])
            for a0 in range(NUM_ACTIONS):
                for a1 in range(NUM_ACTIONS):
                    moved = resolve_moves(positions, (a0, a1))
                    next_cells[i, j, a0, a1] = [cell_index(moved[0]), cell_index(moved[1])]
    return BridgeTables(next_cells, rewards, terminal, valid, observations, states)


@functools.cache
def optimal_action_values() -> np.ndarray:
    """Q*[c0, c1, a0, a1]: the best undiscounted return after a joint action (no time limit).

    Value iteration from an optimistic zero: every step before the goal costs at least
    0.05, so the values of the valid states stop changing after finitely many sweeps.
    Invalid pairs of cells are never reached from valid ones; their entries are meaningless.
    """
    tables = bridge_tables()
    first, second = tables.next_cells[..., 0], tables.next_cells[..., 1]
    step_reward = tables.rewards[first, second]
    continues = ~tables.terminal[first, second]
    values = np.zeros((NUM_CELLS, NUM_CELLS))
    while True:
        q_values = step_reward + np.where(continues, values[first, second], 0.0)
        new_values = q_values.max(axis=(2, 3))
        if np.array_equal(new_values[tables.valid], values[tables.valid]):
            return q_values
        values = new_values


def start_cells() -> np.ndarray:
    """[2] int32 flat cell indices of the start positions."""
    return np.array([cell_index(cell) for cell in STARTS], np.int32)


def optimal_return() -> float:
    """The best return from the start positions (reached in 8 steps, far inside the limit)."""
    first, second = start_cells()
    return float(optimal_action_values()[first, second].max())


class BridgeState(NamedTuple):
    cells: jax.Array  # [2] int32, flat cell index row * COLS + col of each agent
    steps: jax.Array  # [] int32, steps taken in the current episode


class BridgeEnv:
    """The jittable Bridge environment; episodes end at the goals or after TIME_LIMIT steps."""

    def __init__(self) -> None:
        tables = bridge_tables()
        self._next_cells = jnp.asarray(tables.next_cells)
        self._rewards = jnp.asarray(tables.rewards)
        self._terminal = jnp.asarray(tables.terminal)
        self._observations = jnp.asarray(tables.observations)
        self._states = jnp.asarray(tables.states)
        self._start = jnp.asarray(start_cells())
        self.spec = EnvSpec(
            name="bridge",
            num_agents=NUM_AGENTS,
            obs_dim=tables.observations.shape[-1],
            state_dim=tables.states.shape[-1],
            num_actions=NUM_ACTIONS,
            max_episode_steps=TIME_LIMIT,
            has_win=False,
        )
        self.settings: dict[str, Any] = {
            "grid": list(GRID),
            "starts": [list(cell) for cell in STARTS],
            "goals": [list(cell) for cell in GOALS],
            "time_limit": TIME_LIMIT,
        }

    def _timestep(self, cells: jax.Array, reward: jax.Array, done: jax.Array) -> TimeStep:
        return TimeStep(
            obs=self._observations[cells[0], cells[1]],
            state=self._states[cells[0], cells[1]],
            avail=jnp.ones((NUM_AGENTS, NUM_ACTIONS), bool),
            reward=jnp.asarray(reward, jnp.float32),
            done=jnp.asarray(done, bool),
            won=jnp.zeros((), bool),
        )

    def reset(self, key: jax.Array) -> tuple[BridgeState, TimeStep]:
        """Both agents on the bridge at their fixed starts (the key is unused)."""
        state = BridgeState(cells=self._start, steps=jnp.zeros((), jnp.int32))
        return state, self._timestep(self._start, 0.0, False)

    def step(self, key: jax.Array, env_state: BridgeState, actions: jax.Array) -> tuple[BridgeState, TimeStep]:
        """Move both agents; after the last step the returned state is the next episode's start."""
        cells = env_state.cells
        moved = self._next_cells[cells[0], cells[1], actions[0], actions[1]]
        steps = env_state.steps + 1
        done = self._terminal[moved[0], moved[1]] | (steps >= TIME_LIMIT)
        next_cells = jnp.where(done, self._start, moved)
        next_state = BridgeState(cells=next_cells, steps=jnp.where(done, 0, steps))
        return next_state, self._timestep(next_cells, self._rewards[moved[0], moved[1]], done)


def make_bridge() -> BridgeEnv:
    """Build `bridge`."""
    return BridgeEnv()
