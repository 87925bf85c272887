"""Evaluation on episodes separate from training: own environments, own seeds."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.envs.base import MultiAgentEnv

PolicyLogits = Callable[[Any, jax.Array, jax.Array], jax.Array]


def make_evaluator(
    env: MultiAgentEnv, policy_logits: PolicyLogits, num_episodes: int
) -> Callable[[Any, jax.Array, bool], dict[str, jax.Array]]:
    """Return a jitted `evaluate(params, rng, greedy)` over `num_episodes` fresh episodes.

    The episodes run in parallel, one per environment, and each counts only its
    first episode (the scan runs for the longest possible episode).
    """
    horizon = env.spec.max_episode_steps + 1

    def evaluate(params: Any, rng: jax.Array, greedy: bool) -> dict[str, jax.Array]:
        reset_rng, rollout_rng = jax.random.split(rng)
        env_state, ts = jax.vmap(env.reset)(jax.random.split(reset_rng, num_episodes))
        zeros = jnp.zeros((num_episodes,))
        no = jnp.zeros((num_episodes,), bool)

        def step(carry, rng_t):
            env_state, ts, ret, length, won, finished = carry
            act_rng, env_rng = jax.random.split(rng_t)
            logits = policy_logits(params, ts.obs, ts.avail)
            if greedy:
                actions = jnp.argmax(logits, axis=-1)
            else:
                actions = jax.random.categorical(act_rng, logits)
            env_state, ts = jax.vmap(env.step)(
                jax.random.split(env_rng, num_episodes), env_state, actions
            )
            running = ~finished
            ret = ret + jnp.where(running, ts.reward, 0.0)
            length = length + running
            won = won | (running & ts.won)
            finished = finished | ts.done
            return (env_state, ts, ret, length, won, finished), None

        carry = (env_state, ts, zeros, zeros, no, no)
        (_, _, ret, length, won, finished), _ = jax.lax.scan(
            step, carry, jax.random.split(rollout_rng, horizon)
        )
        return {"return": ret, "length": length, "won": won, "finished": finished}

    return jax.jit(evaluate, static_argnums=2)


def summarise(raw: dict[str, jax.Array]) -> dict[str, float]:
    """Means (and the return's standard deviation) of one evaluation's episodes."""
    ret = np.asarray(raw["return"])
    return {
        "win_rate": float(np.mean(raw["won"])),
        "return": float(ret.mean()),
        "return_std": float(ret.std()),
        "length": float(np.mean(raw["length"])),
        "episodes": int(ret.size),
    }
