"""The outer loop of online training: run directory, evaluation, logging,
checkpoints, progress display, resume, and a clean stop on Ctrl-C or NaN."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from rich.console import Console

from offmarl.algos.base import OnlineAlgorithm
from offmarl.envs.base import MultiAgentEnv
from offmarl.errors import ConfigError
from offmarl.evaluation.evaluate import CLI_EVAL_TAG, FINAL_EVAL_TAG, evaluate_both, make_evaluator
from offmarl.evaluation.plots import plot_learning_curve
from offmarl.experiment import Experiment, experiment_from_dict
from offmarl.runners.common import TrainingDiverged, check_finite, progress_display, read_run_config
from offmarl.runners.fused import FusedTrainer

if TYPE_CHECKING:
    from offmarl.runners.distributed import DistributedTrainer
from offmarl.utils.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from offmarl.utils.files import JsonlWriter, atomic_write_json, atomic_write_jsonl, read_jsonl

WIN_RATE_MILESTONE = 0.9


def load_run(run_dir: str | Path) -> tuple[Experiment, dict]:
    """The experiment and raw config.json of an existing run directory."""
    data = read_run_config(run_dir)
    return experiment_from_dict(data), data


@dataclass
class SavedRun:
    """An online run directory's environment, algorithm and saved parameters."""

    run_dir: Path
    experiment: Experiment
    env: MultiAgentEnv
    algo: OnlineAlgorithm
    steps: list[int]
    """Env-step counts of the saved checkpoints, oldest first."""
    _template: Any

    @classmethod
    def open(cls, run_dir: str | Path) -> SavedRun:
        run_dir = Path(run_dir)
        experiment, _ = load_run(run_dir)
        steps = list_checkpoints(run_dir / "checkpoints")
        if not steps:
            raise ConfigError(f"no checkpoint in {str(run_dir / 'checkpoints')!r}")
        env, algo = experiment.build()
        trainer = FusedTrainer(experiment.run_config, algo, env)
        shapes = jax.eval_shape(trainer.init, jax.random.PRNGKey(0))
        template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
        return cls(run_dir, experiment, env, algo, steps, template)

    def params(self, env_steps: int) -> Any:
        """The policy parameters saved at `env_steps`."""
        state, _ = load_checkpoint(self.run_dir / "checkpoints", env_steps, self._template)
        return state.params


