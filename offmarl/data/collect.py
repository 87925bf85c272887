"""Record whole episodes of a policy into an OfflineDataset.

Environments run vmapped inside a jitted `lax.scan`; each one contributes its first k
episodes (k fixed in advance, whatever their length), so short episodes are not
over-represented. Acting is epsilon-mixed: with probability epsilon an agent takes a
uniformly random *available* action (with box actions: uniform in the box) instead of the
policy's. Box actions are recorded as the environment applies them: clipped to the box.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.acting.loop import LoopCarry, fresh_carry, run_steps
from offmarl.algos.base import Policy
from offmarl.data.dataset import OfflineDataset, action_dtype
from offmarl.envs.base import BoxActions, MultiAgentEnv
from offmarl.errors import ConfigError

DEFAULT_NUM_ENVS = 64

ProgressCallback = Callable[[int, int], None]
"""Called with (episodes recorded so far, episodes wanted)."""


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal non-negative integers, larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


class CollectedEpisodes(NamedTuple):
    """A dataset with each episode's outcome as the environment loop measured it."""

    dataset: OfflineDataset
    returns: np.ndarray  # [episodes] team return, summed on the device while acting
    wins: np.ndarray | None  # [episodes] bool, the env's own win flag (None without one)

    @property
    def win_rate(self) -> float | None:
        return None if self.wins is None else float(self.wins.mean())

    @property
    def mean_length(self) -> float:
        return self.dataset.num_transitions / max(self.dataset.num_episodes, 1)


def check_epsilon(epsilon: float) -> None:
    if not 0.0 <= epsilon <= 1.0:
        raise ConfigError(f"epsilon={epsilon} is invalid: must be in [0, 1]")


def check_episodes(episodes: int) -> None:
    if episodes <= 0:
        raise ConfigError(f"episodes={episodes} is invalid: must be a positive integer")


@partial(jax.jit, static_argnums=(0, 1, 2))
def _fresh_envs(env: MultiAgentEnv, policy: Policy, num_envs: int, rng: jax.Array) -> LoopCarry:
    return fresh_carry(env, policy, num_envs, rng)


def _applied_actions(env: MultiAgentEnv, actions: jax.Array) -> jax.Array:
    """The actions the environment carries out: box actions clipped to the box (the adapters
    clip what a Gaussian policy samples outside it), discrete ones unchanged."""
    space = env.spec.action_space
    if isinstance(space, BoxActions):
        return jnp.clip(actions, jnp.asarray(space.low), jnp.asarray(space.high))
    return actions


@partial(jax.jit, static_argnums=(0, 1))
def _rollout_chunk(
    env: MultiAgentEnv, policy: Policy, params: Any, carry: LoopCarry, epsilon: jax.Array, greedy: jax.Array,
) -> tuple[LoopCarry, dict[str, jax.Array]]:
    """`max_episode_steps` steps of every environment: the next carry and per-step records.

    Compiled once per (env, policy, num_envs); params, epsilon and greedy are traced.
    """
    max_steps = env.spec.max_episode_steps
    carry, steps = run_steps(env, policy, params, carry, max_steps, greedy=greedy, epsilon=epsilon)
    record = {
        "obs": steps.obs, "state": steps.state, "avail": steps.avail,
        "actions": _applied_actions(env, steps.actions),
        "reward": steps.reward, "done": steps.done, "won": steps.won,
        # JaxMARL reports a time limit as a plain done; a non-won episode that
        # lasted the whole limit is recorded as truncated.
        "truncated": steps.done & (steps.episode_length >= max_steps) & ~steps.won,
        "episode_return": steps.episode_return,
    }
    return carry, record


class EpisodeCollector:
    """Collects episodes of one policy network on `num_envs` copies of one environment.

    The rollout compiles once per (env, policy, num_envs), so collecting with other
    parameters, seeds, epsilons or acting modes does not recompile.
    """

    def __init__(self, env: MultiAgentEnv, policy: Policy, num_envs: int = DEFAULT_NUM_ENVS) -> None:
        if num_envs <= 0:
            raise ConfigError(f"num_envs={num_envs} is invalid: must be a positive integer")
        self.env, self.policy, self.num_envs = env, policy, num_envs

    def collect(
        self, params: Any, num_episodes: int, seed: int, epsilon: float = 0.0, greedy: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> CollectedEpisodes:
        """Record `num_episodes` whole episodes (every environment its first few)."""
        check_episodes(num_episodes)
        check_epsilon(epsilon)
        quotas = np.array(split_evenly(num_episodes, self.num_envs))
        carry = _fresh_envs(self.env, self.policy, self.num_envs, jax.random.PRNGKey(seed))
        chunks: list[dict[str, np.ndarray]] = []
        finished = np.zeros(self.num_envs, np.int64)
        while (finished < quotas).any():
            carry, record = _rollout_chunk(
                self.env, self.policy, params, carry, jnp.float32(epsilon), jnp.bool_(greedy),
            )
            chunks.append(jax.device_get(record))
            finished += chunks[-1]["done"].sum(axis=0)
            if on_progress is not None:
                on_progress(int(np.minimum(finished, quotas).sum()), num_episodes)
        steps = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
        return self._assemble(steps, quotas)

    def _assemble(self, steps: dict[str, np.ndarray], quotas: np.ndarray) -> CollectedEpisodes:
        """Cut each environment's stream after its quota of episodes and join them."""
        rows, ends = [], []
        for env_index, quota in enumerate(quotas):
            if quota == 0:
                continue
            done_rows = np.flatnonzero(steps["done"][:, env_index])
            rows.append(np.arange(done_rows[quota - 1] + 1) * self.num_envs + env_index)
            ends.append(done_rows[:quota] * self.num_envs + env_index)
        take = np.concatenate(rows)
        end_rows = np.concatenate(ends)

        def flat(key: str) -> np.ndarray:
            field = steps[key]  # (an explicit leading size: box actions' masks hold no elements)
            return field.reshape((field.shape[0] * field.shape[1],) + field.shape[2:])

        def per_agent(team: np.ndarray) -> np.ndarray:
            return np.repeat(team[take, None], self.env.spec.num_agents, axis=1).astype(np.float32)

        truncated = flat("truncated")
        dataset = OfflineDataset(
            observations=flat("obs")[take].astype(np.float32),
            actions=flat("actions")[take].astype(action_dtype(self.env.spec.continuous)),
            rewards=per_agent(flat("reward")),
            terminals=per_agent(flat("done") & ~truncated),
            truncations=per_agent(truncated),
            states=flat("state")[take].astype(np.float32),
            legals=flat("avail")[take].astype(np.float32),  # [T, N, 0] with box actions
        )
        wins = flat("won")[end_rows] if self.env.spec.has_win else None
        return CollectedEpisodes(dataset, flat("episode_return")[end_rows].astype(np.float32), wins)


def collect_episodes(
    env: MultiAgentEnv, policy: Policy, params: Any, num_episodes: int, seed: int,
    epsilon: float = 0.0, greedy: bool = False, num_envs: int = DEFAULT_NUM_ENVS,
) -> OfflineDataset:
    """`num_episodes` whole episodes of `policy` (epsilon-mixed with random available actions)."""
    collector = EpisodeCollector(env, policy, num_envs)
    return collector.collect(params, num_episodes, seed, epsilon, greedy).dataset
