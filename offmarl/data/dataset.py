"""The in-memory offline dataset, in OG-MARL's vault layout (time-major, agents stacked).

Row t holds what agent i saw and did at step t: o_t, a_t, the reward r_t of that step and
whether the episode terminated (or was truncated) with it. The next row holds o_{t+1}; after
the last step of an episode the next row is the first step of the next episode. A dataset
holds whole episodes only, so its last row always ends an episode.

Discrete actions are int32 [T, N] with legal-action masks [T, N, A]; box (continuous)
actions are float32 [T, N, D] with masks of width 0 ([T, N, 0]: nothing is masked), the
in-memory form of OG-MARL's continuous vaults, which have no infos.legals.
"""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import numpy as np


class OfflineDataset(NamedTuple):
    """Whole episodes of a cooperative game, T rows, N agents."""

    observations: np.ndarray  # [T, N, obs_dim] float32
    actions: np.ndarray  # [T, N] int32, or [T, N, D] float32 with box actions
    rewards: np.ndarray  # [T, N] float32 (the team reward, repeated per agent)
    terminals: np.ndarray  # [T, N] float32, 1 where the episode terminated with this step
    truncations: np.ndarray  # [T, N] float32, 1 where it was cut off (time limit) with this step
    states: np.ndarray  # [T, state_dim] float32 (OG-MARL: infos["state"])
    legals: np.ndarray  # [T, N, num_actions] float32, available actions (infos["legals"]); [T, N, 0] with a box

    @property
    def continuous(self) -> bool:
        """Whether the actions are box (continuous) vectors: [T, N, D] rather than [T, N]."""
        return self.actions.ndim == 3

    @property
    def num_transitions(self) -> int:
        return int(self.actions.shape[0])

    @property
    def episode_ends(self) -> np.ndarray:
        """[T] bool: the episode ends with this row (terminated or truncated)."""
        return (self.terminals.max(axis=1) > 0) | (self.truncations.max(axis=1) > 0)

    def episode_returns(self) -> np.ndarray:
        """Undiscounted team return of every episode, in order."""
        ends = np.flatnonzero(self.episode_ends)
        team = self.rewards[:, 0].astype(np.float64)
        cumulative = np.concatenate([[0.0], np.cumsum(team)])
        starts = np.concatenate([[0], ends[:-1] + 1])
        return (cumulative[ends + 1] - cumulative[starts]).astype(np.float32)

    def discounted_return_bound(self, gamma: float) -> float:
        """The largest |discounted return| a sequence of this dataset's team rewards can sum
        to, max |r| / (1 - gamma): no value learned in-sample from these rows can exceed it.
        Infinite when gamma >= 1."""
        largest = float(np.abs(self.rewards[:, 0]).max()) if len(self.rewards) else 0.0
        return math.inf if gamma >= 1.0 else largest / (1.0 - gamma)

    def episode_lengths(self) -> np.ndarray:
        ends = np.flatnonzero(self.episode_ends)
        return np.diff(np.concatenate([[-1], ends]))

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ends.sum())

    def fingerprint(self) -> str:
        """SHA-256 of the arrays' contents, shapes and dtypes: equal exactly when the data is."""
        digest = hashlib.sha256()
        for name, array in zip(self._fields, self):
            array = np.ascontiguousarray(array)
            digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()


def action_dtype(continuous: bool) -> type[np.generic]:
    """The dtype actions are held in: float32 for box actions, int32 for discrete ones."""
    return np.float32 if continuous else np.int32


def concatenate(datasets: list[OfflineDataset]) -> OfflineDataset:
    """Join datasets of the same game along time (each holds whole episodes)."""
    return OfflineDataset(*(np.concatenate(parts, axis=0) for parts in zip(*datasets)))
