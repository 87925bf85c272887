"""Offline training from a fixed dataset: uniform minibatches, jitted update chunks,
periodic evaluation in the environment, checkpoints, resume, and a clean stop on
Ctrl-C or NaN. Works with any registered offline algorithm."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console

from offmarl.algos.base import OfflineAlgorithm
from offmarl.data.dataset import OfflineDataset
from offmarl.data.source import check_dataset_matches, load_dataset
from offmarl.errors import ConfigError
from offmarl.evaluation.evaluate import FINAL_EVAL_TAG, evaluate_both, make_evaluator
from offmarl.evaluation.matrix_games import matrix_game_report
from offmarl.evaluation.plots import plot_learning_curve
from offmarl.experiment import OfflineExperiment, offline_experiment_from_dict
from offmarl.runners.common import TrainingDiverged, check_finite, progress_display, read_run_config
from offmarl.types import TransitionBatch
from offmarl.utils.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from offmarl.utils.files import JsonlWriter, atomic_write_json, atomic_write_jsonl, read_jsonl


class DeviceDataset(NamedTuple):
    """A dataset's transitions as device arrays, with the row index of each next observation."""

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
        actions=jnp.asarray(data.actions, jnp.int32),
        reward=jnp.asarray(data.rewards[:, 0], jnp.float32),
        done=jnp.asarray(terminal, jnp.float32),
        valid=jnp.asarray(~cut_off, jnp.float32),
        next_index=jnp.asarray(np.minimum(np.arange(rows) + 1, rows - 1), jnp.int32),
    )


