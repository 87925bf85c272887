"""Evaluation on episodes separate from training: own environments, own seeds."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.acting.loop import first_episode_mask, fresh_carry, run_steps
from offmarl.algos.base import Policy
from offmarl.envs.base import MultiAgentEnv


class Evaluator:
    """`evaluator(params, rng, greedy, episodes=None)`: fresh episodes of `env` under `policy`.

    Episodes run `batch_episodes` at a time in parallel, one per environment, each counting
    only its first episode (the loop runs for the longest possible episode). One compiled
    program serves greedy and sampled acting and every episode count: a count above the
    batch runs several batches (batch k seeded by fold_in(rng, k)) and keeps the first
    `episodes`. That matters where a compile takes minutes (MABrax).
    """

    def __init__(self, env: MultiAgentEnv, policy: Policy, batch_episodes: int) -> None:
        self.env, self.policy, self.batch_episodes = env, policy, batch_episodes
        self._batch = jax.jit(self._evaluate_batch)

    def _evaluate_batch(self, params: Any, rng: jax.Array, greedy: jax.Array) -> dict[str, jax.Array]:
        env = self.env
        carry = fresh_carry(env, self.policy, self.batch_episodes, rng)
        _, steps = run_steps(env, self.policy, params, carry, env.spec.max_episode_steps + 1, greedy=greedy)
        first = first_episode_mask(steps.done)  # [T, E]
        out = {
            "return": jnp.sum(jnp.where(first, steps.reward, 0.0), axis=0),
            "length": jnp.sum(first, axis=0).astype(jnp.float32),
            "finished": jnp.any(steps.done, axis=0),
        }
        if env.spec.has_win:
            out["won"] = jnp.any(first & steps.won, axis=0)
        return out

    def __call__(self, params: Any, rng: jax.Array, greedy: bool, episodes: int | None = None
                 ) -> dict[str, np.ndarray]:
        episodes = self.batch_episodes if episodes is None else episodes
        batches = -(-episodes // self.batch_episodes)
        keys = [rng] if batches == 1 else [jax.random.fold_in(rng, k) for k in range(batches)]
        results = [self._batch(params, key, jnp.asarray(greedy)) for key in keys]
        return {name: np.concatenate([np.asarray(r[name]) for r in results])[:episodes] for name in results[0]}


def make_evaluator(env: MultiAgentEnv, policy: Policy, num_episodes: int) -> Evaluator:
    """An Evaluator whose default (and batch) size is `num_episodes` episodes."""
    return Evaluator(env, policy, num_episodes)


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


def evaluate_both(evaluator: Evaluator, params: Any, seed: int, tag: int, episodes: int | None = None
                  ) -> dict[str, float]:
    """Greedy and sampled evaluation of `episodes` episodes (the evaluator's batch by
    default), flattened as eval_{mode}_{metric}."""
    out: dict[str, float] = {}
    for mode, greedy in (("greedy", True), ("sampled", False)):
        stats = summarise(evaluator(params, _eval_seed(seed, tag), greedy, episodes))
        out.update({f"eval_{mode}_{k}": v for k, v in stats.items()})
    return out
