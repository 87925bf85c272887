"""Fused single-process runner: vmapped environments, `lax.scan` unrolls and a
jitted update, in the PureJaxRL style. Works with any `OnlineAlgorithm`.

Two ways to act with stale parameters, for studying the off-policy correction:
`policy_lag` K acts with the parameters of K updates ago; `simulated_workers` N
reproduces in one process the lag of N asynchronous IMPALA-style workers feeding one
learner, as the Ray runner runs them. Each simulated worker owns `num_envs`
environments; the learner consumes the workers' unrolls in turn, one per update, and a
worker whose unroll is taken receives the newest parameters at that moment (before the
learner's step on it), so its next unroll, consumed N updates later, is N versions old.
Both keep the last lag + 1 parameter versions in a ring, and the lag of every update is
measured from the version stored with the parameters it acted with.

Two schedules run the same arithmetic. The single jitted loop (`_train`) runs whole
updates in one program. The threaded loop (`_train_threaded`, used with `actor_threads`
K > 1 or `pipeline`) runs each update's acting and learning as separate programs: the K
environment groups are stepped by K threads at once (one XLA CPU program of small
environment kernels leaves much of a core idle; several run side by side), and with
`pipeline` the actors collect update u + 1's unroll, with parameters at least one version
old, while the learner takes update u. tests/test_fused_runner.py checks that both
schedules give the same results."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from offmarl.acting.loop import LoopCarry, run_steps
from offmarl.algos.base import OnlineAlgorithm
from offmarl.envs.base import MultiAgentEnv
from offmarl.runners.config import OnlineConfig
from offmarl.types import Rollout, TimeStep


class TrainState(NamedTuple):
    """Everything the fused runner carries between updates (and checkpoints)."""

    params: Any
    opt_state: Any
    param_history: Any  # params of the last lag + 1 updates, stacked on axis 0
    param_versions: jax.Array  # [lag + 1] the update count each slot of param_history holds
    # With simulated workers the environment fields below gain a leading worker axis [W].
    env_state: Any
    timestep: TimeStep
    starts: jax.Array  # [B] the current observation begins an episode
    policy_state: jax.Array  # [B, N, H] actor memory of the behaviour policy
    episode_return: jax.Array  # [B] return of each environment's running episode
    rng: jax.Array
    update: jax.Array  # number of updates done


ENV_FIELDS = ("env_state", "timestep", "starts", "policy_state", "episode_return")
"""The TrainState fields that belong to one set of environments (one simulated worker)."""


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
        self.pipelined = cfg.pipeline and not cfg.workers
        self.lag = max(cfg.policy_lag + cfg.simulated_workers, int(self.pipelined))
        """Versions between the learner and the behaviour parameters in steady state."""
        self.optimizer = make_optimizer(cfg)
        self._train_jit = jax.jit(self._train)
        self.groups = 1 if cfg.workers else cfg.actor_threads
        """Environment groups collected side by side, each `num_envs // groups` wide."""
        self.threaded = self.pipelined or self.groups > 1
        """Run updates as separate programs on threads (`_train_threaded`), not as `_train`."""
        self._prepare_jit = {advance: jax.jit(partial(self._prepare_act, advance=advance))
                             for advance in (False, True)}
        self._collect_jit = jax.jit(self._collect_envs)
        self._merge_jit = jax.jit(self._merge_groups)
        self._apply_jit = jax.jit(self.apply_rollout)
        self._threads: ThreadPoolExecutor | None = None
        self.lag_histogram: Counter = Counter()
        self._committed_histogram: Counter = Counter()

    def _fresh_envs(self, rng: jax.Array, num_envs: int) -> dict:
        """The environment fields of a TrainState for `num_envs` newly reset environments."""
        env_state, timestep = jax.vmap(self.env.reset)(jax.random.split(rng, num_envs))
        return {"env_state": env_state, "timestep": timestep,
                "starts": jnp.ones((num_envs,), bool),
                "policy_state": self.algo.initial_policy_state((num_envs,)),
                "episode_return": jnp.zeros((num_envs,))}

    def _fresh_worker_envs(self, rng: jax.Array) -> dict:
        """The num_envs environments of one worker: [num_envs, ...] fields, or with actor
        groups [groups, num_envs // groups, ...]."""
        if self.groups == 1:
            return self._fresh_envs(rng, self.cfg.num_envs)
        keys = jax.random.split(rng, self.groups)
        return jax.vmap(self._fresh_envs, in_axes=(0, None))(keys, self.cfg.num_envs // self.groups)

    def init(self, rng: jax.Array) -> TrainState:
        """The state at step 0: parameters, optimiser and fresh environments, built as one
        compiled program (run op by op, the initialisers alone compile hundreds of kernels)."""
        return jax.jit(self._init)(rng)

    def _init(self, rng: jax.Array) -> TrainState:
        param_rng, env_rng, rng = jax.random.split(rng, 3)
        params = self.algo.init(param_rng)
        if self.cfg.simulated_workers:
            envs = jax.vmap(self._fresh_worker_envs)(jax.random.split(env_rng, self.cfg.simulated_workers))
        else:
            envs = self._fresh_worker_envs(env_rng)
        state = TrainState(
            params=params,
            opt_state=self.optimizer.init(params),
            param_history=jax.tree.map(lambda p: jnp.repeat(p[None], self.lag + 1, axis=0), params),
            param_versions=jnp.zeros((self.lag + 1,), jnp.int32),
            rng=rng,
            update=jnp.zeros((), jnp.int32),
            **envs,
        )
        # Strong dtypes everywhere, so that the jitted `train` compiles once, not twice.
        return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), state)

    # -- data collection -----------------------------------------------------
    def collect(
        self, state: TrainState, behaviour_params: Any
    ) -> tuple[TrainState, Rollout, EpisodeStats]:
        """Roll every environment `unroll_length` steps with the behaviour policy."""
        envs, rng, rollout, episodes = self._collect_envs(_env_fields(state), state.rng, behaviour_params)
        return state._replace(rng=rng, **envs), rollout, episodes

    def _collect_envs(
        self, envs: dict, rng: jax.Array, behaviour_params: Any
    ) -> tuple[dict, jax.Array, Rollout, EpisodeStats]:
        """`collect` on the environment fields alone: (envs, rng, rollout, episodes)."""
        num_envs = envs["starts"].shape[0]
        # Episode lengths are not kept across unrolls (training needs none): the records'
        # episode_length counts from this unroll's start.
        carry = LoopCarry(envs["env_state"], envs["timestep"], envs["starts"], envs["policy_state"],
                          envs["episode_return"], jnp.zeros((num_envs,), jnp.int32), rng)
        carry, steps = run_steps(self.env, self.algo, behaviour_params, carry, self.cfg.unroll_length)
        ts = carry.timestep
        rollout = Rollout(
            obs=jnp.concatenate([steps.obs, ts.obs[None]]),
            state=jnp.concatenate([steps.state, ts.state[None]]),
            avail=jnp.concatenate([steps.avail, ts.avail[None]]),
            starts=steps.starts,
            policy_state=steps.policy_state,
            actions=steps.actions,
            behaviour_log_probs=steps.log_probs,
            rewards=steps.reward,
            dones=steps.done,
        )
        finished = steps.done.astype(jnp.float32)
        episodes = EpisodeStats(jnp.sum(finished), jnp.sum(steps.episode_return * finished),
                                jnp.sum(steps.won.astype(jnp.float32)))
        envs = {"env_state": carry.env_state, "timestep": ts, "starts": carry.starts,
                "policy_state": carry.policy_state, "episode_return": carry.episode_return}
        return envs, carry.rng, rollout, episodes

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
            order = jax.random.permutation(epoch_rng, rollout.actions.shape[1])  # unrolls may be joined
            return jax.lax.scan(minibatch_step, carry, order.reshape(cfg.num_minibatches, -1))

        (params, opt_state), metrics = jax.lax.scan(
            epoch, (params, opt_state), jax.random.split(rng, cfg.num_epochs)
        )
        return self.algo.observe(params, rollout), opt_state, jax.tree.map(jnp.mean, metrics)

    def _behaviour_slot(self, state: TrainState) -> jax.Array:
        return jnp.maximum(state.update - self.lag, 0) % (self.lag + 1)

    def behaviour_params(self, state: TrainState) -> Any:
        """The parameters of `lag` updates ago (the initial ones early on)."""
        slot = self._behaviour_slot(state)
        return jax.tree.map(lambda h: h[slot], state.param_history)

    def apply_rollout(self, state: TrainState, rollout: Rollout) -> tuple[TrainState, dict]:
        """The learner's half of an update: learn from `rollout`, then advance the version."""
        slots = self.lag + 1
        rng, learn_rng = _split_learn_rng(state.rng)
        progress = state.update / self.cfg.num_updates
        params, opt_state, metrics = self.learn(state.params, state.opt_state, rollout, learn_rng, progress)
        update = state.update + 1
        history = jax.tree.map(
            lambda h, p: h.at[update % slots].set(p), state.param_history, params
        )
        state = state._replace(
            params=params, opt_state=opt_state, param_history=history,
            param_versions=state.param_versions.at[update % slots].set(update), rng=rng, update=update
        )
        return state, metrics

    def act(self, state: TrainState) -> tuple[TrainState, Rollout, EpisodeStats, jax.Array]:
        """The actors' half of an update: one unroll with the (possibly lagged) behaviour
        parameters, and that lag (the learner's version minus the behaviour's)."""
        state, behaviour, groups, keys, lag = self._prepare_act(state, False)
        collected = [self._collect_envs(envs, key, behaviour) for envs, key in zip(groups, keys)]
        return (*self._merge_groups(state, collected), lag)

    def _prepare_act(self, state: TrainState, advance: bool):
        """What the actors of one update start from: (state, behaviour parameters, the
        environment groups to collect, one key per group, lag). `advance` prepares the update
        after `state`'s, before the learner has finished with `state`: it needs only what
        `apply_rollout` computes without learning (the next key and the update count) and
        parameters at least one version old, which the history already holds."""
        if advance:
            rng, _ = _split_learn_rng(state.rng)
            state = state._replace(rng=rng, update=state.update + 1)
        behaviour = self.behaviour_params(state)
        lag = state.update - state.param_versions[self._behaviour_slot(state)]
        envs = _env_fields(state)
        if self.cfg.simulated_workers:
            worker = state.update % self.cfg.simulated_workers
            envs = jax.tree.map(lambda x: x[worker], envs)
        if self.groups == 1:
            return state, behaviour, [envs], [state.rng], lag
        rng, *keys = jax.random.split(state.rng, self.groups + 1)
        groups = [jax.tree.map(lambda x: x[g], envs) for g in range(self.groups)]
        return state._replace(rng=rng), behaviour, groups, keys, lag

    def _merge_groups(self, state: TrainState, collected: list) -> tuple[TrainState, Rollout, EpisodeStats]:
        """Put the groups' `_collect_envs` results back into `state`: their environments, one
        rollout joined along the environment axis, and their summed episode stats."""
        envs, rngs, rollouts, episodes = zip(*collected)
        if self.groups == 1:
            state, merged, rollout, episodes = state._replace(rng=rngs[0]), envs[0], rollouts[0], episodes[0]
        else:  # each group's key was split off the update's; the update carries its own on
            merged = jax.tree.map(lambda *xs: jnp.stack(xs), *envs)
            rollout = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *rollouts)
            episodes = jax.tree.map(lambda *xs: sum(xs), *episodes)
        if self.cfg.simulated_workers:
            worker = state.update % self.cfg.simulated_workers
            merged = jax.tree.map(lambda all_, one: all_.at[worker].set(one), _env_fields(state), merged)
        return state._replace(**merged), rollout, episodes

    def update(self, state: TrainState) -> tuple[TrainState, EpisodeStats, dict]:
        """One update: unroll with the (possibly lagged) behaviour policy, then learn.
        `metrics["lag"]` is the learner's version minus the behaviour parameters' version."""
        state, rollout, episodes, lag = self.act(state)
        state, metrics = self.apply_rollout(state, rollout)
        return state, episodes, {**metrics, "lag": lag}

    def train(self, state: TrainState, num_updates: int) -> tuple[TrainState, EpisodeStats, dict]:
        """Run `num_updates` updates (jitted); returns the state, the summed episode stats
        and the learner's mean metrics, with lag_mean and lag_max where acting is lagged."""
        if self.threaded:
            state, episodes, metrics = self._train_threaded(state, num_updates)
        else:
            state, episodes, metrics = self._train_jit(state, num_updates)
        metrics = dict(metrics)
        counts = np.asarray(metrics.pop("lag_counts"))
        metrics.pop("lag", None)
        if self.lag:
            seen = np.flatnonzero(counts)
            self.lag_histogram.update({int(k): int(counts[k]) for k in seen})
            metrics["lag_mean"] = float(np.dot(np.arange(len(counts)), counts) / max(counts.sum(), 1))
            metrics["lag_max"] = float(seen.max()) if len(seen) else 0.0
        return state, episodes, metrics

    # -- what OnlineRun asks of every trainer; the fused one has nothing extra to keep -----
    def compile(self, state: TrainState, num_updates: int) -> float:
        """Compile `train` ahead of time for this state's shapes; returns the seconds taken."""
        start = time.perf_counter()
        if self.threaded:
            prepared, behaviour, groups, keys, _ = jax.eval_shape(partial(self._prepare_act, advance=False), state)
            for advance in (False, True):
                prepare = jax.jit(partial(self._prepare_act, advance=advance))
                self._prepare_jit[advance] = prepare.lower(state).compile()
            self._collect_jit = jax.jit(self._collect_envs).lower(groups[0], keys[0], behaviour).compile()
            collected = [jax.eval_shape(self._collect_envs, g, k, behaviour) for g, k in zip(groups, keys)]
            self._merge_jit = jax.jit(self._merge_groups).lower(prepared, collected).compile()
            acted, rollout, _ = jax.eval_shape(self._merge_groups, prepared, collected)
            self._apply_jit = jax.jit(self.apply_rollout).lower(acted, rollout).compile()
        else:
            self._train_jit = jax.jit(self._train).lower(state, num_updates).compile()
        return time.perf_counter() - start

    def checkpoint_meta(self) -> dict:
        return {"lag_histogram": _histogram_json(self.lag_histogram)} if self.lag else {}

    def restore(self, meta: dict) -> None:
        """Take back what `checkpoint_meta` saved."""
        self.lag_histogram = Counter({int(k): v for k, v in meta.get("lag_histogram", {}).items()})
        self._committed_histogram = self.lag_histogram.copy()

    def commit(self) -> None:
        """The last `train` chunk became the run's state."""
        self._committed_histogram = self.lag_histogram.copy()

    def abort(self) -> None:
        """The last `train` chunk was discarded, and with it the lags it counted."""
        self.lag_histogram = self._committed_histogram.copy()

    def summary(self) -> dict:
        """The lag of every update learned from, as the Ray runner reports it."""
        if not self.lag:
            return {}
        hist = self.lag_histogram
        total = sum(hist.values())
        return {"simulated_workers": self.cfg.simulated_workers,
                "lag_mean": sum(k * v for k, v in hist.items()) / total if total else None,
                "lag_max": max(hist) if hist else None,
                "lag_histogram": _histogram_json(hist)}

    def close(self, run_dir: Path) -> None:
        """Release workers and write the trainer's own artefacts into `run_dir`."""
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None

    def _train_threaded(self, state: TrainState, num_updates: int):
        """`_train`'s updates, the environment groups collected side by side and, with
        `pipeline`, each update's learning overlapping the next one's acting (threads; the
        jitted calls release the GIL)."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.groups + 1, thread_name_prefix="offmarl-fused")
        learn = lambda acted, rollout: jax.block_until_ready(self._apply_jit(acted, rollout))  # noqa: E731
        collect = lambda envs, key, behaviour: jax.block_until_ready(  # noqa: E731
            self._collect_jit(envs, key, behaviour))

        def act(state: TrainState, advance: bool):
            state, behaviour, groups, keys, lag = self._prepare_jit[advance](state)
            collected = list(self._threads.map(collect, groups, keys, [behaviour] * len(groups)))
            return (*self._merge_jit(state, collected), lag)

        acted, rollout, episodes, lag = act(state, False)
        totals, lags = None, []
        for u in range(num_updates):
            overlap = self.pipelined and u + 1 < num_updates
            if overlap:
                learning = self._threads.submit(learn, acted, rollout)
                next_acted, next_rollout, next_episodes, next_lag = act(acted, True)
                state, metrics = learning.result()
            else:
                state, metrics = learn(acted, rollout)
            step = (episodes, metrics)
            totals = step if totals is None else jax.tree.map(jnp.add, totals, step)
            lags.append(lag)
            if overlap:
                # The learner's fields from its update, the actors' from their next unroll.
                acted = state._replace(rng=next_acted.rng, **_env_fields(next_acted))
                rollout, episodes, lag = next_rollout, next_episodes, next_lag
            elif u + 1 < num_updates:
                acted, rollout, episodes, lag = act(state, False)
        episodes, metrics = totals
        lag_counts = np.bincount(np.asarray(lags, dtype=np.int64), minlength=self.lag + 1)
        metrics = jax.tree.map(lambda m: m / num_updates, metrics)
        return state, episodes, {**metrics, "lag_counts": lag_counts}

    def _train(self, state: TrainState, num_updates: jax.Array):
        """Run `num_updates` updates; returns summed episode stats and mean learner metrics."""
        _, probe_episodes, probe_metrics = jax.eval_shape(self.update, state)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (probe_episodes, probe_metrics))

        def body(_, carry):
            state, (episodes, metrics), lag_counts = carry
            state, new_episodes, new_metrics = self.update(state)
            summed = jax.tree.map(jnp.add, (episodes, metrics), (new_episodes, new_metrics))
            return state, summed, lag_counts.at[new_metrics["lag"]].add(1)

        lag_counts = jnp.zeros((self.lag + 1,), jnp.int32)
        state, (episodes, metrics), lag_counts = jax.lax.fori_loop(
            0, num_updates, body, (state, zeros, lag_counts))
        metrics = jax.tree.map(lambda m: m / jnp.maximum(num_updates, 1), metrics)
        return state, episodes, {**metrics, "lag_counts": lag_counts}


def _env_fields(state: TrainState) -> dict:
    return {f: getattr(state, f) for f in ENV_FIELDS}


def _split_learn_rng(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The key an update carries on, and the key its learning step uses."""
    rng, learn_rng = jax.random.split(rng)
    return rng, learn_rng


def _histogram_json(histogram: Counter) -> dict[str, int]:
    return {str(k): v for k, v in sorted(histogram.items())}
