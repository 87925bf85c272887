"""Data types shared by environments, algorithms and runners."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax


class TimeStep(NamedTuple):
    """What every environment adapter returns, agents stacked on the leading axis.

    After the last step of an episode the environment has already reset, so
    `obs`, `state` and `avail` belong to the next episode while `reward`,
    `done` and `won` describe the step that just ended.
    """

    obs: jax.Array  # [num_agents, obs_dim] float32
    state: jax.Array  # [state_dim] float32, the global state
    avail: jax.Array  # [num_agents, num_actions] bool, available actions
    reward: jax.Array  # [] float32, team reward of the step
    done: jax.Array  # [] bool, the episode ended with this step
    won: jax.Array  # [] bool, the episode ended in a win


class Rollout(NamedTuple):
    """A time-major unroll of T steps from B environments.

    Observation-like fields hold T + 1 entries: the last one is the bootstrap.
    """

    obs: jax.Array  # [T+1, B, N, obs_dim]
    state: jax.Array  # [T+1, B, state_dim]
    avail: jax.Array  # [T+1, B, N, A] bool
    starts: jax.Array  # [T, B] bool, obs_t is the first of its episode
    policy_state: jax.Array  # [T, B, N, H] actor memory before step t (H = 0 if stateless)
    actions: jax.Array  # [T, B, N] int32, or [T, B, N, D] float32 with box actions
    behaviour_log_probs: jax.Array  # [T, B, N] log mu_i(a_i | o_i)
    rewards: jax.Array  # [T, B]
    dones: jax.Array  # [T, B] bool
    extras: Any = None  # what the algorithm's prepare_batch adds, arrays with leading [T, B]


class TransitionBatch(NamedTuple):
    """A minibatch of single-step transitions sampled from an offline dataset.

    Box (continuous) actions: `actions` and `next_actions` are float32 [B, N, D] and the
    masks `avail`/`next_avail` have width A = 0 ([B, N, 0]: nothing is masked), exactly
    as the environments' TimeStep.avail is for a box. Code that reads masks (a masked
    categorical) only exists for discrete actions, so no field is ever absent or None.
    """

    obs: jax.Array  # [B, N, obs_dim]
    state: jax.Array  # [B, state_dim]
    avail: jax.Array  # [B, N, A] bool (A = 0 with box actions)
    actions: jax.Array  # [B, N] int32, or [B, N, D] float32 with box actions
    reward: jax.Array  # [B] team reward
    done: jax.Array  # [B] float, 1 where the episode terminated (no bootstrap)
    next_obs: jax.Array  # [B, N, obs_dim]
    next_state: jax.Array  # [B, state_dim]
    next_avail: jax.Array  # [B, N, A] bool (A = 0 with box actions)
    next_actions: jax.Array  # like `actions`: the dataset's next joint action (garbage where done)
    valid: jax.Array  # [B] float, 0 where a time limit cut the episode (next_* is unknown)
