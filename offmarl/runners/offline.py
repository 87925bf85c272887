"""Offline training from a fixed dataset on the shared run loop: uniform minibatches,
jitted update chunks and periodic evaluation in the environment. Works with any
registered offline algorithm."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.algos.base import OfflineAlgorithm
from offmarl.data.dataset import OfflineDataset, action_dtype
from offmarl.data.source import check_dataset_matches, load_dataset
from offmarl.errors import ConfigError
from offmarl.evaluation.evaluate import evaluate_both, make_evaluator
from offmarl.evaluation.matrix_games import matrix_game_report
from offmarl.evaluation.plots import plot_learning_curve
from offmarl.runners.experiment import OfflineExperiment, offline_experiment_from_dict
from offmarl.runners.common import RunLock, TrainingDiverged, read_run_config
from offmarl.runners.loop import RunLoop, set_headline, with_budget
from offmarl.types import TransitionBatch


class DeviceDataset(NamedTuple):
    """A dataset's transitions as device arrays, with the row index of each next observation.
    Actions and masks as in TransitionBatch: box actions float32 [T, N, D], masks [T, N, 0]."""

    obs: jax.Array
    state: jax.Array
    avail: jax.Array
    actions: jax.Array
    reward: jax.Array
    done: jax.Array
    valid: jax.Array
    next_index: jax.Array


def to_device(data: OfflineDataset) -> DeviceDataset:
    """Rows t and t+1 form a transition; the team reward is agent 0's (they are equal)."""
    rows = data.num_transitions
    terminal = data.terminals.max(axis=1) > 0
    cut_off = (data.truncations.max(axis=1) > 0) & ~terminal
    return DeviceDataset(
        obs=jnp.asarray(data.observations, jnp.float32),
        state=jnp.asarray(data.states, jnp.float32),
        avail=jnp.asarray(data.legals > 0),
        actions=jnp.asarray(data.actions, action_dtype(data.continuous)),
        reward=jnp.asarray(data.rewards[:, 0], jnp.float32),
        done=jnp.asarray(terminal, jnp.float32),
        valid=jnp.asarray(~cut_off, jnp.float32),
        next_index=jnp.asarray(np.minimum(np.arange(rows) + 1, rows - 1), jnp.int32),
    )


def sample_batch(data: DeviceDataset, rng: jax.Array, batch_size: int) -> TransitionBatch:
    """Uniformly sampled transitions."""
    return gather_batch(data, jax.random.randint(rng, (batch_size,), 0, data.actions.shape[0]))


def gather_batch(data: DeviceDataset, index: jax.Array) -> TransitionBatch:
    """The transitions at rows `index`."""
    nxt = data.next_index[index]
    return TransitionBatch(
        obs=data.obs[index], state=data.state[index], avail=data.avail[index],
        actions=data.actions[index], reward=data.reward[index], done=data.done[index],
        next_obs=data.obs[nxt], next_state=data.state[nxt], next_avail=data.avail[nxt],
        next_actions=data.actions[nxt],
        valid=data.valid[index],
    )


def make_train_chunk(algo: OfflineAlgorithm, batch_size: int):
    """A jitted `train(state, rng, n, data) -> (state, rng, mean metrics)` of n iterations."""

    def train(state: Any, rng: jax.Array, n: jax.Array, data: DeviceDataset):
        def iteration(_: Any, carry: tuple) -> tuple:
            state, rng, sums = carry
            rng, batch_rng, update_rng = jax.random.split(rng, 3)
            state, metrics = algo.update(state, sample_batch(data, batch_rng, batch_size), update_rng)
            return state, rng, jax.tree.map(jnp.add, sums, metrics)

        shapes = jax.eval_shape(algo.update, state, sample_batch(data, rng, batch_size), rng)[1]
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        state, rng, sums = jax.lax.fori_loop(0, n, iteration, (state, rng, zeros))
        return state, rng, jax.tree.map(lambda s: s / n, sums)

    return jax.jit(train)


VALUE_LIMIT_FACTOR = 10.0
"""How far a critic's team value may overshoot the dataset's discounted-return bound
(approximation error, and networks that start with outputs of order 1) before the run
counts as diverged."""


