"""What the online actor-critics share: a decentralised shared actor (MLP or GRU), a
critic over observations, the global state or each agent's own observation, and the
unroll of the current policy along a rollout. MA-Trace and PPO build on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp

from offmarl.config import check_layer_widths, require
from offmarl.envs.base import BoxActions, EnvSpec
from offmarl.networks import GRUPolicy, MLPGaussianPolicy, MLPPolicy, MLPValue, masked_logits, with_agent_id
from offmarl.networks.distributions import DiagGaussian, MaskedCategorical
from offmarl.networks.normalisation import init_moments, standardise, update_moments
from offmarl.types import Rollout

Critic = Literal["obs", "state", "decentralised"]


@dataclass(frozen=True)
class ActorCriticConfig:
    """Network settings every online actor-critic has."""

    CONTINUOUS_DEFAULTS: ClassVar[dict[str, Any]] = {"normalize_observations": True}
    """On box-action tasks (MuJoCo), inputs are standardised: MA-Trace, seed 0, 2M env
    steps, ends mabrax:halfcheetah_6x1 at a greedy return of 1,788 with it and 1,332 without,
    ant_4x2 at 2,433 against 828 (docs/mabrax.md)."""

    gamma: float = 0.99
    """Discount factor."""
    critic: Critic = "obs"
    """Critic input: all observations concatenated, the global state, or V_i(o_i) per agent."""
    actor: Literal["mlp", "gru"] = "mlp"
    """Actor network: a feed-forward MLP, or Dense -> GRU (memory across steps)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layers of the critic MLP and the MLP actor; a GRU actor uses the first as
    its embedding width and the last as its memory width."""
    agent_id: bool = False
    """Append a one-hot agent id to each agent's observation."""
    normalize_observations: bool = False
    """Standardise each observation feature (and the global state, for a state critic) by
    the running mean and variance of everything trained on so far, clipped to +-10. The
    moments are part of the parameters (`params["obs_moments"]`, `params["state_moments"]`),
    updated after each batch is learned from, so workers, evaluation and saved policies
    standardise alike. On for box actions (MuJoCo's features are not scaled;
    docs/mabrax.md); on SMAX, on for MA-Trace (docs/tuning.md) and off for MAPPO and IPPO,
    whose suite results were measured without it."""

    def validate(self) -> None:
        require(0.0 <= self.gamma <= 1.0, f"gamma={self.gamma} is invalid: must be in [0, 1]")
        check_layer_widths(self.hidden_sizes)