class OnlineRun:
    """Trains one experiment into `out_dir`: with the fused runner, or with Ray workers
    when the config asks for `workers` (joining the cluster at `ray_address` if given)."""

    def __init__(self, experiment: Experiment, out_dir: str | Path, quiet: bool = False,
                 ray_address: str | None = None) -> None:
        self.exp = experiment
        self.dir = Path(out_dir)
        self.cfg = experiment.run_config
        self.console = Console(quiet=quiet, stderr=True)
        self.ray_address = ray_address
        if ray_address is not None and self.cfg.workers == 0:
            raise ConfigError("--ray-address needs Ray workers: add --workers N")

    # -- entry points ----------------------------------------------------------
    @classmethod
    def create(cls, experiment: Experiment, out_dir: str | Path, quiet: bool = False,
               ray_address: str | None = None) -> "OnlineRun":
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(
                f"output directory {str(out)!r} already holds files; choose a new --out "
                "or continue it with --resume"
            )
        return cls(experiment, out, quiet, ray_address)

    @classmethod
    def resume(cls, run_dir: str | Path, quiet: bool = False, ray_address: str | None = None) -> "OnlineRun":
        experiment, _ = load_run(run_dir)
        resolve_checkpoint(Path(run_dir) / "checkpoints")  # fails early if there is none
        return cls(experiment, run_dir, quiet, ray_address)

    def _make_trainer(self, algo: OnlineAlgorithm, env: MultiAgentEnv) -> FusedTrainer | DistributedTrainer:
        learner = FusedTrainer(self.cfg, algo, env)
        if self.cfg.workers == 0:
            return learner
        from offmarl.runners.distributed import DistributedTrainer

        return DistributedTrainer(self.exp, env.settings, learner, self.ray_address, self.dir)

    def execute(self) -> dict:
        """Train to the step budget (or from the last checkpoint); returns summary.json."""
        env, algo = self.exp.build()
        self.has_win = env.spec.has_win
        self.trainer = trainer = self._make_trainer(algo, env)  # joins Ray: may fail on a bad address
        self.dir.mkdir(parents=True, exist_ok=True)
        periodic_eval = make_evaluator(env, algo, self.cfg.eval_episodes)
        final_eval = make_evaluator(env, algo, self.cfg.final_eval_episodes)
        ckpt_dir = self.dir / "checkpoints"
        state = trainer.init(jax.random.PRNGKey(self.exp.seed))
        records: list[dict] = []
        env_steps, wall_offset = 0, 0.0
        if ckpt_dir.exists():
            env_steps = resolve_checkpoint(ckpt_dir)
            state, meta = load_checkpoint(ckpt_dir, env_steps, state)
            wall_offset = float(meta.get("wall_seconds", 0.0))
            trainer.restore(meta)
            records = [r for r in read_jsonl(self.dir / "metrics.jsonl") if r["env_steps"] <= env_steps]
            self.console.print(f"resuming {self.dir} from env step {env_steps:,}")
        else:
            atomic_write_json(self.dir / "config.json", self.exp.to_dict(env.settings))
        # Drop metrics logged after the checkpoint we continue from: no duplicates, no gaps.
        atomic_write_jsonl(self.dir / "metrics.jsonl", records)
        metrics_file = JsonlWriter(self.dir / "metrics.jsonl")
        from tensorboardX import SummaryWriter

        tb = SummaryWriter(str(self.dir / "tb"))
        status = "completed"
        start = time.perf_counter() - wall_offset
        updates_per_chunk = max(1, self.cfg.eval_interval // self.cfg.steps_per_update)
        last_ckpt = env_steps
        try:
            with progress_display(self.console, "steps") as progress:
                task = progress.add_task("train", total=self.cfg.num_updates * self.cfg.steps_per_update,
                                         completed=env_steps, stats="compiling...")
                while env_steps < self.cfg.num_updates * self.cfg.steps_per_update:
                    done_updates = env_steps // self.cfg.steps_per_update
                    n = min(updates_per_chunk, self.cfg.num_updates - done_updates)
                    chunk_start = time.perf_counter()
                    new_state, episodes, learner = trainer.train(state, n)
                    learner = {k: float(v) for k, v in learner.items()}
                    check_finite(learner, f"between env steps {env_steps:,} and "
                                          f"{env_steps + n * self.cfg.steps_per_update:,}")
                    state = new_state
                    chunk_seconds = time.perf_counter() - chunk_start
                    env_steps += n * self.cfg.steps_per_update
                    record = self._record(env_steps, start, chunk_seconds, n, episodes, learner)
                    record.update(evaluate_both(periodic_eval, state.params, self.exp.seed, env_steps))
                    self._headline(record)
                    records.append(record)
                    metrics_file.write(record)
                    for key, value in record.items():
                        if isinstance(value, (int, float)) and key != "env_steps":
                            tb.add_scalar(key, value, env_steps)
                    if env_steps - last_ckpt >= self.cfg.checkpoint_interval:
                        self._checkpoint(ckpt_dir, env_steps, state, start)
                        last_ckpt = env_steps
                    progress.update(task, completed=env_steps, stats=self._progress_text(record))
        except KeyboardInterrupt:
            status = "interrupted"
            self.console.print("[yellow]interrupted: saving a checkpoint of the last completed update")
        except TrainingDiverged as err:
            status = "diverged"
            self.console.print(f"[red]training stopped: {err}; the last good state is checkpointed")
        finally:
            metrics_file.close()
            tb.close()
            trainer.close(self.dir)  # before the last checkpoint, so it holds the final counts
        if env_steps > last_ckpt or not (ckpt_dir.exists()):
            self._checkpoint(ckpt_dir, env_steps, state, start)
        wall_seconds = time.perf_counter() - start
        summary = {**self._summary(status, env_steps, wall_seconds, records), **trainer.summary()}
        if status == "completed":
            final = evaluate_both(final_eval, state.params, self.exp.seed, FINAL_EVAL_TAG)
            summary.update({k.replace("eval_", "final_eval_", 1): v for k, v in final.items()})
            self._headline(final)
            summary.update({k: final[k] for k in ("eval_win_rate", "eval_return")})
            summary["eval_episodes"] = self.cfg.final_eval_episodes
        atomic_write_json(self.dir / "summary.json", summary)
        plot_learning_curve(records, self.dir / "curve.png",
                            f"{self.exp.algo} on {self.exp.env} (seed {self.exp.seed})", self.has_win)
        return summary

    # -- pieces ----------------------------------------------------------------
    def _progress_text(self, r: dict) -> str:
        text = f"{r['steps_per_second']:,.0f} steps/s"
        if self.has_win:
            text += f" | win {r['eval_win_rate']:.2f} (greedy {r['eval_greedy_win_rate']:.2f}, sampled {r['eval_sampled_win_rate']:.2f})"
        text += f" | return {r['eval_return']:.2f}"
        return text + (f" | lag {r['lag_mean']:.1f}" if "lag_mean" in r else "")

    def _headline(self, record: dict) -> None:
        mode = self.cfg.eval_mode
        record["eval_win_rate"] = record[f"eval_{mode}_win_rate"]
        record["eval_return"] = record[f"eval_{mode}_return"]

    def _record(self, env_steps, start, chunk_seconds, updates, episodes, learner) -> dict:
        count = float(episodes.episodes)
        return {
            "env_steps": env_steps,
            "updates": env_steps // self.cfg.steps_per_update,
            "wall_seconds": round(time.perf_counter() - start, 3),
            "steps_per_second": updates * self.cfg.steps_per_update / chunk_seconds,
            "train_episodes": int(count),
            "train_return": float(episodes.return_sum) / count if count else None,
            "train_win_rate": float(episodes.wins) / count if count and self.has_win else None,
            **learner,
        }

    def _checkpoint(self, ckpt_dir: Path, env_steps: int, state: Any, start: float) -> None:
        meta = {"algo": self.exp.algo, "env": self.exp.env, "seed": self.exp.seed,
                "wall_seconds": time.perf_counter() - start, **self.trainer.checkpoint_meta()}
        save_checkpoint(ckpt_dir, env_steps, state, meta, self.cfg.keep_checkpoints)

    def _summary(self, status: str, env_steps: int, wall_seconds: float, records: list[dict]) -> dict:
        milestone = next(
            (r for r in records if (r.get("eval_win_rate") or 0.0) >= WIN_RATE_MILESTONE), None
        )
        last = records[-1] if records else {}
        return {
            "algo": self.exp.algo,
            "env": self.exp.env,
            "seed": self.exp.seed,
            "status": status,
            "num_envs": self.cfg.num_envs,
            "env_steps": env_steps,
            "wall_seconds": round(wall_seconds, 2),
            "env_steps_per_second": round(env_steps / wall_seconds, 1) if wall_seconds else None,
            "eval_mode": self.cfg.eval_mode,
            "eval_win_rate": last.get("eval_win_rate"),
            "eval_return": last.get("eval_return"),
            "eval_episodes": self.cfg.eval_episodes,
            f"first_eval_win_rate_{WIN_RATE_MILESTONE}": (
                {"env_steps": milestone["env_steps"], "wall_seconds": milestone["wall_seconds"]}
                if milestone else None
            ),
            "device": jax.devices()[0].device_kind,
        }


def train_or_resume(experiment: Experiment, run_dir: Path, quiet: bool = False) -> tuple[dict, bool]:
    """The summary of the run in `run_dir`, and whether it was reused: a completed run is
    reused, a started one resumed from its last checkpoint, otherwise `experiment` is
    trained there."""
    summary = run_dir / "summary.json"
    if summary.is_file() and (finished := json.loads(summary.read_text())).get("status") == "completed":
        return finished, True
    if (run_dir / "config.json").is_file():
        return OnlineRun.resume(run_dir, quiet=quiet).execute(), False
    return OnlineRun.create(experiment, run_dir, quiet=quiet).execute(), False


def evaluate_run(run_dir: str | Path, episodes: int, checkpoint: str = "latest", seed: int | None = None) -> dict:
    """Evaluate a saved policy (greedy and sampled) on fresh episodes."""
    load_run(run_dir)
    step = resolve_checkpoint(Path(run_dir) / "checkpoints", checkpoint)
    run = SavedRun.open(run_dir)
    evaluator = make_evaluator(run.env, run.algo, episodes)
    experiment = run.experiment
    result = evaluate_both(evaluator, run.params(step), experiment.seed if seed is None else seed, CLI_EVAL_TAG)
    return {"run": str(run_dir), "algo": experiment.algo, "env": experiment.env,
            "checkpoint_env_steps": step, **result}
