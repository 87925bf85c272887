"""Multi-agent MuJoCo tasks from JaxMARL's MABrax (`pip install "jaxmarl[mabrax]"`), box actions.

Each agent controls some joints of one brax robot (e.g. hopper_3x1: 3 agents, 1 joint
each) and sees part of the robot's observation; all agents get the robot's reward.
Observation sizes differ between agents, so the environment is built with JaxMARL's
`homogenisation_method="max"`: every agent's vector has num_agents + (largest agent
observation) entries, a 1 at the agent's index and, from the entry after that 1, the
agent's own observation, zero-padded. (JaxMARL 0.2.0 writes the observation from
index agent_idx + 1, not from num_agents, so it overwrites the id's trailing zeros and
sits at a per-agent offset; offmarl keeps JaxMARL's layout.) The global state is the
robot's full brax observation, which holds every agent's entries once. Actions are
Box(-1, 1) per agent, of the same size for all agents of a task; no masks, no wins.
Episodes end when the robot falls (brax's termination) or after 1000 steps.

JaxMARL 0.2.0 marks MABrax deprecated (it runs on brax, no longer maintained); its
warning and brax's are replaced by one line, the first time an environment is built;
MuJoCo's warnings while brax loads a model file are dropped.
`SCENARIOS` is static, so listing it imports nothing heavy (tests/test_mabrax.py
checks it against JaxMARL's registry; humanoid_9|8 is left out).
"""

from __future__ import annotations

import sys
import warnings
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jax

    from offmarl.envs.jaxmarl_adapter import JaxMARLAdapter

# offmarl name -> JaxMARL registry id.
SCENARIOS: dict[str, str] = {
    "hopper_3x1": "hopper_3x1",
    "halfcheetah_6x1": "halfcheetah_6x1",
    "ant_4x2": "ant_4x2",
    "walker2d_2x3": "walker2d_2x3",
}
SETTINGS: dict[str, Any] = {"homogenisation_method": "max", "episode_length": 1000, "backend": "positional"}
"""The keyword arguments every task is built with (JaxMARL's defaults, besides "max")."""


def scenario_names() -> list[str]:
    return list(SCENARIOS)


@cache
def _note_deprecation() -> None:
    """Say once per process what JaxMARL's and brax's (silenced) warnings say."""
    print("note: MABrax is deprecated in JaxMARL 0.2.0 (brax is unmaintained); offmarl uses it as is",
          file=sys.stderr)


class _WithGlobalState:
    """A MABrax environment whose observations also carry the robot's full observation
    as "world_state" (SMAX's key for its global state), with `max_steps` set."""

    def __init__(self, env: Any) -> None:
        self._env = env
        self.agents = list(env.agents)
        self.max_steps = int(env.episode_length)

    def action_space(self, agent: str) -> Any:
        return self._env.action_space(agent)

    def reset(self, key: jax.Array) -> tuple[dict[str, jax.Array], Any]:
        obs, state = self._env.reset(key)
        return {**obs, "world_state": state.obs}, state

    def step(self, key: jax.Array, state: Any, actions: dict[str, jax.Array]) -> tuple[Any, ...]:
        obs, state, rewards, dones, infos = self._env.step(key, state, actions)
        return {**obs, "world_state": state.obs}, state, rewards, dones, infos


def make_mabrax(scenario: str) -> JaxMARLAdapter:
    """Build `mabrax:<scenario>`; the team reward is the robot's (the same for every agent)."""
    import jax.numpy as jnp

    from offmarl.envs.jaxmarl_adapter import JaxMARLAdapter, quiet_import_jaxmarl

    jaxmarl = quiet_import_jaxmarl()
    import mujoco

    jaxmarl_id = SCENARIOS[scenario]
    # MuJoCo's warnings about brax's model files (halfcheetah: "settotalmass is deprecated")
    # would go to stderr and to MUJOCO_LOG.TXT in the working directory.
    mujoco_warning = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: None)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "MABrax is deprecated", DeprecationWarning)
            warnings.filterwarnings("ignore", "Brax System, piplines and environments", UserWarning)
            env = jaxmarl.make(jaxmarl_id, **SETTINGS)
    finally:
        mujoco.set_mju_user_warning(mujoco_warning)
    _note_deprecation()
    num_agents = env.num_agents
    return JaxMARLAdapter(
        name=f"mabrax:{scenario}",
        env=_WithGlobalState(env),
        settings={"jaxmarl_id": jaxmarl_id, **SETTINGS},
        state_fn=lambda obs, stacked: obs["world_state"],
        avail_fn=lambda env_state: jnp.ones((num_agents, 0), bool),
        won_fn=lambda team_reward, done: jnp.zeros((), bool),
        has_win=False,
    )