def sample_batch(data: DeviceDataset, rng: jax.Array, batch_size: int) -> TransitionBatch:
    """Uniformly sampled transitions."""
    index = jax.random.randint(rng, (batch_size,), 0, data.actions.shape[0])
    nxt = data.next_index[index]
    return TransitionBatch(
        obs=data.obs[index], state=data.state[index], avail=data.avail[index],
        actions=data.actions[index], reward=data.reward[index], done=data.done[index],
        next_obs=data.obs[nxt], next_state=data.state[nxt], next_avail=data.avail[nxt],
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


def dataset_summary(data: OfflineDataset) -> dict[str, float]:
    returns = data.episode_returns()
    return {"dataset_episodes": data.num_episodes, "dataset_transitions": data.num_transitions,
            "dataset_return_mean": float(returns.mean()), "dataset_return_std": float(returns.std())}


def load_offline_run(run_dir: str | Path) -> OfflineExperiment:
    return offline_experiment_from_dict(read_run_config(run_dir))


class OfflineRun:
    """Trains one offline experiment into `out_dir`."""

    def __init__(self, experiment: OfflineExperiment, out_dir: str | Path, quiet: bool = False) -> None:
        self.exp = experiment
        self.dir = Path(out_dir)
        self.cfg = experiment.run_config
        self.console = Console(quiet=quiet, stderr=True)
        # Load and check the data now, so a bad dataset fails before anything compiles.
        self.env, self.algo = experiment.build()
        self.data, self.dataset_info = load_dataset(experiment.env, experiment.dataset)
        check_dataset_matches(self.data, self.env.spec, experiment.dataset)

    @classmethod
    def create(cls, experiment: OfflineExperiment, out_dir: str | Path, quiet: bool = False) -> "OfflineRun":
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"output directory {str(out)!r} already holds files; choose a new --out "
                              "or continue it with --resume")
        return cls(experiment, out, quiet)

    @classmethod
    def resume(cls, run_dir: str | Path, quiet: bool = False) -> "OfflineRun":
        experiment = load_offline_run(run_dir)
        resolve_checkpoint(Path(run_dir) / "checkpoints")  # fails early if there is none
        return cls(experiment, run_dir, quiet)

    def execute(self) -> dict:
        """Train to the iteration budget (or on from the last checkpoint); returns summary.json."""
        cfg, spec = self.cfg, self.env.spec
        train = make_train_chunk(self.algo, cfg.batch_size)
        data = to_device(self.data)
        periodic_eval = make_evaluator(self.env, self.algo, cfg.eval_episodes)
        ckpt_dir = self.dir / "checkpoints"
        init_rng, rng = jax.random.split(jax.random.PRNGKey(self.exp.seed))
        carry = (self.algo.init(init_rng), rng)
        records: list[dict] = []
        steps, wall_offset = 0, 0.0
        if ckpt_dir.exists():
            steps = resolve_checkpoint(ckpt_dir)
            carry, meta = load_checkpoint(ckpt_dir, steps, carry)
            wall_offset = float(meta.get("wall_seconds", 0.0))
            records = [r for r in read_jsonl(self.dir / "metrics.jsonl") if r["steps"] <= steps]
            self.console.print(f"resuming {self.dir} from iteration {steps:,}")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.dir / "config.json", self.exp.to_dict(self.env.settings, self.dataset_info))
        atomic_write_jsonl(self.dir / "metrics.jsonl", records)  # drop records past the checkpoint
        metrics_file = JsonlWriter(self.dir / "metrics.jsonl")
        status, start, last_ckpt = "completed", time.perf_counter() - wall_offset, steps
        train_seconds: list[tuple[int, float]] = []
        try:
            with progress_display(self.console, "iterations") as progress:
                task = progress.add_task("offline", total=cfg.steps, completed=steps, stats="compiling...")
                while steps < cfg.steps:
                    n = min(cfg.eval_interval, cfg.steps - steps)
                    chunk_start = time.perf_counter()
                    state, rng, learner = train(carry[0], carry[1], n, data)
                    learner = {k: float(v) for k, v in learner.items()}
                    check_finite(learner, f"between iterations {steps:,} and {steps + n:,}")
                    train_seconds.append((n, time.perf_counter() - chunk_start))
                    carry, steps = (state, rng), steps + n
                    params = self.algo.acting_params(state)
                    record = {"steps": steps, "wall_seconds": round(time.perf_counter() - start, 3),
                              "updates_per_second": n / train_seconds[-1][1], **learner,
                              **evaluate_both(periodic_eval, params, self.exp.seed, steps)}
                    if hasattr(self.env, "game"):
                        record.update(matrix_game_report(self.algo, params, self.env))
                    self._headline(record)
                    records.append(record)
                    metrics_file.write(record)
                    if steps - last_ckpt >= cfg.checkpoint_interval:
                        self._checkpoint(ckpt_dir, steps, carry, start)
                        last_ckpt = steps
                    progress.update(task, completed=steps, stats=self._progress_text(record))
        except KeyboardInterrupt:
            status = "interrupted"
            self.console.print("[yellow]interrupted: saving a checkpoint of the last completed chunk")
        except TrainingDiverged as err:
            status = "diverged"
            self.console.print(f"[red]training stopped: {err}; the last good state is checkpointed")
        finally:
            metrics_file.close()
        if steps > last_ckpt or not ckpt_dir.exists():
            self._checkpoint(ckpt_dir, steps, carry, start)
        summary = self._summary(status, steps, time.perf_counter() - start, train_seconds, records)
        if status == "completed":
            final_eval = make_evaluator(self.env, self.algo, cfg.final_eval_episodes)
            params = self.algo.acting_params(carry[0])
            final = evaluate_both(final_eval, params, self.exp.seed, FINAL_EVAL_TAG)
            self._headline(final)
            summary.update({k.replace("eval_", "final_eval_", 1): v for k, v in final.items()})
            summary.update({k: final[k] for k in ("eval_win_rate", "eval_return")},
                           eval_episodes=cfg.final_eval_episodes)
            if hasattr(self.env, "game"):
                summary.update(matrix_game_report(self.algo, params, self.env))
        atomic_write_json(self.dir / "summary.json", summary)
        plot_learning_curve(records, self.dir / "curve.png",
                            f"{self.exp.algo} on {self.exp.env}, {self.exp.dataset} (seed {self.exp.seed})",
                            spec.has_win, x_key="steps")
        return summary

    def _headline(self, record: dict) -> None:
        mode = self.cfg.eval_mode
        record["eval_win_rate"] = record[f"eval_{mode}_win_rate"]
        record["eval_return"] = record[f"eval_{mode}_return"]

    def _progress_text(self, r: dict) -> str:
        text = f"{r['updates_per_second']:,.0f} it/s"
        if r["eval_win_rate"] is not None:
            text += f" | win {r['eval_win_rate']:.2f}"
        return text + f" | return {r['eval_return']:.3f}"

    def _checkpoint(self, ckpt_dir: Path, steps: int, carry: Any, start: float) -> None:
        meta = {"algo": self.exp.algo, "env": self.exp.env, "dataset": self.exp.dataset,
                "seed": self.exp.seed, "wall_seconds": time.perf_counter() - start}
        save_checkpoint(ckpt_dir, steps, carry, meta, self.cfg.keep_checkpoints)

    def _summary(self, status: str, steps: int, wall_seconds: float,
                 train_seconds: list[tuple[int, float]], records: list[dict]) -> dict:
        # Steady-state speed: the first chunk of this process also compiles, so it is left
        # out when there are others.
        timed = train_seconds[1:] or train_seconds
        updates = sum(n for n, _ in timed)
        seconds = sum(s for _, s in timed)
        last = records[-1] if records else {}
        return {
            "algo": self.exp.algo, "env": self.exp.env, "dataset": self.exp.dataset, "seed": self.exp.seed,
            "status": status, "steps": steps, "batch_size": self.cfg.batch_size,
            "wall_seconds": round(wall_seconds, 2),
            "updates_per_second": round(updates / seconds, 1) if seconds else None,
            "eval_mode": self.cfg.eval_mode,
            "eval_win_rate": last.get("eval_win_rate"), "eval_return": last.get("eval_return"),
            "eval_episodes": self.cfg.eval_episodes,
            **dataset_summary(self.data),
            "device": jax.devices()[0].device_kind,
        }