class ActorCritic:
    """Actor and critic networks for one environment spec, and the Policy half of
    OnlineAlgorithm. Subclasses add `prepare_batch` and `loss`."""

    def __init__(self, config: ActorCriticConfig, spec: EnvSpec) -> None:
        config.validate()
        self.config = config
        self.spec = spec
        # Discrete: one logit per action. Box: a mean and a log-std per action dimension
        # (the MLP actor's log-std a learned vector, the GRU actor's an output).
        space = spec.action_space
        if config.actor == "gru":
            outputs = 2 * space.dim if isinstance(space, BoxActions) else spec.num_actions
            self._actor = GRUPolicy(config.hidden_sizes, outputs)
        elif isinstance(space, BoxActions):
            self._actor = MLPGaussianPolicy(config.hidden_sizes, space.dim)
        else:
            self._actor = MLPPolicy(config.hidden_sizes, spec.num_actions)
        self._critic = MLPValue(config.hidden_sizes)

    @property
    def decentralised_critic(self) -> bool:
        """True when the critic gives one value per agent ([..., N]), not a team value."""
        return self.config.critic == "decentralised"

    # -- inputs ---------------------------------------------------------------
    def _actor_input(self, obs: jax.Array) -> jax.Array:
        return with_agent_id(obs) if self.config.agent_id else obs

    def _standardised(
        self, params: dict, obs: jax.Array, state: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array | None]:
        """Observations (and state) as the networks see them: standardised by the running
        moments when `normalize_observations` is on, unchanged otherwise."""
        if "obs_moments" in params:
            obs = standardise(params["obs_moments"], obs)
        if state is not None and "state_moments" in params:
            state = standardise(params["state_moments"], state)
        return obs, state

    def _critic_input(self, obs: jax.Array, state: jax.Array) -> jax.Array:
        if self.config.critic == "state":
            return state
        if self.config.critic == "obs":
            return obs.reshape(obs.shape[:-2] + (-1,))
        return self._actor_input(obs)  # decentralised: V_i(o_i)

    # -- parameters -----------------------------------------------------------
    def init_networks(self, rng: jax.Array) -> dict:
        """Fresh {"actor", "critic"} parameters."""
        actor_rng, critic_rng = jax.random.split(rng)
        n, o, s = self.spec.num_agents, self.spec.obs_dim, self.spec.state_dim
        obs = jnp.zeros((n, o))
        if self.config.actor == "gru":
            actor_args = (self.initial_policy_state(()), self._actor_input(obs), jnp.zeros((n,), bool))
        else:
            actor_args = (self._actor_input(obs),)
        params = {
            "actor": self._actor.init(actor_rng, *actor_args),
            "critic": self._critic.init(critic_rng, self._critic_input(obs, jnp.zeros((s,)))),
        }
        if self.config.normalize_observations:
            params["obs_moments"] = init_moments(o)
            if self.config.critic == "state":
                params["state_moments"] = init_moments(s)
        return params

    def observe(self, params: dict, rollout: Rollout) -> dict:
        """Merge the observations (and states) a batch acted on into the running moments
        (the bootstrap row is the next batch's first), after the batch has been learned
        from, so that a batch is learned with the moments it was acted with. Without
        `normalize_observations`, `params` unchanged."""
        params = dict(params)
        if "obs_moments" in params:
            params["obs_moments"] = update_moments(params["obs_moments"], rollout.obs[:-1])
        if "state_moments" in params:
            params["state_moments"] = update_moments(params["state_moments"], rollout.state[:-1])
        return params

    def init(self, rng: jax.Array) -> dict:
        return self.init_networks(rng)

    # -- Policy ---------------------------------------------------------------
    def initial_policy_state(self, batch_shape: tuple[int, ...]) -> jax.Array:
        width = self.config.hidden_sizes[-1] if self.config.actor == "gru" else 0
        return jnp.zeros(batch_shape + (self.spec.num_agents, width))

    def policy_step(
        self, params: dict, policy_state: jax.Array, obs: jax.Array, avail: jax.Array,
        starts: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        inputs = self._actor_input(self._standardised(params, obs)[0])
        if self.config.actor == "gru":
            agent_starts = jnp.broadcast_to(starts[..., None], obs.shape[:-1])
            policy_state, logits = self._actor.apply(params["actor"], policy_state, inputs, agent_starts)
        else:
            logits = self._actor.apply(params["actor"], inputs)
        if self.spec.continuous:
            return logits, policy_state  # [..., N, 2D]: means, then log-stds
        return masked_logits(logits, avail), policy_state

    def distribution(self, outputs: jax.Array) -> MaskedCategorical | DiagGaussian:
        """The action distribution of actor outputs (`policy_step`'s first result): a masked
        categorical, or with box actions a diagonal Gaussian (the environment clips)."""
        space = self.spec.action_space
        if isinstance(space, BoxActions):
            mean, log_std = jnp.split(outputs, 2, axis=-1)
            centre = (jnp.asarray(space.low) + jnp.asarray(space.high)) / 2.0  # a zero output acts mid-box
            return DiagGaussian(mean + centre, log_std)
        return MaskedCategorical(outputs)

    def action_distribution(
        self, params: dict, policy_state: jax.Array, obs: jax.Array, avail: jax.Array, starts: jax.Array,
    ) -> tuple[MaskedCategorical | DiagGaussian, jax.Array]:
        outputs, policy_state = self.policy_step(params, policy_state, obs, avail, starts)
        return self.distribution(outputs), policy_state

    # -- along a rollout ------------------------------------------------------
    def unroll_logits(self, params: dict, rollout: Rollout) -> jax.Array:
        """Actor outputs along a rollout: masked logits [T, B, N, A] (or means and log-stds).

        A recurrent actor restarts from the memory recorded at the unroll's first step.
        """
        obs, avail = rollout.obs[:-1], rollout.avail[:-1]
        if self.config.actor != "gru":
            return self.policy_step(params, rollout.policy_state, obs, avail, rollout.starts)[0]

        def step(memory, inputs):
            logits, memory = self.policy_step(params, memory, *inputs)
            return memory, logits

        _, logits = jax.lax.scan(step, rollout.policy_state[0], (obs, avail, rollout.starts))
        return logits

    def unroll_distribution(self, params: dict, rollout: Rollout) -> MaskedCategorical | DiagGaussian:
        """The current policy's action distribution at every step of a rollout ([T, B, N])."""
        return self.distribution(self.unroll_logits(params, rollout))

    def values(self, params: dict, obs: jax.Array, state: jax.Array) -> jax.Array:
        """Team value [...] (obs/state critic) or per-agent values [..., N] (decentralised)."""
        return self._critic.apply(params["critic"], self._critic_input(*self._standardised(params, obs, state)))

    def team_signals(self, rollout: Rollout, values: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Rewards and discounts shaped like `values[:-1]`: [T, B], or [T, B, N] with a
        decentralised critic (every agent sees the team reward)."""
        discounts = self.config.gamma * (1.0 - rollout.dones.astype(jnp.float32))
        rewards = rollout.rewards
        if self.decentralised_critic:
            shape = values[:-1].shape
            discounts = jnp.broadcast_to(discounts[..., None], shape)
            rewards = jnp.broadcast_to(rewards[..., None], shape)
        return rewards, discounts
