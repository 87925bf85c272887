"""Fused single-process runner: vmapped environments, `lax.scan` unrolls and a
jitted update, in the PureJaxRL style. Works with any `OnlineAlgorithm`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp
import optax

from offmarl.algos.base import OnlineAlgorithm
from offmarl.envs.base import MultiAgentEnv
from offmarl.runners.config import OnlineConfig
from offmarl.types import Rollout, TimeStep


class TrainState(NamedTuple):
    """Everything the fused runner carries between updates (and checkpoints)."""

    params: Any
    opt_state: Any
    param_history: Any  # params of the last policy_lag + 1 updates, stacked on axis 0
    env_state: Any
    timestep: TimeStep
    starts: jax.Array  # [B] the current observation begins an episode
    policy_state: jax.Array  # [B, N, H] actor memory of the behaviour policy
    episode_return: jax.Array  # [B] return of each environment's running episode
    rng: jax.Array
    update: jax.Array  # number of updates done


class EpisodeStats(NamedTuple):
    """Sums over the training episodes that ended in some span of updates."""

    episodes: jax.Array
    return_sum: jax.Array
    wins: jax.Array


def make_optimizer(cfg: OnlineConfig) -> optax.GradientTransformation:
    total_steps = cfg.num_updates * cfg.num_epochs * cfg.num_minibatches
    lr = optax.linear_schedule(cfg.lr, 0.0, total_steps) if cfg.anneal_lr else cfg.lr
    clip = optax.clip_by_global_norm(cfg.max_grad_norm) if cfg.max_grad_norm > 0 else optax.identity()
    return optax.chain(clip, optax.adam(lr, eps=cfg.adam_eps))


class FusedTrainer:
    """`init(rng)` and `train(state, num_updates)`: pure, jitted, deterministic per seed."""

    def __init__(self, cfg: OnlineConfig, algo: OnlineAlgorithm, env: MultiAgentEnv) -> None:
        cfg.validate()
        self.cfg, self.algo, self.env = cfg, algo, env
        self.optimizer = make_optimizer(cfg)
        self.train = jax.jit(self._train)

    def init(self, rng: jax.Array) -> TrainState:
        param_rng, env_rng, rng = jax.random.split(rng, 3)
        params = self.algo.init(param_rng)
        env_state, timestep = jax.vmap(self.env.reset)(jax.random.split(env_rng, self.cfg.num_envs))
        history = jax.tree.map(
            lambda p: jnp.repeat(p[None], self.cfg.policy_lag + 1, axis=0), params
        )
        state = TrainState(
            params=params,
            opt_state=self.optimizer.init(params),
            param_history=history,
            env_state=env_state,
            timestep=timestep,
            starts=jnp.ones((self.cfg.num_envs,), bool),
            policy_state=self.algo.initial_policy_state((self.cfg.num_envs,)),
            episode_return=jnp.zeros((self.cfg.num_envs,)),
            rng=rng,
            update=jnp.zeros((), jnp.int32),
        )
        # Strong dtypes everywhere, so that the jitted `train` compiles once, not twice.
        return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), state)

    # -- data collection -----------------------------------------------------
    def collect(
        self, state: TrainState, behaviour_params: Any
    ) -> tuple[TrainState, Rollout, EpisodeStats]:
        """Roll every environment `unroll_length` steps with the behaviour policy."""
        num_envs = self.cfg.num_envs

        def step(carry, _):
            env_state, ts, starts, memory, ep_return, rng = carry
            rng, act_rng, env_rng = jax.random.split(rng, 3)
            logits, next_memory = self.algo.policy_step(
                behaviour_params, memory, ts.obs, ts.avail, starts
            )
            dist = distrax.Categorical(logits=logits)
            actions = dist.sample(seed=act_rng)
            env_state, next_ts = jax.vmap(self.env.step)(
                jax.random.split(env_rng, num_envs), env_state, actions
            )
            ep_return = ep_return + next_ts.reward
            finished = next_ts.done.astype(jnp.float32)
            stats = EpisodeStats(finished, ep_return * finished, next_ts.won.astype(jnp.float32))
            record = (ts.obs, ts.state, ts.avail, starts, memory, actions,
                      dist.log_prob(actions), next_ts.reward, next_ts.done)
            carry = (env_state, next_ts, next_ts.done, next_memory, ep_return * (1.0 - finished), rng)
            return carry, (record, stats)

        carry = (state.env_state, state.timestep, state.starts, state.policy_state,
                 state.episode_return, state.rng)
        (env_state, ts, starts, memory, ep_return, rng), (record, stats) = jax.lax.scan(
            step, carry, None, length=self.cfg.unroll_length
        )
        obs, glob, avail, step_starts, step_memory, actions, logp, rewards, dones = record
        rollout = Rollout(
            obs=jnp.concatenate([obs, ts.obs[None]]),
            state=jnp.concatenate([glob, ts.state[None]]),
            avail=jnp.concatenate([avail, ts.avail[None]]),
            starts=step_starts,
            policy_state=step_memory,
            actions=actions,
            behaviour_log_probs=logp,
            rewards=rewards,
            dones=dones,
        )
        state = state._replace(env_state=env_state, timestep=ts, starts=starts,
                               policy_state=memory, episode_return=ep_return, rng=rng)
        return state, rollout, EpisodeStats(*(jnp.sum(x) for x in stats))

    # -- learning ------------------------------------------------------------
    def learn(self, params: Any, opt_state: Any, rollout: Rollout, rng: jax.Array, progress: jax.Array):
        """`num_epochs` passes of `num_minibatches` gradient steps over one batch of unrolls."""
        cfg = self.cfg
        grad_fn = jax.value_and_grad(self.algo.loss, has_aux=True)
        rollout = self.algo.prepare_batch(params, rollout)

        def minibatch_step(carry, batch_idx):
            params, opt_state = carry
            minibatch = jax.tree.map(lambda x: x[:, batch_idx], rollout)
            (_, metrics), grads = grad_fn(params, minibatch, progress)
            metrics["grad_norm"] = optax.global_norm(grads)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), metrics

        def epoch(carry, epoch_rng):
            order = jax.random.permutation(epoch_rng, cfg.num_envs)
            return jax.lax.scan(minibatch_step, carry, order.reshape(cfg.num_minibatches, -1))

        (params, opt_state), metrics = jax.lax.scan(
            epoch, (params, opt_state), jax.random.split(rng, cfg.num_epochs)
        )
        return params, opt_state, jax.tree.map(jnp.mean, metrics)

    def behaviour_params(self, state: TrainState) -> Any:
        """The parameters of `policy_lag` updates ago (the initial ones early on)."""
        slot = jnp.maximum(state.update - self.cfg.policy_lag, 0) % (self.cfg.policy_lag + 1)
        return jax.tree.map(lambda h: h[slot], state.param_history)

    def apply_rollout(self, state: TrainState, rollout: Rollout) -> tuple[TrainState, dict]:
        """The learner's half of an update: learn from `rollout`, then advance the version."""
        slots = self.cfg.policy_lag + 1
        rng, learn_rng = jax.random.split(state.rng)
        progress = state.update / self.cfg.num_updates
        params, opt_state, metrics = self.learn(state.params, state.opt_state, rollout, learn_rng, progress)
        update = state.update + 1
        history = jax.tree.map(
            lambda h, p: h.at[update % slots].set(p), state.param_history, params
        )
        state = state._replace(
            params=params, opt_state=opt_state, param_history=history, rng=rng, update=update
        )
        return state, metrics

    def update(self, state: TrainState) -> tuple[TrainState, EpisodeStats, dict]:
        """One update: unroll with the (possibly lagged) behaviour policy, then learn."""
        state, rollout, episodes = self.collect(state, self.behaviour_params(state))
        state, metrics = self.apply_rollout(state, rollout)
        return state, episodes, metrics

    # -- what OnlineRun asks of every trainer; the fused one has nothing extra to keep -----
    def compile(self, state: TrainState, num_updates: int) -> float:
        """Compile `train` ahead of time for this state's shapes; returns the seconds taken."""
        start = time.perf_counter()
        self.train = jax.jit(self._train).lower(state, num_updates).compile()
        return time.perf_counter() - start

    def checkpoint_meta(self) -> dict:
        return {}

    def restore(self, meta: dict) -> None:
        """Take back what `checkpoint_meta` saved."""

    def commit(self) -> None:
        """The last `train` chunk became the run's state."""

    def abort(self) -> None:
        """The last `train` chunk was discarded."""

    def summary(self) -> dict:
        return {}

    def close(self, run_dir: Path) -> None:
        """Release workers and write the trainer's own artefacts into `run_dir`."""

    def _train(self, state: TrainState, num_updates: jax.Array):
        """Run `num_updates` updates; returns summed episode stats and mean learner metrics."""
        _, probe_episodes, probe_metrics = jax.eval_shape(self.update, state)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (probe_episodes, probe_metrics))

        def body(_, carry):
            state, (episodes, metrics) = carry
            state, new_episodes, new_metrics = self.update(state)
            summed = jax.tree.map(jnp.add, (episodes, metrics), (new_episodes, new_metrics))
            return state, summed

        state, (episodes, metrics) = jax.lax.fori_loop(0, num_updates, body, (state, zeros))
        metrics = jax.tree.map(lambda m: m / jnp.maximum(num_updates, 1), metrics)
        return state, episodes, metrics
