"""The environment loop, written once: a policy acts in `num_envs` auto-resetting
environments for a number of steps, inside `lax.scan`.

Training (the fused runner's unrolls), evaluation (first episodes of fresh
environments) and data collection (whole episodes, epsilon-mixed) all run `run_steps`
and read what they need from its per-step records. The policy owns its action
distribution (`Policy.action_distribution`); this loop only asks it to sample, score and
pick the greedy action, so discrete and continuous actions take the same path.

Keys: the carry holds one key; every step splits it into (next, act, env), and acting
with exploration splits the act key again into (sample, random, explore).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from offmarl.algos.base import Policy
from offmarl.envs.base import BoxActions, MultiAgentEnv
from offmarl.types import TimeStep


class LoopCarry(NamedTuple):
    """What the loop carries from step to step, every leaf with a leading [num_envs]."""

    env_state: Any
    timestep: TimeStep  # the observation to act on next
    starts: jax.Array  # [E] bool: `timestep` begins an episode
    policy_state: jax.Array  # [E, N, H] actor memory
    episode_return: jax.Array  # [E] return of the running episode so far
    episode_length: jax.Array  # [E] int32 steps of the running episode so far
    rng: jax.Array  # one key (no leading axis)


class StepRecord(NamedTuple):
    """One step of every environment: what was seen and done, and what followed."""

    obs: jax.Array  # [E, N, obs_dim] acted on
    state: jax.Array  # [E, state_dim]
    avail: jax.Array  # [E, N, A] bool
    starts: jax.Array  # [E] bool
    policy_state: jax.Array  # [E, N, H] memory before acting
    actions: jax.Array  # [E, N] int32, or [E, N, D] float with box actions
    log_probs: jax.Array  # [E, N] log-probability under the policy's own distribution (before any
    #                      epsilon mixing, and the stochastic policy's even when acting greedily)
    reward: jax.Array  # [E] team reward of the step
    done: jax.Array  # [E] bool, the episode ended with this step
    won: jax.Array  # [E] bool
    episode_return: jax.Array  # [E] the episode's return including this step
    episode_length: jax.Array  # [E] int32 the episode's length including this step


def fresh_carry(env: MultiAgentEnv, policy: Policy, num_envs: int, rng: jax.Array) -> LoopCarry:
    """Fresh episodes in `num_envs` environments; `rng` seeds the resets and the loop."""
    reset_rng, loop_rng = jax.random.split(rng)
    env_state, timestep = jax.vmap(env.reset)(jax.random.split(reset_rng, num_envs))
    return LoopCarry(env_state, timestep, jnp.ones((num_envs,), bool), policy.initial_policy_state((num_envs,)),
                     jnp.zeros((num_envs,)), jnp.zeros((num_envs,), jnp.int32), loop_rng)


def random_actions(env: MultiAgentEnv, rng: jax.Array, avail: jax.Array) -> jax.Array:
    """Uniformly random actions: over the available ones, or uniform in the box."""
    space = env.spec.action_space
    if isinstance(space, BoxActions):
        low, high = jnp.asarray(space.low), jnp.asarray(space.high)
        return jax.random.uniform(rng, avail.shape[:-1] + (space.dim,), minval=low, maxval=high)
    return jax.random.categorical(rng, jnp.where(avail, 0.0, -jnp.inf))


def act(
    env: MultiAgentEnv, policy: Policy, params: Any, carry: LoopCarry, rng: jax.Array,
    greedy: bool | jax.Array = False, epsilon: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(actions, their log-probabilities under the policy, next memory) for one step.

    `greedy` takes the distribution's mode instead of a sample (a Python bool or a traced
    one). With `epsilon` (traced), each agent's action is replaced by a uniformly random
    one with that probability; without it no exploration is compiled in.
    """
    ts = carry.timestep
    dist, memory = policy.action_distribution(params, carry.policy_state, ts.obs, ts.avail, carry.starts)
    if epsilon is None:
        sample_rng = rng
    else:
        sample_rng, random_rng, explore_rng = jax.random.split(rng, 3)
    if isinstance(greedy, bool):
        actions = dist.mode() if greedy else dist.sample(sample_rng)
    else:
        actions = jnp.where(greedy, dist.mode(), dist.sample(sample_rng))
    if epsilon is not None:
        explore = jax.random.uniform(explore_rng, ts.obs.shape[:-1]) < epsilon  # [E, N]
        mask = explore.reshape(explore.shape + (1,) * (actions.ndim - explore.ndim))
        actions = jnp.where(mask, random_actions(env, random_rng, ts.avail), actions).astype(actions.dtype)
    return actions, dist.log_prob(actions), memory


def run_steps(
    env: MultiAgentEnv, policy: Policy, params: Any, carry: LoopCarry, num_steps: int,
    greedy: bool | jax.Array = False, epsilon: jax.Array | None = None,
) -> tuple[LoopCarry, StepRecord]:
    """`num_steps` steps of every environment in `carry`: the next carry and a time-major
    StepRecord ([num_steps, E, ...]). Environments reset themselves after a done."""
    num_envs = carry.starts.shape[0]

    def step(carry: LoopCarry, _: None) -> tuple[LoopCarry, StepRecord]:
        rng, act_rng, env_rng = jax.random.split(carry.rng, 3)
        actions, log_probs, memory = act(env, policy, params, carry, act_rng, greedy, epsilon)
        env_state, next_ts = jax.vmap(env.step)(jax.random.split(env_rng, num_envs), carry.env_state, actions)
        episode_return = carry.episode_return + next_ts.reward
        episode_length = carry.episode_length + 1
        ts = carry.timestep
        record = StepRecord(ts.obs, ts.state, ts.avail, carry.starts, carry.policy_state, actions, log_probs,
                            next_ts.reward, next_ts.done, next_ts.won, episode_return, episode_length)
        running = ~next_ts.done
        carry = LoopCarry(env_state, next_ts, next_ts.done, memory, episode_return * running,
                          episode_length * running, rng)
        return carry, record

    return jax.lax.scan(step, carry, None, length=num_steps)


def first_episode_mask(done: jax.Array) -> jax.Array:
    """[T, E] bool: the steps of each environment's first episode (up to its first done)."""
    ended_before = jnp.cumsum(done, axis=0) - done  # dones strictly before step t
    return ended_before == 0
