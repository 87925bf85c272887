"""MPE cooperative tasks from JaxMARL (discrete actions)."""

from __future__ import annotations

import jax.numpy as jnp

from offmarl.envs.jaxmarl_adapter import JaxMARLAdapter, quiet_import_jaxmarl

# offmarl name -> JaxMARL registry id. Only fully cooperative, homogeneous tasks.
SCENARIOS: dict[str, str] = {"simple_spread": "MPE_simple_spread_v3"}


def scenario_names() -> list[str]:
    return list(SCENARIOS)


def make_mpe(scenario: str) -> JaxMARLAdapter:
    """Build `mpe:<scenario>`; the global state is the concatenation of all observations."""
    jaxmarl = quiet_import_jaxmarl()

    env = jaxmarl.make(SCENARIOS[scenario])
    num_agents, num_actions = env.num_agents, env.action_space(env.agents[0]).n
    return JaxMARLAdapter(
        name=f"mpe:{scenario}",
        env=env,
        settings={"jaxmarl_id": SCENARIOS[scenario]},
        state_fn=lambda obs, stacked: stacked.reshape(-1),
        avail_fn=lambda env_state: jnp.ones((num_agents, num_actions), bool),
        won_fn=lambda team_reward, done: jnp.zeros((), bool),
        has_win=False,
    )
