"""Online training runs (fused, or with Ray workers) on the shared run loop, and the
saved policies of finished runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax

from offmarl.algos.base import OnlineAlgorithm
from offmarl.envs.base import MultiAgentEnv
from offmarl.errors import ConfigError
from offmarl.evaluation.evaluate import evaluate_both, make_evaluator
from offmarl.evaluation.plots import plot_learning_curve
from offmarl.runners.experiment import Experiment, experiment_from_dict
from offmarl.runners.common import RunLock, read_run_config
from offmarl.runners.fused import FusedTrainer
from offmarl.runners.loop import RunLoop, set_headline, with_budget

if TYPE_CHECKING:
    from offmarl.runners.distributed import DistributedTrainer

WIN_RATE_MILESTONE = 0.9


def load_run(run_dir: str | Path) -> tuple[Experiment, dict]:
    """The experiment and raw config.json of an existing online run directory."""
    data = read_run_config(run_dir)
    if "dataset" in data:
        raise ConfigError(f"{str(run_dir)!r} is an offline run (it records a dataset); continue it with "
                          f"`offmarl offline --resume {run_dir}`")
    return experiment_from_dict(data), data


class OnlineRun(RunLoop):
    """Trains one experiment into a run directory: with the fused runner, or with Ray
    workers when the config asks for `workers` (joining the cluster at `ray_address`)."""

    unit = "env steps"
    step_key = "env_steps"
    speed_key = "steps_per_second"
    tensorboard = True

    def __init__(self, experiment: Experiment, run_dir: str | Path, lock: RunLock, fresh: bool,
                 quiet: bool = False, ray_address: str | None = None, budget_history: list | None = None) -> None:
        super().__init__(run_dir, lock, fresh, quiet, budget_history)
        self.exp, self.cfg = experiment, experiment.run_config
        self.ray_address = ray_address
        if ray_address is not None and self.cfg.workers == 0:
            raise ConfigError("--ray-address needs Ray workers: add --workers N")

    # -- entry points ----------------------------------------------------------
    @classmethod
    def create(cls, experiment: Experiment, out_dir: str | Path, quiet: bool = False,
               ray_address: str | None = None) -> OnlineRun:
        """A new run in `out_dir` (which must be empty or new)."""
        return cls._locked(out_dir, True, lambda lock: cls(experiment, out_dir, lock, True, quiet, ray_address))

    @classmethod
    def resume(cls, run_dir: str | Path, quiet: bool = False, ray_address: str | None = None,
               env_steps: int | None = None) -> OnlineRun:
        """Continue the run in `run_dir` from its newest readable checkpoint; `env_steps`
        sets a new budget (the learning-rate schedule is re-planned over it)."""

        def build(lock: RunLock) -> OnlineRun:
            experiment, history = with_budget(*load_run(run_dir), "env_steps", env_steps)
            run = cls(experiment, run_dir, lock, False, quiet, ray_address, history)
            run.check_budget(run.budget)
            return run

        return cls._locked(run_dir, False, build)

    # -- the run loop's hooks --------------------------------------------------
    @property
    def budget(self) -> int:
        return self.cfg.num_updates * self.cfg.steps_per_update

    def prepare(self) -> None:
        if self.cfg.workers:
            # Join Ray (may fail on a bad address) before anything here starts JAX, e.g. by
            # importing jaxmarl: ray.init forks Ray's processes, unsafe once JAX's threads run.
            from offmarl.runners.distributed import connect_ray

            connect_ray(self.ray_address, self.cfg.workers)
        self.env, self.algo = self.exp.build()
        self.trainer = self._make_trainer(self.algo, self.env)
        self.evaluator = make_evaluator(self.env, self.algo, self.cfg.eval_episodes)

    def _make_trainer(self, algo: OnlineAlgorithm, env: MultiAgentEnv) -> FusedTrainer | DistributedTrainer:
        learner = FusedTrainer(self.cfg, algo, env)
        if self.cfg.workers == 0:
            return learner
        from offmarl.runners.distributed import DistributedTrainer

        return DistributedTrainer(self.exp, env.settings, learner, self.ray_address, self.dir)

    def init_state(self) -> Any:
        return self.trainer.init(jax.random.PRNGKey(self.exp.seed))

    def experiment_dict(self) -> dict:
        return self.exp.to_dict(self.env.settings)

    def identity(self) -> dict:
        return {"algo": self.exp.algo, "env": self.exp.env, "seed": self.exp.seed}

    def start_note(self) -> str | None:
        cfg = self.cfg
        if cfg.env_steps == self.budget:
            return None
        return (f"env_steps={cfg.env_steps:,} rounds down to {self.budget:,}: {cfg.num_updates:,} "
                f"updates of num_envs x unroll_length x unrolls_per_update = {cfg.steps_per_update:,} env steps")

    def _updates_per_chunk(self) -> int:
        return max(1, self.cfg.eval_interval // self.cfg.steps_per_update)

    def compile(self, state: Any) -> float | None:
        if not isinstance(self.trainer, FusedTrainer):
            return None
        return self.trainer.compile(state, min(self._updates_per_chunk(), self.cfg.num_updates))

    def train_chunk(self, state: Any, done: int) -> tuple[Any, int, dict]:
        spu = self.cfg.steps_per_update
        n = min(self._updates_per_chunk(), self.cfg.num_updates - done // spu)
        state, episodes, learner = self.trainer.train(state, n)
        count = float(episodes.episodes)
        has_win = self.env.spec.has_win
        return state, done + n * spu, {
            "updates": done // spu + n,
            "train_episodes": int(count),
            "train_return": float(episodes.return_sum) / count if count else None,
            "train_win_rate": float(episodes.wins) / count if count and has_win else None,
            **{k: float(v) for k, v in learner.items()},
        }

    def learned(self, state: Any) -> Any:
        return state.params, state.opt_state

    def evaluate(self, state: Any, tag: int, final: bool) -> dict:
        episodes = self.cfg.final_eval_episodes if final else self.cfg.eval_episodes
        return set_headline(evaluate_both(self.evaluator, state.params, self.exp.seed, tag, episodes),
                            self.cfg.eval_mode)

    def progress_text(self, r: dict) -> str:
        speed = r.get("steps_per_second")
        parts = [f"step {r['env_steps']:,}", f"{speed:,.0f} steps/s" if speed else "final evaluation"]
        if self.env.spec.has_win:
            parts.append(f"win {r['eval_greedy_win_rate']:.2f} greedy, {r['eval_sampled_win_rate']:.2f} sampled")
        parts.append(f"return {r['eval_return']:.2f}")
        if "lag_mean" in r:
            parts.append(f"lag {r['lag_mean']:.1f}")
        return " | ".join(parts)

    def summary_fields(self, records: list[dict], done: int, wall_seconds: float) -> dict:
        milestone = next((r for r in records if (r.get("eval_win_rate") or 0.0) >= WIN_RATE_MILESTONE), None)
        return {
            "num_envs": self.cfg.num_envs,
            "env_steps_per_second": round(done / wall_seconds, 1) if wall_seconds else None,
            "eval_mode": self.cfg.eval_mode,
            f"first_eval_win_rate_{WIN_RATE_MILESTONE}": (
                {"env_steps": milestone["env_steps"], "wall_seconds": milestone["wall_seconds"]}
                if milestone else None
            ),
            **self.trainer.summary(),
        }

    def curve(self, records: list[dict]) -> None:
        plot_learning_curve(records, self.dir / "curve.png",
                            f"{self.exp.algo} on {self.exp.env} (seed {self.exp.seed})", self.env.spec.has_win)

    def checkpoint_meta(self) -> dict:
        return self.trainer.checkpoint_meta()

    def restore(self, meta: dict) -> None:
        self.trainer.restore(meta)

    def commit(self) -> None:
        self.trainer.commit()

    def abort(self) -> None:
        self.trainer.abort()

    def close(self) -> None:
        self.trainer.close(self.dir)


FINISHED_STATUSES = ("completed", "diverged")
"""Statuses of a run that resuming would not change."""


def train_or_resume(experiment: Experiment, run_dir: Path, quiet: bool = False) -> tuple[dict, bool]:
    """The summary of the run in `run_dir`, and whether it was reused: a completed or
    diverged run is reused (resuming a divergence from its last good checkpoint repeats it),
    a started one resumed from its last checkpoint, otherwise `experiment` is trained there."""
    summary = run_dir / "summary.json"
    if summary.is_file() and (finished := json.loads(summary.read_text())).get("status") in FINISHED_STATUSES:
        return finished, True
    if (run_dir / "config.json").is_file():
        return OnlineRun.resume(run_dir, quiet=quiet).execute(), False
    return OnlineRun.create(experiment, run_dir, quiet=quiet).execute(), False
