"""The one outer loop of every run, online or offline.

A run trains in chunks. After each chunk it checks the losses and the parameters,
evaluates, and only then *commits*: the metrics record is written, the state becomes
the run's state and, every checkpoint interval, a checkpoint is saved. So a checkpoint
at step S always has its record at step S in metrics.jsonl, and a stop at any moment
(Ctrl-C, SIGTERM, NaN) keeps the last committed state, never a half-finished or
non-finite one.

The loop owns what every run needs: a lock on the run directory (one writer at a time),
resume from the newest readable checkpoint (an unreadable newer one is skipped with a
warning and renamed to `<name>.corrupt`, so it is no longer counted), a clean restart when a run died before its first checkpoint, stale temporary
files removed, SIGINT and SIGTERM handled alike (checkpoint, summary, exit 130 or 143),
the progress log, the final evaluation, summary.json and the learning curve.
Subclasses (runners/online.py, runners/offline.py) supply the training chunk, the
evaluation and their own summary fields.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from offmarl.errors import ConfigError
from offmarl.evaluation.evaluate import FINAL_EVAL_TAG
from offmarl.runners.common import (
    RunLock,
    RunProgress,
    StopRequested,
    StopSignals,
    TrainingDiverged,
    check_finite,
    holds_only_lock,
)
from offmarl.utils.checkpoint import list_checkpoints, load_newest_valid, save_checkpoint
from offmarl.utils.files import (JsonlWriter, atomic_write_json, atomic_write_jsonl, enclosing_run_directory, read_jsonl,
                                 remove_stale_temp_files)

MIN_FREE_BYTES = 64 * 2**20
"""A run refuses to start with less free disk space than this in its directory."""

EXIT_CODES = {"completed": 0, "diverged": 3}


def exit_code(summary: dict) -> int:
    """0 completed, 3 diverged, 128 + signal number when stopped by a signal (130, 143)."""
    if summary["status"] == "interrupted":
        return int(summary.get("stop_exit_code", 130))
    return EXIT_CODES[summary["status"]]


def all_finite(tree: Any) -> bool:
    """True if every floating-point leaf of `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return bool(jnp.all(jnp.stack(leaves))) if leaves else True


def with_budget(experiment: Any, saved: dict, key: str, value: int | None) -> tuple[Any, list[dict]]:
    """The saved `experiment` with `run_config.<key>` set to `value` (when given and
    different, validated), and the run's budget history (config.json's) with that change."""
    history = list(saved.get("budget_history", []))
    old = getattr(experiment.run_config, key)
    if value is None or value == old:
        return experiment, history
    run_config = dataclasses.replace(experiment.run_config, **{key: value})
    run_config.validate()
    return dataclasses.replace(experiment, run_config=run_config), [*history, {"from": old, "to": value}]


def set_headline(record: dict, mode: str) -> dict:
    """eval_win_rate / eval_return: the `mode` (greedy or sampled) evaluation's."""
    record["eval_win_rate"] = record[f"eval_{mode}_win_rate"]
    record["eval_return"] = record[f"eval_{mode}_return"]
    return record


class RunLoop(ABC):
    """Trains into a run directory; see the module docstring. Build one with `create`
    (a new directory) or a subclass's `resume`, then call `execute()` once."""

    unit: str
    """What the step counter counts, for messages ("env steps", "iterations")."""
    step_key: str
    """The step counter's key in records and summaries."""
    speed_key: str
    """The key of steps per second in records."""
    tensorboard: bool = False

    def __init__(self, run_dir: str | Path, lock: RunLock, fresh: bool, quiet: bool,
                 budget_history: list[dict] | None = None) -> None:
        self.dir = Path(run_dir)
        self.lock, self.fresh, self.quiet = lock, fresh, quiet
        self.budget_history = budget_history or []
        """Budget changes made by --resume, kept in config.json."""
        self.pending_warnings: list[str] = []
        """Shown when the run starts."""
        self.created_dir = False
        """This run created its directory (removed again if the run fails before writing)."""

    # -- construction ----------------------------------------------------------
    @classmethod
    def _locked(cls, run_dir: str | Path, fresh: bool, build: Any) -> Any:
        """Lock `run_dir` (created if new), then `build(lock)`; on failure nothing is left
        behind: the lock is released, and a directory this call created is removed."""
        run_dir = Path(run_dir)
        existed = run_dir.exists()
        if not fresh and not existed:
            raise ConfigError(f"{str(run_dir)!r} is not a run directory (it does not exist)")
        if fresh and (enclosing := enclosing_run_directory(run_dir.parent)) is not None:
            raise ConfigError(f"--out {str(run_dir)!r} lies inside the run directory {str(enclosing)!r}; "
                              "choose a path outside it")
        if existed and not run_dir.is_dir():
            raise ConfigError(f"--out {str(run_dir)!r} exists and is not a directory" if fresh
                              else f"{str(run_dir)!r} is not a run directory (it is a file)")
        lock = RunLock.acquire(run_dir)
        try:
            if fresh and not holds_only_lock(run_dir):
                raise ConfigError(f"output directory {str(run_dir)!r} already holds files; choose a "
                                  "new --out or continue it with --resume")
            run = build(lock)
            run.created_dir = not existed
            return run
        except BaseException:
            lock.release()
            if not existed and holds_only_lock(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise

    # -- what a subclass supplies ----------------------------------------------
    @property
    @abstractmethod
    def budget(self) -> int:
        """The step count at which training ends."""

    @property
    def checkpoint_interval(self) -> int:
        return self.cfg.checkpoint_interval  # both runners' configs have these fields

    @property
    def keep_checkpoints(self) -> int:
        return self.cfg.keep_checkpoints

    @abstractmethod
    def prepare(self) -> None:
        """Build the environment, algorithm and trainer (may raise ConfigError)."""

    @abstractmethod
    def init_state(self) -> Any:
        """A fresh training state (also the template checkpoints are restored into)."""

    @abstractmethod
    def experiment_dict(self) -> dict:
        """The experiment as config.json records it."""

    def config_json(self) -> dict:
        data = self.experiment_dict()
        return {**data, "budget_history": self.budget_history} if self.budget_history else data

    @abstractmethod
    def identity(self) -> dict:
        """algo, env, seed (and dataset): stored in checkpoints and summaries."""

    @abstractmethod
    def train_chunk(self, state: Any, done: int) -> tuple[Any, int, dict]:
        """Train from step `done`: (new state, new step count, record fields). Learner
        metrics among the fields that are floats are checked finite."""

    @abstractmethod
    def learned(self, state: Any) -> Any:
        """The part of `state` that training changes, checked finite after each chunk."""

    @abstractmethod
    def evaluate(self, state: Any, tag: int, final: bool) -> dict:
        """Greedy and sampled evaluation (eval_* keys, with the headline set)."""

    @abstractmethod
    def summary_fields(self, records: list[dict], done: int, wall_seconds: float) -> dict:
        """The subclass's own summary.json fields."""

    @abstractmethod
    def progress_text(self, record: dict) -> str:
        """One short line about an evaluation record."""

    @abstractmethod
    def curve(self, records: list[dict]) -> None:
        """Draw curve.png."""

    def compile(self, state: Any) -> float | None:
        """Compile the training step ahead of time; returns the seconds it took (None if
        this trainer compiles on first use)."""
        return None

    def start_note(self) -> str | None:
        """A line to show before training starts (e.g. how the budget was rounded)."""
        return None

    def checkpoint_meta(self) -> dict:
        """Trainer state kept beside the arrays (e.g. Ray's unroll counts)."""
        return {}

    def restore(self, meta: dict) -> None:
        """Take back what `checkpoint_meta` saved."""

    def commit(self) -> None:
        """The chunk just trained became the run's state."""

    def abort(self) -> None:
        """The chunk just trained is discarded (the run stops at its last commit)."""

    def close(self) -> None:
        """Release workers; write the trainer's own artefacts. Called once, at the end."""

    # -- the loop ----------------------------------------------------------------
    def execute(self) -> dict:
        """Train to the budget (resuming from the newest readable checkpoint if there is
        one); returns summary.json. Releases the run directory's lock at the end."""
        try:
            with StopSignals() as signals, RunProgress(self.unit, self.budget, 0, self.quiet) as progress:
                self.progress = progress
                return self._execute(signals, progress)
        finally:
            # A new run that failed before it trained anything (out of memory at the first
            # step, say; a run that ends writes summary.json) leaves no directory behind, so the
            # same command can run again. It is removed while still locked, so no other process
            # can have started on it.
            if self.created_dir and not self._trained_anything():
                shutil.rmtree(self.dir, ignore_errors=True)
            self.lock.release()

    def _trained_anything(self) -> bool:
        """Whether the run directory holds a summary, a checkpoint or a metrics record."""
        metrics = self.dir / "metrics.jsonl"
        return ((self.dir / "summary.json").exists() or bool(list_checkpoints(self.dir / "checkpoints"))
                or (metrics.exists() and metrics.stat().st_size > 0))

    def _execute(self, signals: StopSignals, progress: RunProgress) -> dict:
        ckpt_dir, metrics_path = self.dir / "checkpoints", self.dir / "metrics.jsonl"
        if shutil.disk_usage(self.dir).free < MIN_FREE_BYTES:
            raise ConfigError(f"less than {MIN_FREE_BYTES // 2**20} MiB free for {str(self.dir)!r}")
        remove_stale_temp_files(self.dir, ckpt_dir)
        for warning in self.pending_warnings:
            progress.warn(warning)
        self.prepare()
        state = self.init_state()
        done, wall_offset, records = 0, 0.0, []
        # The lock is held: an unreadable newer checkpoint is renamed out of the way (kept as
        # *.corrupt), so pruning, check_budget and later resumes no longer count it.
        loaded = (load_newest_valid(ckpt_dir, state, progress.warn, set_aside_unreadable=True)
                  if ckpt_dir.is_dir() else None)
        if loaded is not None:
            done, state, meta = loaded
            wall_offset = float(meta.get("wall_seconds", 0.0))
            self.restore(meta)
            records = [r for r in read_jsonl(metrics_path) if r[self.step_key] <= done]
            progress.line(f"resuming {self.dir} from {self.unit[:-1]} {done:,}")
        elif not self.fresh:
            progress.warn(f"{self.dir} has no checkpoint yet (the run stopped before its first): "
                          "starting it from scratch with its saved configuration")
        atomic_write_json(self.dir / "config.json", self.config_json())
        # Records past the checkpoint we continue from are dropped: no duplicates, no gaps.
        atomic_write_jsonl(metrics_path, records)
        if note := self.start_note():
            progress.line(note)
        progress.advance(done, "")
        progress.set_phase("compiling")
        if (seconds := self.compile(state)) is not None:
            progress.line(f"compiled the training step in {seconds:.1f} s")

        metrics_file = JsonlWriter(metrics_path)
        tb = self._tensorboard()
        status, stop = "completed", None
        start = time.perf_counter() - wall_offset
        last_ckpt = done if loaded is not None else -1
        try:
            while done < self.budget:
                progress.set_phase("training")
                chunk_start = time.perf_counter()
                new_state, new_done, fields = self.train_chunk(state, done)
                chunk_seconds = time.perf_counter() - chunk_start
                where = f"between {self.unit} {done:,} and {new_done:,}"
                check_finite({k: v for k, v in fields.items() if isinstance(v, float)}, where)
                if not all_finite(self.learned(new_state)):
                    raise TrainingDiverged(f"the parameters became non-finite {where}")
                progress.set_phase("evaluating")
                record = {self.step_key: new_done, "wall_seconds": round(time.perf_counter() - start, 3),
                          self.speed_key: (new_done - done) / chunk_seconds, **fields,
                          **self.evaluate(new_state, new_done, final=False)}
                with signals.deferred():
                    metrics_file.write(record)
                    records.append(record)
                    if tb is not None:
                        for key, value in record.items():
                            if isinstance(value, (int, float)) and key != self.step_key:
                                tb.add_scalar(key, value, new_done)
                        tb.flush()
                    state, done = new_state, new_done
                    self.commit()
                    if done - last_ckpt >= self.checkpoint_interval:
                        self._checkpoint(ckpt_dir, done, state, start)
                        last_ckpt = done
                progress.advance(done, f"{record[self.speed_key]:,.0f} {self.unit.split()[-1]}/s")
                progress.line(self.progress_text(record))
        except KeyboardInterrupt as err:  # StopRequested, or Ctrl-C where no handler is installed
            status, stop = "interrupted", err if isinstance(err, StopRequested) else StopRequested(signal.SIGINT)
            self.abort()
            progress.warn(f"{stop} received: checkpointing the last completed chunk ({self.unit[:-1]} "
                          f"{done:,}); continue with --resume {self.dir}")
        except TrainingDiverged as err:
            status = "diverged"
            self.abort()
            progress.error(f"training stopped (exit 3): {err}; the last good state ({self.unit[:-1]} "
                           f"{done:,}) is checkpointed")
        finally:
            signals.shutting_down()
            metrics_file.close()
            if tb is not None:
                tb.close()
        self.close()
        if done != last_ckpt:
            self._checkpoint(ckpt_dir, done, state, start)
        summary = self._summary(status, done, time.perf_counter() - start, records)
        if status == "completed":
            try:
                with signals.interruptible():
                    progress.set_phase("final evaluation")
                    final = self.evaluate(state, FINAL_EVAL_TAG, final=True)
                for key, value in final.items():
                    summary["final_" + key if key.startswith(("eval_greedy_", "eval_sampled_")) else key] = value
                summary["eval_episodes"] = final["eval_greedy_episodes"]
                progress.line(self.progress_text({**final, self.step_key: done, self.speed_key: None}))
            except StopRequested as err:
                stop = err
                summary["status"] = "interrupted"
                progress.warn(f"{err} received during the final evaluation: training is complete and "
                              f"checkpointed; --resume {self.dir} runs the final evaluation")
        if stop is not None:
            summary.update(stop_signal=str(stop), stop_exit_code=stop.exit_code)
        atomic_write_json(self.dir / "summary.json", summary)
        self.curve(records)
        return summary

    # -- pieces ----------------------------------------------------------------
    def _tensorboard(self) -> Any:
        if not self.tensorboard:
            return None
        from tensorboardX import SummaryWriter

        return SummaryWriter(str(self.dir / "tb"))

    def _checkpoint(self, ckpt_dir: Path, done: int, state: Any, start: float) -> None:
        meta = {**self.identity(), "wall_seconds": time.perf_counter() - start, **self.checkpoint_meta()}
        save_checkpoint(ckpt_dir, done, state, meta, self.keep_checkpoints)

    def _summary(self, status: str, done: int, wall_seconds: float, records: list[dict]) -> dict:
        last = records[-1] if records else {}
        return {
            **self.identity(),
            "status": status,
            self.step_key: done,
            "wall_seconds": round(wall_seconds, 2),
            "eval_win_rate": last.get("eval_win_rate"),
            "eval_return": last.get("eval_return"),
            "eval_episodes": last.get("eval_greedy_episodes"),
            **self.summary_fields(records, done, wall_seconds),
            "device": jax.devices()[0].device_kind,
        }

    def check_budget(self, budget: int) -> None:
        """ConfigError if `budget` is below the steps this directory already trained."""
        steps = list_checkpoints(self.dir / "checkpoints")
        if steps and budget < steps[-1]:
            raise ConfigError(f"the new budget ({budget:,} {self.unit}) is below the {steps[-1]:,} "
                              f"{self.unit} {str(self.dir)!r} has already trained")