def team_value_limit(algo: OfflineAlgorithm, data: OfflineDataset) -> float | None:
    """The largest |team value| an algorithm's critic may report on `data`:
    VALUE_LIMIT_FACTOR x max(max |r| / (1 - gamma), 1). None without a critic or a discount."""
    gamma = getattr(algo.config, "gamma", None)
    if algo.team_value_metric is None or gamma is None:
        return None
    bound = data.discounted_return_bound(gamma)
    return None if math.isinf(bound) else VALUE_LIMIT_FACTOR * max(bound, 1.0)


def dataset_summary(data: OfflineDataset) -> dict[str, float]:
    returns = data.episode_returns()
    return {"dataset_episodes": data.num_episodes, "dataset_transitions": data.num_transitions,
            "dataset_return_mean": float(returns.mean()), "dataset_return_std": float(returns.std())}


def load_offline_run(run_dir: str | Path) -> tuple[OfflineExperiment, dict]:
    """The experiment and raw config.json of an existing offline run directory."""
    data = read_run_config(run_dir)
    if "dataset" not in data:
        raise ConfigError(f"{str(run_dir)!r} is an online run (it records no dataset); continue it with "
                          f"`offmarl train --resume {run_dir}`")
    return offline_experiment_from_dict(data), data


class OfflineRun(RunLoop):
    """Trains one offline experiment into a run directory."""

    unit = "iterations"
    step_key = "steps"
    speed_key = "updates_per_second"

    def __init__(self, experiment: OfflineExperiment, run_dir: str | Path, lock: RunLock, fresh: bool,
                 quiet: bool = False, budget_history: list | None = None, recorded_fingerprint: str | None = None) -> None:
        super().__init__(run_dir, lock, fresh, quiet, budget_history)
        self.exp, self.cfg = experiment, experiment.run_config
        # Load and check the data now, so a bad dataset fails before anything compiles.
        self.env, self.algo = experiment.build()
        self.data, self.dataset_info = load_dataset(experiment.env, experiment.dataset)
        check_dataset_matches(self.data, self.env.spec, experiment.dataset)
        self.dataset_info["sha256"] = self.data.fingerprint()
        if recorded_fingerprint is not None and recorded_fingerprint != self.dataset_info["sha256"]:
            raise ConfigError(
                f"dataset {experiment.dataset!r} has changed since {str(run_dir)!r} was trained on it "
                f"(sha256 {self.dataset_info['sha256'][:12]}..., recorded {recorded_fingerprint[:12]}...); "
                "train a new run on the new data"
            )
        self.is_matrix_game = hasattr(self.env, "game")
        self.value_limit = team_value_limit(self.algo, self.data)
        self.train_seconds: list[tuple[int, float]] = []

    @classmethod
    def create(cls, experiment: OfflineExperiment, out_dir: str | Path, quiet: bool = False) -> OfflineRun:
        """A new run in `out_dir` (which must be empty or new)."""
        return cls._locked(out_dir, True, lambda lock: cls(experiment, out_dir, lock, True, quiet))

    @classmethod
    def resume(cls, run_dir: str | Path, quiet: bool = False, steps: int | None = None) -> OfflineRun:
        """Continue the run in `run_dir` from its newest readable checkpoint; `steps` sets
        a new iteration budget. The dataset must be the one the run was trained on."""

        def build(lock: RunLock) -> OfflineRun:
            saved, data = load_offline_run(run_dir)
            experiment, history = with_budget(saved, data, "steps", steps)
            recorded = data.get("dataset_info", {}).get("sha256")
            run = cls(experiment, run_dir, lock, False, quiet, history, recorded)
            if recorded is None:
                run.pending_warnings.append(f"{str(run_dir)!r} recorded no dataset fingerprint (made by an older "
                                  "offmarl): the dataset cannot be checked")
            run.check_budget(run.budget)
            return run

        return cls._locked(run_dir, False, build)

    # -- the run loop's hooks --------------------------------------------------
    @property
    def budget(self) -> int:
        return self.cfg.steps

    def prepare(self) -> None:
        self.train = make_train_chunk(self.algo, self.cfg.batch_size)
        self.device_data = to_device(self.data)
        self.evaluator = make_evaluator(self.env, self.algo, self.cfg.eval_episodes)

    def init_state(self) -> Any:
        init_rng, rng = jax.random.split(jax.random.PRNGKey(self.exp.seed))
        return jax.jit(self.algo.init)(init_rng), rng  # one program, not one kernel per initialiser

    def experiment_dict(self) -> dict:
        return self.exp.to_dict(self.env.settings, self.dataset_info)

    def identity(self) -> dict:
        return {"algo": self.exp.algo, "env": self.exp.env, "dataset": self.exp.dataset, "seed": self.exp.seed}

    def compile(self, state: Any) -> float | None:
        start = time.perf_counter()
        n = min(self.cfg.eval_interval, self.cfg.steps)
        self.train = self.train.lower(state[0], state[1], n, self.device_data).compile()
        return time.perf_counter() - start

    def train_chunk(self, state: Any, done: int) -> tuple[Any, int, dict]:
        n = min(self.cfg.eval_interval, self.cfg.steps - done)
        start = time.perf_counter()
        learner_state, rng, learner = self.train(state[0], state[1], n, self.device_data)
        learner = {k: float(v) for k, v in learner.items()}
        self.train_seconds.append((n, time.perf_counter() - start))
        self.check_team_value(learner, f"between iterations {done:,} and {done + n:,}")
        return (learner_state, rng), done + n, learner

    def check_team_value(self, learner: dict[str, float], where: str) -> None:
        """Stop a run whose critic left every return the dataset's rewards allow: its
        targets feed on themselves and its policy weights mean nothing any more."""
        metric = self.algo.team_value_metric
        if self.value_limit is None or not abs(learner[metric]) > self.value_limit:
            return
        raise TrainingDiverged(
            f"the critic diverged: {metric} = {learner[metric]:,.4g} {where}, beyond +-{self.value_limit:,.4g} "
            f"({VALUE_LIMIT_FACTOR:g} x the largest discounted return the dataset's rewards allow)")

    def learned(self, state: Any) -> Any:
        return state[0]

    def evaluate(self, state: Any, tag: int, final: bool) -> dict:
        episodes = self.cfg.final_eval_episodes if final else self.cfg.eval_episodes
        params = self.algo.acting_params(state[0])
        record = set_headline(evaluate_both(self.evaluator, params, self.exp.seed, tag, episodes),
                              self.cfg.eval_mode)
        if self.is_matrix_game:
            # A one-step game's honest score is the expected payoff of the decentralised
            # policies (the product of their marginals), not one sampled or greedy play.
            record.update(matrix_game_report(self.algo, params, self.env))
            record["eval_return"] = record["expected_return"]
        return record

    def progress_text(self, r: dict) -> str:
        speed = r.get("updates_per_second")
        parts = [f"iteration {r['steps']:,}", f"{speed:,.0f} it/s" if speed else "final evaluation"]
        if r.get("eval_win_rate") is not None:
            parts.append(f"win {r['eval_win_rate']:.2f}")
        label = "expected return" if self.is_matrix_game else "return"
        return " | ".join([*parts, f"{label} {r['eval_return']:.3f}"])

    def summary_fields(self, records: list[dict], done: int, wall_seconds: float) -> dict:
        # Steady-state speed: the first chunk of a process may still warm up, so it is
        # left out when there are others.
        timed = self.train_seconds[1:] or self.train_seconds
        updates, seconds = sum(n for n, _ in timed), sum(s for _, s in timed)
        return {
            "batch_size": self.cfg.batch_size,
            "updates_per_second": round(updates / seconds, 1) if seconds else None,
            "eval_mode": self.cfg.eval_mode,
            "eval_return_kind": "expected (product of the policies)" if self.is_matrix_game else self.cfg.eval_mode,
            **dataset_summary(self.data),
        }

    def curve(self, records: list[dict]) -> None:
        plot_learning_curve(records, self.dir / "curve.png",
                            f"{self.exp.algo} on {self.exp.env}, {self.exp.dataset} (seed {self.exp.seed})",
                            self.env.spec.has_win, x_key="steps")
