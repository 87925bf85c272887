"""Pieces the offline learners share: acting, optimisers, target networks and the
in-sample exponential value loss. Pure functions, no runner code.

Discrete and box (continuous) actions differ in two places only, each chosen once from
the environment's action space: the shared actor's head (`actor_head`: a masked
categorical, or a tanh-Gaussian on the box) and how a local Q is read (`local_q`: one
output per action gathered at the action, or the action as a network input)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from offmarl.algos.base import CategoricalActing
from offmarl.config import check_layer_widths, require
from offmarl.envs.base import ActionSpace, BoxActions, EnvSpec
from offmarl.networks import MLPActionInputValue, MLPActionValues, MLPPolicy, masked_logits, with_agent_id
from offmarl.networks.distributions import ActionDistribution, CensoredGaussian, MaskedCategorical, TanhGaussian

# Exponents of the advantage weights are clipped here (OMIGA's released code uses +-10).
EXP_CLIP = 10.0
# OMIGA's released continuous actor clamps its pre-tanh means here (log-stds: [-5, 2], in
# networks/distributions.py).
MEAN_CLIP = 9.0


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
    check_layer_widths(config.hidden_sizes)
    box_policy = getattr(config, "box_policy", "tanh")
    require(box_policy in BOX_POLICIES,
            f"box_policy={box_policy!r} is invalid: valid choices are {', '.join(BOX_POLICIES)}")


class StatelessPolicy(CategoricalActing):
    """Decentralised acting without memory: subclasses give `logits(params, obs, avail)`."""

    spec: EnvSpec
    team_value_metric: str | None = None
    """The update diagnostic that estimates the team's discounted return at the batch's
    states and actions, if the learner has one; the offline runner stops a run whose
    estimate leaves every return the dataset's rewards allow (a diverged critic)."""

    def logits(self, params: Any, obs: jax.Array, avail: jax.Array) -> jax.Array:
        raise NotImplementedError

    def initial_policy_state(self, batch_shape: tuple[int, ...]) -> jax.Array:
        return jnp.zeros((*batch_shape, self.spec.num_agents, 0))

    def policy_step(
        self, params: Any, policy_state: jax.Array, obs: jax.Array, avail: jax.Array, starts: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        return self.logits(params, obs, avail), policy_state


def log_prob_taken(logits: jax.Array, actions: jax.Array) -> jax.Array:
    """log pi(a|o) of the taken actions from masked logits [..., A]."""
    return taken(jax.nn.log_softmax(logits), actions)


@dataclass(frozen=True)
class CategoricalHead:
    """Discrete actions: the actor outputs one logit per action, masked by the legal actions."""

    num_actions: int

    @property
    def size(self) -> int:
        return self.num_actions

    def outputs(self, raw: jax.Array, avail: jax.Array) -> jax.Array:
        return masked_logits(raw, avail)

    def distribution(self, outputs: jax.Array) -> MaskedCategorical:
        return MaskedCategorical(outputs)

    def log_prob(self, outputs: jax.Array, actions: jax.Array) -> jax.Array:
        return log_prob_taken(outputs, actions)

    def log_ratio(self, outputs: jax.Array, base_outputs: jax.Array, actions: jax.Array) -> jax.Array:
        """log pi(a|o) - log mu(a|o) of two policies' outputs at the same actions."""
        return self.log_prob(outputs, actions) - self.log_prob(base_outputs, actions)

    @property
    def feature_size(self) -> int:
        return self.num_actions

    def features(self, actions: jax.Array) -> jax.Array:
        """An agent's action as a critic input: its one-hot, [...] -> [..., A]."""
        return jax.nn.one_hot(actions, self.num_actions)


@dataclass(frozen=True)
class TanhGaussianHead:
    """Box actions: the actor outputs pre-tanh means and log-stds ([..., 2D]), nothing is
    masked. The distribution (networks/distributions.py) clamps the log-stds to [-5, 2],
    squashes with tanh and rescales onto [low, high]; its mode, the evaluation action, is the
    rescaled tanh(mean). Dataset actions are pulled 1e-6 (in units of the half-width) inside
    the box before atanh, so actions on the box's edge have a finite log-likelihood."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def size(self) -> int:
        return 2 * len(self.low)

    def outputs(self, raw: jax.Array, avail: jax.Array) -> jax.Array:
        return raw  # box actions have no masks (avail has width 0)

    def distribution(self, outputs: jax.Array) -> TanhGaussian:
        mean, log_std = jnp.split(outputs, 2, axis=-1)
        return TanhGaussian(jnp.clip(mean, -MEAN_CLIP, MEAN_CLIP), log_std, jnp.asarray(self.low),
                            jnp.asarray(self.high))

    def log_prob(self, outputs: jax.Array, actions: jax.Array) -> jax.Array:
        return self.distribution(outputs).log_prob(actions)

    def log_ratio(self, outputs: jax.Array, base_outputs: jax.Array, actions: jax.Array) -> jax.Array:
        """log pi(a|o) - log mu(a|o) of two policies' outputs, in pre-tanh coordinates where
        the Jacobians cancel exactly (TanhGaussian.log_ratio)."""
        return self.distribution(outputs).log_ratio(self.distribution(base_outputs), actions)

    @property
    def feature_size(self) -> int:
        return len(self.low)

    def features(self, actions: jax.Array) -> jax.Array:
        """An agent's action as a critic input: the raw vector, [..., D] -> [..., D]."""
        return actions


@dataclass(frozen=True)
class CensoredGaussianHead(TanhGaussianHead):
    """Box actions under a Gaussian clipped into the box (`box_policy="censored"`): the actor
    outputs means (in action units, held within three half-widths of the box's centre) and
    log-stds; a dataset action on a face of the box scores the Gaussian's probability beyond
    that face (networks/distributions.CensoredGaussian); the evaluation action is the mean
    clipped into the box."""

    def distribution(self, outputs: jax.Array) -> CensoredGaussian:
        mean, log_std = jnp.split(outputs, 2, axis=-1)
        low, high = jnp.asarray(self.low), jnp.asarray(self.high)
        centre, half = (high + low) / 2.0, (high - low) / 2.0
        return CensoredGaussian(jnp.clip(mean, centre - 3.0 * half, centre + 3.0 * half), log_std, low, high)


ActorHead = CategoricalHead | TanhGaussianHead | CensoredGaussianHead
BOX_POLICIES = {"tanh": TanhGaussianHead, "censored": CensoredGaussianHead}
"""The offline policies' distributions on box actions, by `box_policy` name: OMIGA's
tanh-Gaussian, or a Gaussian censored at the box's faces."""


def actor_head(space: ActionSpace, box_policy: str = "tanh") -> ActorHead:
    """The policy distribution of an action space: on a box the one `box_policy` names
    (see BOX_POLICIES), else a masked categorical."""
    if isinstance(space, BoxActions):
        return BOX_POLICIES[box_policy](space.low, space.high)
    return CategoricalHead(space.num_actions)


class SharedActor(StatelessPolicy):
    """One MLP actor shared by all agents (one-hot agent id appended). It owns its action
    distribution, `head` (see `actor_head`)."""

    def __init__(self, hidden_sizes: Sequence[int], spec: EnvSpec, box_policy: str = "tanh") -> None:
        self.spec = spec
        self.head = actor_head(spec.action_space, box_policy)
        self.network = MLPPolicy(tuple(hidden_sizes), self.head.size)

    def init_actor(self, rng: jax.Array) -> Any:
        return self.network.init(rng, jnp.zeros((self.spec.num_agents, self.spec.obs_dim + self.spec.num_agents)))

    def logits(self, params: Any, obs: jax.Array, avail: jax.Array) -> jax.Array:
        """The actor's outputs [..., N, *]: masked action logits, or with a box the pre-tanh
        means and log-stds."""
        return self.head.outputs(self.network.apply(params, with_agent_id(obs)), avail)

    def log_prob(self, params: Any, obs: jax.Array, avail: jax.Array, actions: jax.Array) -> jax.Array:
        """log pi_i(a_i | o_i) of the given actions, [..., N]."""
        return self.head.log_prob(self.logits(params, obs, avail), actions)

    def action_distribution(
        self, params: Any, policy_state: jax.Array, obs: jax.Array, avail: jax.Array, starts: jax.Array
    ) -> tuple[ActionDistribution, jax.Array]:
        return self.head.distribution(self.logits(params, obs, avail)), policy_state


class PerActionQ:
    """Discrete local Q_i(o_i, .): one output per action, read at the given action."""

    def __init__(self, hidden_sizes: Sequence[int], num_actions: int) -> None:
        self.network = MLPActionValues(hidden_sizes, num_actions)

    def init(self, rng: jax.Array, inputs: jax.Array) -> Any:
        return self.network.init(rng, inputs)

    def __call__(self, params: Any, inputs: jax.Array, actions: jax.Array) -> jax.Array:
        """Q at `actions` [..., N] from local inputs [..., N, I]."""
        return taken(self.network.apply(params, inputs), actions)


class ActionInputQ:
    """Box local Q_i(o_i, a_i): the action [..., N, D] is an input of the network."""

    def __init__(self, hidden_sizes: Sequence[int], action_dim: int) -> None:
        self.network = MLPActionInputValue(hidden_sizes)
        self.action_dim = action_dim

    def init(self, rng: jax.Array, inputs: jax.Array) -> Any:
        return self.network.init(rng, inputs, jnp.zeros(inputs.shape[:-1] + (self.action_dim,)))

    def __call__(self, params: Any, inputs: jax.Array, actions: jax.Array) -> jax.Array:
        """Q at `actions` [..., N] from local inputs [..., N, I]."""
        return self.network.apply(params, inputs, actions)


def local_q(space: ActionSpace, hidden_sizes: Sequence[int]) -> PerActionQ | ActionInputQ:
    """The local Q network of an action space: the action as an input on a box, else one head per action."""
    if isinstance(space, BoxActions):
        return ActionInputQ(hidden_sizes, space.dim)
    return PerActionQ(hidden_sizes, space.num_actions)
