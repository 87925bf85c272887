"""SMAX (JaxMARL's JAX re-implementation of SMAC) against the scripted heuristic enemy.

Listing the maps imports nothing heavy: `MAP_NAMES` is a static copy of the maps JaxMARL
0.2.0 ships (tests/test_envs.py checks it against JaxMARL). jax and jaxmarl are imported
only when an environment is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jax

    from offmarl.envs.jaxmarl_adapter import JaxMARLAdapter

# JaxMARL's own SMAX baselines use these settings; keeping them makes results comparable.
DEFAULT_SETTINGS: dict[str, Any] = {
    "see_enemy_actions": True,
    "walls_cause_death": True,
    "attack_mode": "closest",
}

# The keys of jaxmarl.environments.smax.smax_env.MAP_NAME_TO_SCENARIO (JaxMARL 0.2.0), in order.
MAP_NAMES: tuple[str, ...] = (
    "3m",
    "2s3z",
    "25m",
    "3s5z",
    "8m",
    "5m_vs_6m",
    "10m_vs_11m",
    "27m_vs_30m",
    "3s5z_vs_3s6z",
    "3s_vs_5z",
    "6h_vs_8z",
    "smacv2_5_units",
    "smacv2_10_units",
    "smacv2_20_units",
)


def won(team_reward: Any, done: Any) -> Any:
    """The win flag JaxMARL does not give: per-step damage reward is below 1 and the +1 win
    bonus only comes on the last step. Works on jax and NumPy arrays alike."""
    return done & (team_reward >= 1.0)


def scenario_names() -> list[str]:
    """Every SMAX scenario JaxMARL ships (without importing JaxMARL)."""
    return list(MAP_NAMES)


def make_smax(map_name: str) -> JaxMARLAdapter:
    """Build `smax:<map_name>`: allies are the learning agents, the enemy is scripted."""
    import jax.numpy as jnp

    from offmarl.envs.jaxmarl_adapter import JaxMARLAdapter, quiet_import_jaxmarl

    jaxmarl = quiet_import_jaxmarl()
    from jaxmarl.environments.smax import map_name_to_scenario

    env = jaxmarl.make(
        "HeuristicEnemySMAX", scenario=map_name_to_scenario(map_name), **DEFAULT_SETTINGS
    )
    agents = list(env.agents)

    def avail_fn(env_state: Any) -> jax.Array:
        masks = env.get_avail_actions(env_state)
        return jnp.stack([masks[a] for a in agents])

    return JaxMARLAdapter(
        name=f"smax:{map_name}",
        env=env,
        settings={"scenario": map_name, **DEFAULT_SETTINGS},
        state_fn=lambda obs, stacked: obs["world_state"],
        avail_fn=avail_fn,
        won_fn=won,
        has_win=True,
    )
