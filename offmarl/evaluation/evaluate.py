"""Evaluation on episodes separate from training: own environments, own seeds."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.algos.base import Policy
from offmarl.envs.base import MultiAgentEnv


def make_evaluator(
    env: MultiAgentEnv, policy: Policy, num_episodes: int
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
            env_state, ts, memory, starts, ret, length, won, finished = carry
            act_rng, env_rng = jax.random.split(rng_t)
            logits, memory = policy.policy_step(params, memory, ts.obs, ts.avail, starts)
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
            return (env_state, ts, memory, ts.done, ret, length, won, finished), None

        memory = policy.initial_policy_state((num_episodes,))
        carry = (env_state, ts, memory, ~no, zeros, zeros, no, no)
        (*_, ret, length, won, finished), _ = jax.lax.scan(
            step, carry, jax.random.split(rollout_rng, horizon)
        )
        out = {"return": ret, "length": length, "finished": finished}
        if env.spec.has_win:
            out["won"] = won
        return out

    return jax.jit(evaluate, static_argnums=2)


def summarise(raw: dict[str, jax.Array]) -> dict[str, Any]:
    """Means (and the return's standard deviation) of one evaluation's episodes, and the
    per-episode returns and wins (for marl-eval's per-episode format).

    `win_rate` is None, and `wins` absent, for environments without a win condition.
    """
    ret = np.asarray(raw["return"])
    out: dict[str, Any] = {
        "win_rate": float(np.mean(raw["won"])) if "won" in raw else None,
        "return": float(ret.mean()),
        "return_std": float(ret.std()),
        "length": float(np.mean(raw["length"])),
        "episodes": int(ret.size),
        "returns": [round(float(x), 5) for x in ret],
    }
    if "won" in raw:
        out["wins"] = [int(x) for x in np.asarray(raw["won"])]
    return out


# Evaluation seeds are fold_in(seed stream, tag): periodic ones use the env-step count.
FINAL_EVAL_TAG = 2**32 - 1
CLI_EVAL_TAG = 2**32 - 2


def _eval_seed(seed: int, tag: int) -> jax.Array:
    # Evaluation keys come from their own stream, so evaluating never changes training.
    return jax.random.fold_in(jax.random.PRNGKey(seed + 1_000_003), tag)


def evaluate_both(evaluator, params: Any, seed: int, tag: int) -> dict[str, float]:
    """Greedy and sampled evaluation, flattened as eval_{mode}_{metric}."""
    out: dict[str, float] = {}
    for mode, greedy in (("greedy", True), ("sampled", False)):
        stats = summarise(evaluator(params, _eval_seed(seed, tag), greedy))
        out.update({f"eval_{mode}_{k}": v for k, v in stats.items()})
    return out
