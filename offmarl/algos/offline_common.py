"""Pieces the offline learners share: acting, optimisers, target networks and the
in-sample exponential value loss. Pure functions, no runner code."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from offmarl.algos.base import CategoricalActing
from offmarl.config import require
from offmarl.envs.base import EnvSpec
from offmarl.networks import MLPPolicy, masked_logits, with_agent_id

# Exponents of the advantage weights are clipped here (OMIGA's released code uses +-10).
EXP_CLIP = 10.0


def make_optimizer(lr: float, max_grad_norm: float) -> optax.GradientTransformation:
    """Adam, after a global-norm clip of the gradient when `max_grad_norm` > 0."""
    adam = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adam) if max_grad_norm > 0 else adam


def gradient_step(
    optimizer: optax.GradientTransformation,
    params: Any,
    opt_state: Any,
    loss_fn: Callable[..., tuple[jax.Array, dict]],
    *args: Any,
) -> tuple[Any, Any, dict]:
    """Minimise `loss_fn(params, *args)` by one optimiser step; returns its diagnostics."""
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics


def soft_update(target: Any, online: Any, tau: float) -> Any:
    """Polyak averaging: target <- (1 - tau) target + tau online."""
    return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


def taken(values: jax.Array, actions: jax.Array) -> jax.Array:
    """values[..., a] at the taken actions: [..., A] x [...] -> [...]."""
    return jnp.take_along_axis(values, actions[..., None], axis=-1)[..., 0]


def exponential_value_loss(z: jax.Array, linear: jax.Array) -> jax.Array:
    """Numerically stabilised E[exp(z)] + E[linear], the in-sample (IVR/EQL) value loss.

    With z = (target - V)/temperature and linear = V/temperature, the minimiser in V
    satisfies E[exp(z)] = 1. Both terms are scaled by exp(-m), m = max(max z, -1)
    (no gradient), which changes the loss's scale but not its minimiser.
    """
    m = jax.lax.stop_gradient(jnp.maximum(jnp.max(z), -1.0))
    return jnp.mean(jnp.exp(z - m) + jnp.exp(-m) * linear)


def weight_diagnostics(name: str, weights: jax.Array) -> dict[str, jax.Array]:
    """Mean, standard deviation, maximum and effective-sample-size fraction of a batch of
    non-negative sample weights (all entries pooled): ESS / n = (sum w)^2 / (n sum w^2), 1
    for equal weights, 1/n when one sample carries everything."""
    w = jnp.ravel(weights)
    ess = jnp.sum(w) ** 2 / jnp.maximum(w.size * jnp.sum(w**2), 1e-30)
    return {f"{name}_mean": jnp.mean(w), f"{name}_std": jnp.std(w), f"{name}_max": jnp.max(w),
            f"{name}_ess_fraction": ess}


def validate_common(config: Any) -> None:
    """Checks shared by every offline config: learning rate, discount (if any), clip, widths."""
    require(config.lr > 0, f"lr={config.lr} is invalid: must be > 0")
    gamma = getattr(config, "gamma", None)  # behaviour cloning has no discount
    require(gamma is None or 0 <= gamma <= 1, f"gamma={gamma} is invalid: must be in [0, 1]")
    require(config.max_grad_norm >= 0, f"max_grad_norm={config.max_grad_norm} must be >= 0")
    require(
        len(config.hidden_sizes) > 0 and all(h > 0 for h in config.hidden_sizes),
        f"hidden_sizes={config.hidden_sizes} is invalid: needs positive layer widths",
    )


class StatelessPolicy(CategoricalActing):
    """Decentralised acting without memory: subclasses give `logits(params, obs, avail)`."""

    spec: EnvSpec

    def logits(self, params: Any, obs: jax.Array, avail: jax.Array) -> jax.Array:
        raise NotImplementedError

    def initial_policy_state(self, batch_shape: tuple[int, ...]) -> jax.Array:
        return jnp.zeros((*batch_shape, self.spec.num_agents, 0))

    def policy_step(
        self, params: Any, policy_state: jax.Array, obs: jax.Array, avail: jax.Array, starts: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        return self.logits(params, obs, avail), policy_state


class SharedActor(StatelessPolicy):
    """One MLP actor shared by all agents (one-hot agent id appended)."""

    def __init__(self, hidden_sizes: Sequence[int], spec: EnvSpec) -> None:
        self.spec = spec
        self.network = MLPPolicy(tuple(hidden_sizes), spec.num_actions)

    def init_actor(self, rng: jax.Array) -> Any:
        return self.network.init(rng, jnp.zeros((self.spec.num_agents, self.spec.obs_dim + self.spec.num_agents)))

    def logits(self, params: Any, obs: jax.Array, avail: jax.Array) -> jax.Array:
        """Masked action logits [..., N, A]."""
        return masked_logits(self.network.apply(params, with_agent_id(obs)), avail)


def log_prob_taken(logits: jax.Array, actions: jax.Array) -> jax.Array:
    """log pi(a|o) of the taken actions from masked logits [..., A]."""
    return taken(jax.nn.log_softmax(logits), actions)
