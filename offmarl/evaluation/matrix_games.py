"""What a learned decentralised policy does in a one-step matrix game."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.algos.base import Policy


def agent_action_probabilities(policy: Policy, params: Any, env: Any) -> np.ndarray:
    """[N, A]: each agent's action probabilities at the game's single observation."""
    _, ts = env.reset(jax.random.PRNGKey(0))
    memory = policy.initial_policy_state(())
    logits, _ = policy.policy_step(params, memory, ts.obs, ts.avail, jnp.asarray(True))
    return np.asarray(jax.nn.softmax(logits, axis=-1), dtype=np.float64)


def matrix_game_report(policy: Policy, params: Any, env: Any) -> dict[str, Any]:
    """The joint-action distribution of the decentralised policies (product of the agents'
    marginals, keyed "a1,a2,..."), its expected payoff, and the greedy joint action."""
    probs = agent_action_probabilities(policy, params, env)
    joint = probs[0]
    for agent_probs in probs[1:]:
        joint = np.multiply.outer(joint, agent_probs)
    payoff = np.asarray(env.game.payoff, dtype=np.float64)
    greedy = tuple(int(a) for a in probs.argmax(axis=-1))
    return {
        "joint_action_distribution": {
            ",".join(map(str, index)): round(float(p), 6) for index, p in np.ndenumerate(joint)
        },
        "expected_return": float(np.sum(joint * payoff)),
        "greedy_joint_action": ",".join(map(str, greedy)),
        "greedy_return": float(payoff[greedy]),
    }
