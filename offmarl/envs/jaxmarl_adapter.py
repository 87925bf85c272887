"""Adapters from JaxMARL's dict-of-agents API to offmarl's stacked TimeStep."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

from offmarl.envs.base import ActionSpace, BoxActions, DiscreteActions, EnvSpec
from offmarl.types import TimeStep


def quiet_import_jaxmarl() -> Any:
    """Import jaxmarl without the banner it prints on stdout (stdout carries our JSON).

    Importing jaxmarl also resets `sys.stdout` and `sys.stderr` to the process's
    original streams, so file descriptor 1 is muted and both streams are restored.
    """
    if "jaxmarl" in sys.modules:
        return sys.modules["jaxmarl"]
    streams = sys.stdout, sys.stderr
    sys.stdout.flush()
    saved_fd = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            import jaxmarl
    finally:
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout, sys.stderr = streams
    return jaxmarl


def action_space_of(space: Any) -> ActionSpace:
    """offmarl's action space for a JaxMARL space: Discrete(n) or a Box with bounds."""
    if hasattr(space, "n"):
        return DiscreteActions(int(space.n))
    shape = tuple(space.shape)
    low, high = (jnp.broadcast_to(jnp.asarray(b, jnp.float32), shape).reshape(-1) for b in (space.low, space.high))
    return BoxActions(tuple(float(x) for x in low), tuple(float(x) for x in high))


class JaxMARLAdapter:
    """Wraps a JaxMARL environment whose agents share observation and action sizes.

    The differences between families are three small functions: where the global
    state comes from, which actions are available, and what counts as a win.
    """

    def __init__(
        self,
        name: str,
        env: Any,
        settings: dict[str, Any],
        state_fn: Callable[[dict[str, jax.Array], jax.Array], jax.Array],
        avail_fn: Callable[[Any], jax.Array],
        won_fn: Callable[[jax.Array, jax.Array], jax.Array],
        has_win: bool,
    ) -> None:
        self._env = env
        self.settings = settings
        self._state_fn = state_fn
        self._avail_fn = avail_fn
        self._won_fn = won_fn
        self.agents = list(env.agents)
        # Shapes only: tracing a reset is much cheaper than compiling one (MABrax: seconds).
        _, first = jax.eval_shape(self.reset, jax.random.PRNGKey(0))
        space = action_space_of(env.action_space(self.agents[0]))
        self.spec = EnvSpec(
            name=name,
            num_agents=len(self.agents),
            obs_dim=int(first.obs.shape[-1]),
            state_dim=int(first.state.shape[-1]),
            num_actions=space.num_actions if isinstance(space, DiscreteActions) else 0,
            max_episode_steps=int(env.max_steps),
            has_win=has_win,
            action_space=space,
        )

    def _stack(self, obs: dict[str, jax.Array]) -> jax.Array:
        return jnp.stack([obs[a] for a in self.agents]).astype(jnp.float32)

    def _timestep(self, obs, env_state, reward, done, won) -> TimeStep:
        stacked = self._stack(obs)
        return TimeStep(
            obs=stacked,
            state=self._state_fn(obs, stacked).astype(jnp.float32),
            avail=self._avail_fn(env_state).astype(bool),
            reward=jnp.asarray(reward, jnp.float32),
            done=jnp.asarray(done, bool),
            won=jnp.asarray(won, bool),
        )

    def reset(self, key: jax.Array) -> tuple[Any, TimeStep]:
        obs, env_state = self._env.reset(key)
        return env_state, self._timestep(obs, env_state, 0.0, False, False)

    def step(self, key: jax.Array, env_state: Any, actions: jax.Array) -> tuple[Any, TimeStep]:
        space = self.spec.action_space
        if isinstance(space, BoxActions):  # a Gaussian policy's samples may leave the box
            actions = jnp.clip(actions, jnp.asarray(space.low), jnp.asarray(space.high))
        action_dict = {a: actions[i] for i, a in enumerate(self.agents)}
        obs, env_state, rewards, dones, _ = self._env.step(key, env_state, action_dict)
        team_reward = jnp.mean(jnp.stack([rewards[a] for a in self.agents]))
        done = dones["__all__"]
        won = self._won_fn(team_reward, done)
        return env_state, self._timestep(obs, env_state, team_reward, done, won)
