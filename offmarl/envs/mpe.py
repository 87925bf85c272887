"""MPE cooperative tasks from JaxMARL, with discrete or continuous actions.

`SCENARIOS` is static, so listing it imports nothing heavy; jax and jaxmarl are imported
only when an environment is built (tests/test_envs.py checks the ids against JaxMARL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from offmarl.envs.jaxmarl_adapter import JaxMARLAdapter

# offmarl name -> (JaxMARL registry id, its keyword arguments). Only fully cooperative,
# homogeneous tasks. "_continuous" takes JaxMARL's continuous actions: 5 forces in [0, 1].
SCENARIOS: dict[str, tuple[str, dict[str, str]]] = {
    "simple_spread": ("MPE_simple_spread_v3", {}),
    "simple_spread_continuous": ("MPE_simple_spread_v3", {"action_type": "Continuous"}),
}
CONTINUOUS = frozenset(name for name, (_, kwargs) in SCENARIOS.items() if kwargs.get("action_type") == "Continuous")


def scenario_names() -> list[str]:
    return list(SCENARIOS)


def make_mpe(scenario: str) -> JaxMARLAdapter:
    """Build `mpe:<scenario>`; the global state is the concatenation of all observations."""
    import jax.numpy as jnp

    from offmarl.envs.jaxmarl_adapter import JaxMARLAdapter, quiet_import_jaxmarl

    jaxmarl = quiet_import_jaxmarl()

    jaxmarl_id, kwargs = SCENARIOS[scenario]
    env = jaxmarl.make(jaxmarl_id, **kwargs)
    space = env.action_space(env.agents[0])
    num_agents, num_actions = env.num_agents, int(getattr(space, "n", 0))  # no masks with a box
    return JaxMARLAdapter(
        name=f"mpe:{scenario}",
        env=env,
        settings={"jaxmarl_id": jaxmarl_id, **kwargs},
        state_fn=lambda obs, stacked: stacked.reshape(-1),
        avail_fn=lambda env_state: jnp.ones((num_agents, num_actions), bool),
        won_fn=lambda team_reward, done: jnp.zeros((), bool),
        has_win=False,
    )
