"""Evaluation on episodes separate from training: own environments, own seeds."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.acting.loop import first_episode_mask, fresh_carry, run_steps
from offmarl.algos.base import Policy
from offmarl.envs.base import MultiAgentEnv


def make_evaluator(
    env: MultiAgentEnv, policy: Policy, num_episodes: int
) -> Callable[[Any, jax.Array, bool], dict[str, jax.Array]]:
    """Return a jitted `evaluate(params, rng, greedy)` over `num_episodes` fresh episodes.

    The episodes run in parallel, one per environment, and each counts only its
    first episode (the loop runs for the longest possible episode).
    """
    horizon = env.spec.max_episode_steps + 1

    def evaluate(params: Any, rng: jax.Array, greedy: bool) -> dict[str, jax.Array]:
        carry = fresh_carry(env, policy, num_episodes, rng)
        _, steps = run_steps(env, policy, params, carry, horizon, greedy=greedy)
        first = first_episode_mask(steps.done)  # [T, E]
        out = {
            "return": jnp.sum(jnp.where(first, steps.reward, 0.0), axis=0),
            "length": jnp.sum(first, axis=0).astype(jnp.float32),
            "finished": jnp.any(steps.done, axis=0),
        }
        if env.spec.has_win:
            out["won"] = jnp.any(first & steps.won, axis=0)
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
