"""A sweep: every (algorithm, environment, seed) cell of a grid trained into an ordinary
run directory, then aggregated across seeds and algorithms. See docs/sweep.md.

Each cell is made by the ordinary command line in a subprocess (`python -m offmarl.cli
train ...`, or `offline ...` for offline algorithms), so it has the run loop's lock,
resume and signal handling. The sweep directory:

    DIR/sweep.json          the grid, the overrides, the budget (and its changes)
    DIR/.lock               the lock of the sweep process writing DIR
    DIR/runs/<algo>_<env slug>_s<seed>/   one run directory per cell
    DIR/logs/<cell>.log     each cell's output (appended on every start)
    DIR/marl_eval.json, DIR/aggregate.json, DIR/table.md,
    DIR/performance_profile.png, DIR/probability_of_improvement.png,
    DIR/curves.png          mean greedy evaluation over seeds per task and algorithm

A rerun of the same command skips completed cells (whose budget matches), resumes the
started ones and creates the rest; a different grid, dataset or overrides for the same
DIR is refused (exit 2), and so is a dataset whose data has changed since a cell trained
on it (its SHA-256 is in the cell's config.json). Everything is checked, every cell's
experiment resolved and the dataset loaded and matched to each environment, before
anything is created or started. Tables, statistics and curves count only the cells
completed at the current budget.

An override `key=value` applies to every cell; `ALGO.key=value` to ALGO's cells only (and
beats a plain `key=value`), so one sweep can compare algorithms whose settings differ
(`matrace.lr=5e-4 mappo.clip_eps=0.1`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from offmarl.errors import ConfigError
from offmarl.runners.common import StopSignals
from offmarl.utils.files import slug
from offmarl.utils.process import child_environment
from offmarl.utils.progress import format_elapsed

SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
LOGS_DIR = "logs"
SWEEP_VERSION = 1
THRESHOLD = 0.8
"""The periodic greedy evaluation score whose first crossing table.md reports."""
PARTIAL_REPS = 1000
"""Bootstrap replications of the statistics refreshed after each finished cell (the
final aggregation, and a rerun with nothing left to do, use the sweep's --reps)."""
POLL_SECONDS = 0.2
EXIT_BAD_INPUT, EXIT_CELLS_FAILED = 2, 1
CELL_EXIT = {0: "completed", 3: "diverged", 130: "interrupted", 143: "interrupted", 2: "refused"}


# -- the grid -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    algo: str
    env: str
    seed: int
    kind: str
    """online or offline"""
    budget: int
    """Training steps the cell ends at: env steps (online, rounded down to whole
    updates) or iterations (offline)."""
    requested: int
    """The budget as configured (online: before rounding), which a resume asks for, so the
    run records no change of budget."""

    @property
    def name(self) -> str:
        return f"{self.algo}_{slug(self.env)}_s{self.seed}"

    @property
    def step_key(self) -> str:
        return "env_steps" if self.kind == "online" else "steps"

    def label(self) -> str:
        return f"{self.algo} {self.env} s{self.seed}"


@dataclass(frozen=True)
class SweepPlan:
    """A checked grid: every cell's experiment resolved."""

    out: Path
    algos: tuple[str, ...]
    envs: tuple[str, ...]
    seeds: tuple[int, ...]
    dataset: str | None
    overrides: tuple[str, ...]
    env_steps: int | None
    steps: int | None
    cells: tuple[Cell, ...]
    budget_history: tuple[dict, ...] = ()
    dataset_sha256: tuple[tuple[str, str], ...] = ()
    """(env, the SHA-256 of the data `dataset` holds for it) for offline sweeps."""

    def grid(self) -> dict:
        """What must match for a rerun into the same directory: the overrides as each
        algorithm's cells resolve them."""
        from offmarl.config import parse_overrides

        return {"algos": sorted(self.algos), "envs": sorted(self.envs), "seeds": sorted(self.seeds),
                "dataset": self.dataset,
                "overrides": {algo: parse_overrides(overrides_for(algo, self.overrides)) for algo in sorted(self.algos)}}

    def to_json(self) -> dict:
        return {
            "version": SWEEP_VERSION,
            "algos": list(self.algos), "envs": list(self.envs), "seeds": list(self.seeds),
            "dataset": self.dataset, "overrides": list(self.overrides),
            "budget": {"env_steps": self.env_steps, "steps": self.steps},
            "budget_history": list(self.budget_history),
            **({"dataset_sha256": dict(self.dataset_sha256)} if self.dataset_sha256 else {}),
            "cells": [{"name": c.name, "dir": f"{RUNS_DIR}/{c.name}", "algo": c.algo, "env": c.env,
                       "seed": c.seed, "kind": c.kind, c.step_key: c.budget} for c in self.cells],
        }

    def run_dir(self, cell: Cell) -> Path:
        return self.out / RUNS_DIR / cell.name


def parse_names(flag: str, text: str) -> list[str]:
    """A comma-separated list of names: no empty items, no repeats."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise ConfigError(f"{flag} {text!r} is invalid: expected a comma-separated list without empty items")
    repeated = sorted({t for t in items if items.count(t) > 1})
    if repeated:
        raise ConfigError(f"{flag} names {repeated[0]!r} more than once")
    return items


def parse_seeds(text: str) -> list[int]:
    """--seeds 0,1,2: non-negative integers, no repeats."""
    if not text.strip():
        raise ConfigError("--seeds is empty: give at least one seed, e.g. --seeds 0,1,2")
    seeds = []
    for item in parse_names("--seeds", text):
        try:
            seed = int(item)
        except ValueError:
            raise ConfigError(f"--seeds {text!r} is invalid: {item!r} is not an integer") from None
        if seed < 0:
            raise ConfigError(f"--seeds {text!r} is invalid: seed {seed} is negative (must be >= 0)")
        seeds.append(seed)
    return seeds


def _check_dataset(env: str, dataset: str) -> None:
    """ConfigError unless `dataset` is a built-in dataset of `env` or a vault (with the
    uid, and recorded for this env where the vault says)."""
    from offmarl.data.builtin import builtin_dataset_names
    from offmarl.data.vault import list_uids, parse_dataset_arg, vault_metadata

    builtin = builtin_dataset_names(env)
    if dataset in builtin:
        return
    path, uid = parse_dataset_arg(dataset)
    uids = list_uids(path) if path.is_dir() else []
    if not uids:
        choices = ", ".join(builtin) or "none"
        raise ConfigError(f"--dataset {dataset!r} is neither a built-in dataset of {env} (those: {choices}) "
                          "nor a vault")
    if uid is None and len(uids) != 1:
        raise ConfigError(f"--dataset {dataset!r} holds several datasets: name one of "
                          f"{', '.join(f'{path}:{u}' for u in uids)}")
    uid = uid if uid is not None else uids[0]
    if uid not in uids:
        raise ConfigError(f"--dataset {dataset!r}: the vault has no dataset {uid!r} (it has {', '.join(uids)})")
    recorded = vault_metadata(path, uid).get("env")
    if recorded and recorded != env:
        raise ConfigError(f"--dataset {dataset!r} was recorded in {recorded}, not {env}: "
                          "a sweep's offline cells all train on the one --dataset")


def _split_scope(word: str) -> tuple[str | None, str]:
    """`algo.key=value` -> ("algo", "key=value"); a plain `key=value` -> (None, word)."""
    key, sep, value = word.partition("=")
    scope, dot, field = key.rpartition(".")
    return (scope, f"{field}{sep}{value}") if dot else (None, word)


def overrides_for(algo: str, words: list[str] | tuple[str, ...]) -> list[str]:
    """The override words that apply to `algo`'s cells, each key once: every plain
    `key=value`, with an `algo.key=value` (prefix dropped) replacing a plain word for the
    same key, so a scoped value beats a plain one wherever either stands on the command line."""
    from offmarl.config import parse_overrides

    split = list(map(_split_scope, words))
    ordered = [plain for scope, plain in split if scope is None] + [plain for scope, plain in split if scope == algo]
    return [f"{key}={value}" for key, value in parse_overrides(ordered, later_wins=True).items()]


def _check_scope_order(words: list[str] | tuple[str, ...], algos: list[str]) -> None:
    """ConfigError if a sweep's recorded overrides resolve differently under the old rule
    (the later word wins) and today's (a scoped word wins): its started cells and new ones
    would then differ."""
    from offmarl.config import parse_overrides

    for algo in algos:
        in_order = [plain for scope, plain in map(_split_scope, words) if scope in (None, algo)]
        if parse_overrides(in_order, later_wins=True) != parse_overrides(overrides_for(algo, words)):
            raise ConfigError(f"this sweep's overrides ({' '.join(words)}) set a key for {algo} both plainly and "
                              "scoped, with the plain word later: older offmarl let it win, today the scoped one "
                              "does, so new cells would differ from started ones; choose a new --out")


def _check_override_scopes(words: list[str] | tuple[str, ...], algos: list[str]) -> None:
    for word in words:
        scope, _ = _split_scope(word)
        if scope is not None and scope not in algos:
            raise ConfigError(f"override {word!r} names algorithm {scope!r}, which is not in --algos "
                              f"(valid prefixes: {', '.join(algos)})")


def _resolve_cell(algo: str, kind: str, env: str, seed: int, dataset: str | None,
                  env_steps: int | None, steps: int | None, overrides: dict[str, str]) -> Cell:
    from offmarl.runners.experiment import resolve_experiment, resolve_offline_experiment

    where = f"{algo} on {env} (seed {seed})"
    try:
        if kind == "online":
            flags = {"env_steps": env_steps} if env_steps is not None else {}
            cfg = resolve_experiment(algo, env, seed, flags, overrides).run_config
            return Cell(algo, env, seed, kind, cfg.num_updates * cfg.steps_per_update, cfg.env_steps)
        flags = {"steps": steps} if steps is not None else {}
        cfg = resolve_offline_experiment(algo, env, dataset, seed, flags, overrides).run_config
        return Cell(algo, env, seed, kind, cfg.steps, cfg.steps)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def plan_sweep(out: str | Path, algos: list[str], envs: list[str], seeds: list[int],
               env_steps: int | None = None, steps: int | None = None, dataset: str | None = None,
               overrides: list[str] | tuple[str, ...] = ()) -> SweepPlan:
    """Check the grid and resolve every cell's experiment (ConfigError on any problem);
    creates nothing. A rerun into an existing sweep directory must have the same
    algorithms, environments, seeds, dataset and overrides; a budget left out keeps the
    recorded one, a new one is recorded in budget_history."""
    from offmarl.algos import get_algorithm
    from offmarl.config import parse_overrides
    from offmarl.envs import check_env_name

    out = Path(out)
    if not algos:
        raise ConfigError("--algos is empty: give at least one algorithm (see `offmarl algos`)")
    if not envs:
        raise ConfigError("--envs is empty: give at least one environment (see `offmarl envs`)")
    if not seeds:
        raise ConfigError("--seeds is empty: give at least one seed, e.g. --seeds 0,1,2")
    for seed in seeds:
        if seed < 0:
            raise ConfigError(f"seed {seed} is invalid: must be >= 0")
    kinds = {algo: get_algorithm(algo).kind for algo in algos}
    for env in envs:
        check_env_name(env)
    online = [a for a, k in kinds.items() if k == "online"]
    offline = [a for a, k in kinds.items() if k == "offline"]
    if offline and dataset is None:
        mixed = f" (mixed with the online {', '.join(online)})" if online else ""
        plural = len(offline) > 1
        raise ConfigError(f"offline algorithm{'s' * plural} {', '.join(offline)}{mixed} "
                          f"need{'' if plural else 's'} --dataset")
    if dataset is not None and not offline:
        raise ConfigError("--dataset is for offline algorithms; none is in --algos")
    if env_steps is not None and not online:
        raise ConfigError("--env-steps is the budget of online algorithms; none is in --algos (use --steps)")
    if steps is not None and not offline:
        raise ConfigError("--steps is the budget of offline algorithms; none is in --algos (use --env-steps)")
    for budget, flag in ((env_steps, "--env-steps"), (steps, "--steps")):
        if budget is not None and budget <= 0:
            raise ConfigError(f"{flag}={budget} is invalid: must be a positive integer")
    parse_overrides(list(overrides))
    _check_override_scopes(overrides, algos)
    values = {algo: parse_overrides(overrides_for(algo, overrides)) for algo in algos}

    history: list[dict] = []
    recorded = read_sweep_json(out)
    if recorded is not None:
        old = SweepPlan(out, tuple(recorded["algos"]), tuple(recorded["envs"]), tuple(recorded["seeds"]),
                        recorded.get("dataset"), tuple(recorded.get("overrides", [])), None, None, ())
        new = SweepPlan(out, tuple(algos), tuple(envs), tuple(seeds), dataset, tuple(overrides), None, None, ())
        _check_scope_order(recorded.get("overrides", []), algos)
        diff = [k for k in ("algos", "envs", "seeds", "dataset", "overrides") if old.grid()[k] != new.grid()[k]]
        if diff:
            key = diff[0]
            raise ConfigError(f"{str(out)!r} holds a sweep with different {key} ({_shown(old.grid()[key])}, "
                              f"now {_shown(new.grid()[key])}): rerun it with the same grid and overrides, "
                              "or choose a new --out")
        budget = recorded.get("budget", {})
        history = list(recorded.get("budget_history", []))
        change = {}
        for key, given in (("env_steps", env_steps), ("steps", steps)):
            if given is None:
                continue  # keep the recorded budget
            if given != budget.get(key):
                change[key] = {"from": budget.get(key), "to": given}
        if change:
            history.append(change)
        env_steps = env_steps if env_steps is not None else budget.get("env_steps")
        steps = steps if steps is not None else budget.get("steps")
    elif out.exists() and (not out.is_dir() or any(p.name != ".lock" for p in out.iterdir())):
        raise ConfigError(f"--out {str(out)!r} exists and is not a sweep directory (no {SWEEP_FILE}); "
                          "choose a new or empty directory")

    fingerprints = tuple((env, _dataset_fingerprint(env, dataset)) for env in envs) if dataset is not None else ()
    cells = []
    for seed in seeds:
        for env in envs:
            for algo in algos:
                cells.append(_resolve_cell(algo, kinds[algo], env, seed, dataset, env_steps, steps, values[algo]))
    names: dict[str, Cell] = {}
    for cell in cells:
        if cell.name in names:
            raise ConfigError(f"{names[cell.name].label()} and {cell.label()} would share the run directory "
                              f"{cell.name!r}: give environments whose names differ")
        names[cell.name] = cell
    plan = SweepPlan(out, tuple(algos), tuple(envs), tuple(seeds), dataset, tuple(overrides),
                     env_steps, steps, tuple(cells), tuple(history), fingerprints)
    for cell in cells:
        cell_state(plan, cell)  # a budget below what a cell already trained is refused here
    return plan


def _dataset_fingerprint(env: str, dataset: str) -> str:
    """Check that `dataset` exists and fits `env` (ConfigError naming both otherwise) and
    return the SHA-256 of its data, which every offline cell records."""
    from offmarl.data.source import check_dataset_matches, load_dataset
    from offmarl.envs import make_env

    _check_dataset(env, dataset)
    data, _ = load_dataset(env, dataset)
    check_dataset_matches(data, make_env(env).spec, dataset)
    return data.fingerprint()


def _shown(value: Any) -> str:
    if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
        return "; ".join(f"{k}: {_shown(v)}" for k, v in value.items())
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def read_sweep_json(out: str | Path) -> dict | None:
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{str(path)!r} is unreadable: {err}") from None
    if not isinstance(data, dict) or not {"algos", "envs", "seeds"} <= set(data):
        raise ConfigError(f"{str(path)!r} is not a sweep description")
    return data


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cell_state(plan: SweepPlan, cell: Cell) -> str:
    """"done" (completed at this budget), "diverged" (stopped on NaN or inf, which a
    resume would repeat), "resume" (started, or completed at a lower budget) or "new".
    ConfigError if the cell has trained past the budget, or on other data than the
    sweep's dataset holds now."""
    from offmarl.utils.checkpoint import list_checkpoints

    run = plan.run_dir(cell)
    expected = dict(plan.dataset_sha256).get(cell.env)
    recorded = ((_read_json(run / "config.json") or {}).get("dataset_info") or {}).get("sha256")
    if expected and recorded and recorded != expected:
        raise ConfigError(f"{run} was trained on other data than {plan.dataset!r} holds now (sha256 "
                          f"{recorded[:12]}..., now {expected[:12]}...): its results would mix with the new "
                          "data's; restore that dataset or choose a new --out")
    summary = _read_json(run / "summary.json")
    trained = list_checkpoints(run / "checkpoints") if (run / "checkpoints").is_dir() else []
    if summary and isinstance(summary.get(cell.step_key), int):
        trained.append(summary[cell.step_key])
    if trained and max(trained) > cell.budget:
        raise ConfigError(f"{run} has trained {max(trained):,} {cell.step_key.replace('_', ' ')}, more than "
                          f"the budget {cell.budget:,}: give a budget of at least that")
    if summary and summary.get("status") == "completed" and summary.get(cell.step_key) == cell.budget:
        return "done"
    if summary and summary.get("status") == "diverged":
        return "diverged"
    if (run / "config.json").is_file():
        return "resume"
    return "new"


def cell_command(plan: SweepPlan, cell: Cell, state: str) -> list[str]:
    """The `offmarl` arguments (after `python -m offmarl.cli`) that make or continue a cell."""
    run = str(plan.run_dir(cell).resolve())
    command = "train" if cell.kind == "online" else "offline"
    flag_name = "--env-steps" if cell.kind == "online" else "--steps"
    if state == "resume":
        return [command, "--resume", run, flag_name, str(cell.requested)]
    budget = plan.env_steps if cell.kind == "online" else plan.steps
    flag = [flag_name, str(budget)] if budget is not None else []
    data = ["--dataset", plan.dataset] if cell.kind == "offline" else []
    return [command, "--algo", cell.algo, "--env", cell.env, *data, "--seed", str(cell.seed),
            "--out", run, *flag, *overrides_for(cell.algo, plan.overrides)]


# -- running cells ------------------------------------------------------------------------
class LocalCells:
    """Cells as subprocesses of this process, each in its own session (a Ctrl-C in the
    terminal reaches only the sweep, which forwards it)."""

    def start(self, args: list[str], log: Path, stop_file: Path) -> Any:
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "offmarl.cli", *args], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=child_environment())

    def poll(self, handle: Any) -> tuple[int | None, str | None]:
        return handle.poll(), None

    def stop(self, handle: Any, signum: int, stop_file: Path) -> None:
        try:
            handle.send_signal(signum)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        pass


def run_cell_task(args: list[str], log: str, stop_file: str, cwd: str) -> int:
    """A Ray task: run one cell's `offmarl` command on this node and return its exit
    code; a signal number written to `stop_file` is forwarded to it."""
    import socket

    with open(log, "ab") as out:
        out.write(f"=== Ray task on {socket.gethostname()} (pid {os.getpid()})\n".encode())
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "offmarl.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd if os.path.isdir(cwd) else None, start_new_session=True,
                                env=child_environment())
        sent = False
        while (code := proc.poll()) is None:
            if not sent and os.path.exists(stop_file):
                try:
                    signum = int(Path(stop_file).read_text().strip() or signal.SIGINT)
                except (OSError, ValueError):
                    signum = signal.SIGINT
                proc.send_signal(signum)
                sent = True
            time.sleep(0.25)
    return code


class RayCells:
    """Cells as Ray tasks (1 CPU each) on the cluster at `address`; each runs the same
    subprocess command on its node. DIR must be on a file system every node shares."""

    def __init__(self, address: str) -> None:
        from offmarl.runners.distributed import connect_ray

        connect_ray(address, 1)
        import ray

        self.ray = ray
        self.task = ray.remote(num_cpus=1, max_retries=0)(run_cell_task)

    def start(self, args: list[str], log: Path, stop_file: Path) -> Any:
        return self.task.remote(args, str(log.resolve()), str(stop_file.resolve()), os.getcwd())

    def poll(self, handle: Any) -> tuple[int | None, str | None]:
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None, None
        try:
            return int(self.ray.get(handle)), None
        except Exception as err:  # the task failed (e.g. its node died)
            return -1, f"the Ray task failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"

    def stop(self, handle: Any, signum: int, stop_file: Path) -> None:
        from offmarl.utils.files import atomic_write_bytes

        atomic_write_bytes(stop_file, f"{signum}\n".encode())

    def close(self) -> None:
        self.ray.shutdown()


def _fmt_score(summary: dict | None) -> str:
    if not summary:
        return ""
    win = summary.get("final_eval_greedy_win_rate")
    if isinstance(win, (int, float)):
        return f", final greedy win rate {win:.2f}"
    ret = summary.get("final_eval_greedy_return")
    return f", final greedy return {ret:.3g}" if isinstance(ret, (int, float)) else ""


def time_left(cell_seconds: dict[tuple[str, str], list[float]], waiting: list[Cell],
              running: list[tuple[Cell, float]], limit: int) -> float | None:
    """Seconds until the sweep's cells are done, estimated from the cells that finished in
    this sweep process: each cell still to run takes its (algorithm, environment)'s mean time
    (every finished cell's mean where that pair has none), a running cell that mean less its
    elapsed time (at least 0); the work is shared by `limit` cells at a time, but never ends
    before the longest cell does. None before any cell finished or with no cell left."""
    every = [t for times in cell_seconds.values() for t in times]
    if not every or not (waiting or running):
        return None

    def expected(cell: Cell) -> float:
        return statistics.fmean(cell_seconds.get((cell.algo, cell.env)) or every)

    remaining = [expected(cell) for cell in waiting] + [max(expected(cell) - elapsed, 0.0)
                                                        for cell, elapsed in running]
    return max(sum(remaining) / min(limit, len(remaining)), max(remaining))


def _progress_suffix(to_go: int, left: float | None) -> str:
    """The per-cell line's "N to go" estimate (nothing once no cell is left)."""
    if not to_go or left is None:
        return ""
    if left == 0.0:  # only running cells are left, each past its usual time
        return f"; {to_go} to go, past their usual time"
    return f"; {to_go} to go, about {format_elapsed(left)} left"


def _stop_reason(log: Path) -> str:
    """Why a cell's process stopped, from its log: the last of the CLI's own one-line
    messages ("offmarl: ...") and lines naming an error, else the log's last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    reasons = [line for line in lines if line.startswith("offmarl:") or "error" in line.lower()]
    return (reasons or lines or [""])[-1]


def run_sweep(plan: SweepPlan, parallel: int | None = None, ray_address: str | None = None,
              quiet: bool = False, reps: int | None = None, seed: int = 0,
              echo: Callable[[str], None] | None = None) -> int:
    """Run every cell not done yet, `parallel` at a time (default 1 here, every cell at
    once on Ray, which queues them by free CPUs), then aggregate. Returns the exit code:
    0 all cells completed, 1 some did not, 130/143 when a signal stopped the sweep (the
    running cells were sent it and waited for, so they checkpointed)."""
    from offmarl.evaluation.statistics import DEFAULT_REPS
    from offmarl.runners.common import RunLock

    reps = DEFAULT_REPS if reps is None else reps
    say = echo or (lambda text: print(text, flush=True))
    info = (lambda text: None) if quiet else say
    if parallel is not None and parallel < 1:
        raise ConfigError(f"--parallel={parallel} is invalid: must be a positive integer")
    limit = parallel if parallel is not None else (len(plan.cells) if ray_address is not None else 1)
    existed = plan.out.exists()
    lock = RunLock.acquire(plan.out, "sweep directory")
    runner = None
    try:
        runner = RayCells(ray_address) if ray_address is not None else LocalCells()
        return _run_locked(plan, runner, limit, reps, seed, info, say)
    finally:
        if runner is not None:
            runner.close()
        lock.release()
        if not existed and all(p.name == ".lock" for p in plan.out.iterdir()):
            import shutil

            shutil.rmtree(plan.out, ignore_errors=True)


def _run_locked(plan: SweepPlan, runner: Any, limit: int, reps: int, seed: int,
                info: Callable[[str], None], say: Callable[[str], None]) -> int:
    from offmarl.utils.files import atomic_write_json

    atomic_write_json(plan.out / SWEEP_FILE, plan.to_json())  # first: a folder with runs/ but no sweep.json is refused
    (plan.out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    (plan.out / LOGS_DIR).mkdir(exist_ok=True)
    states = {cell: cell_state(plan, cell) for cell in plan.cells}
    total = len(plan.cells)
    index = {cell: i + 1 for i, cell in enumerate(plan.cells)}
    counts = {s: sum(1 for v in states.values() if v == s) for s in ("done", "diverged", "resume", "new")}
    info(f"sweep {plan.out}: {total} cells ({counts['new']} new, {counts['resume']} to resume, "
         f"{counts['done']} done" + (f", {counts['diverged']} diverged" if counts["diverged"] else "")
         + f"), {limit} at a time")
    failed: list[str] = []
    for cell in plan.cells:
        if states[cell] == "done":
            info(f"[{index[cell]}/{total}] skip  {cell.label()}: completed"
                 f"{_fmt_score(_read_json(plan.run_dir(cell) / 'summary.json'))}")
        elif states[cell] == "diverged":
            say(f"[{index[cell]}/{total}] skip  {cell.label()}: diverged (a resume would repeat it; delete "
                f"{plan.run_dir(cell)} to train it again)")
            failed.append(f"{cell.label()} (diverged)")
    pending = deque(c for c in plan.cells if states[c] not in ("done", "diverged"))
    running: dict[Cell, tuple[Any, float]] = {}
    signalled: set[Cell] = set()
    cell_seconds: dict[tuple[str, str], list[float]] = {}
    ran = False
    with StopSignals(raise_on_signal=False) as signals:
        while pending or running:
            while pending and len(running) < limit and signals.received is None:
                cell = pending.popleft()
                log, stop_file = _log_path(plan, cell), _stop_path(plan, cell)
                stop_file.unlink(missing_ok=True)
                args = cell_command(plan, cell, states[cell])
                with open(log, "ab") as out:
                    out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} offmarl {' '.join(args)}\n".encode())
                running[cell] = (runner.start(args, log, stop_file), time.perf_counter())
                info(f"[{index[cell]}/{total}] start {cell.label()} ({states[cell]})")
            if signals.received is not None:
                pending.clear()
                for cell, (handle, _) in running.items():
                    if cell not in signalled:
                        runner.stop(handle, signals.received, _stop_path(plan, cell))
                        signalled.add(cell)
            finished = []
            for cell, (handle, started) in list(running.items()):
                code, problem = runner.poll(handle)
                if code is None:
                    continue
                finished.append(cell)
                del running[cell]
                seconds = time.perf_counter() - started
                summary = _read_json(plan.run_dir(cell) / "summary.json") if code in (0, 3, 130, 143) else None
                status = CELL_EXIT.get(code, f"failed (exit {code})")
                text = f"[{index[cell]}/{total}] {'done ' if code == 0 else 'stop '} {cell.label()}: {status}"
                if code == 0:
                    cell_seconds.setdefault((cell.algo, cell.env), []).append(seconds)
                    now = time.perf_counter()
                    left = time_left(cell_seconds, list(pending),
                                     [(c, now - began) for c, (_, began) in running.items()], limit)
                    to_go = 0 if signals.received is not None else len(pending) + len(running)
                    info(f"{text}{_fmt_score(summary)}, {seconds:.1f} s{_progress_suffix(to_go, left)}")
                else:
                    why = problem or (_stop_reason(_log_path(plan, cell)) if code not in (130, 143) else "")
                    say(f"{text}, {seconds:.1f} s{': ' + why if why else ''} (log: {_log_path(plan, cell)})")
                    failed.append(f"{cell.label()} ({status})")
            if finished:
                ran = True
                summarise_sweep(plan.out, reps=min(reps, PARTIAL_REPS), seed=seed, partial=True)
            if running:
                time.sleep(POLL_SECONDS)
        stopped = signals.received
    done = stopped is None and not failed
    summarise_sweep(plan.out, reps=reps if done or not ran else min(reps, PARTIAL_REPS), seed=seed,
                    partial=not done)
    info(f"wrote {plan.out / 'table.md'}, aggregate.json, marl_eval.json, performance_profile.png, "
         "probability_of_improvement.png, curves.png")
    if stopped is not None:
        name = signal.Signals(stopped).name
        say(f"sweep stopped by {name}: running cells checkpointed; rerun the same command to continue")
        return 128 + stopped
    if failed:
        say(f"{len(failed)} cell{'s' * (len(failed) > 1)} did not complete: {', '.join(failed)}; "
            "rerun the same command to resume")
        return EXIT_CELLS_FAILED
    return 0


def _log_path(plan: SweepPlan, cell: Cell) -> Path:
    return plan.out / LOGS_DIR / f"{cell.name}.log"


def _stop_path(plan: SweepPlan, cell: Cell) -> Path:
    return plan.out / LOGS_DIR / f".{cell.name}.stop"


# -- aggregation --------------------------------------------------------------------------
def _first_reach(run: Path, step_key: str, threshold: float) -> dict | None:
    """Steps and wall seconds of the first periodic evaluation whose greedy win rate
    reaches `threshold` (None if none does, or the env has no win rate)."""
    from offmarl.utils.files import read_jsonl

    for record in read_jsonl(run / "metrics.jsonl"):
        win = record.get("eval_greedy_win_rate")
        if isinstance(win, (int, float)) and win >= threshold:
            return {"steps": record.get(step_key), "wall_seconds": record.get("wall_seconds")}
    return None


def _done_cells(plan_json: dict, out: Path) -> list[tuple[dict, dict, str]]:
    """(cell, summary, step key) of every cell completed at its budget: the only runs a
    sweep's tables, statistics and curves count."""
    done = []
    for c in plan_json["cells"]:
        summary = _read_json(out / c["dir"] / "summary.json")
        step_key = "env_steps" if c["kind"] == "online" else "steps"
        if summary and summary.get("status") == "completed" and summary.get(step_key) == c.get(step_key):
            done.append((c, summary, step_key))
    return done


def _env_table(plan_json: dict, out: Path) -> dict:
    """Per env, per algorithm: the seeds' final scores (mean, 95% t-interval), the first
    crossing of THRESHOLD, speed and how many seeds are done."""
    from offmarl.evaluation.aggregate import mean_ci

    table: dict[str, dict] = {}
    all_done = _done_cells(plan_json, out)
    for env in plan_json["envs"]:
        rows = {}
        for algo in plan_json["algos"]:
            cells = [c for c in plan_json["cells"] if c["env"] == env and c["algo"] == algo]
            done = [d for d in all_done if d[0] in cells]
            row: dict[str, Any] = {"kind": cells[0]["kind"] if cells else None, "seeds": len(cells),
                                   "done": len(done), "seeds_done": [c["seed"] for c, _, _ in done]}
            wins = [s["final_eval_greedy_win_rate"] for _, s, _ in done
                    if isinstance(s.get("final_eval_greedy_win_rate"), (int, float))]
            returns = [s["final_eval_greedy_return"] for _, s, _ in done
                       if isinstance(s.get("final_eval_greedy_return"), (int, float))]
            for key, values in (("final_greedy_win_rate", wins), ("final_greedy_return", returns)):
                if values:
                    mean, half = mean_ci(values)
                    row[key] = {"mean": mean, "ci95": half if len(values) > 1 else None, "n": len(values)}
            reached = [r for r in (_first_reach(out / c["dir"], k, THRESHOLD) for c, _, k in done) if r]
            row[f"first_{THRESHOLD}"] = {
                "reached": len(reached), "of": len(done), "has_win_rate": bool(wins),
                "steps_mean": _mean([r["steps"] for r in reached]),
                "wall_seconds_mean": _mean([r["wall_seconds"] for r in reached])}
            speed_key = "env_steps_per_second" if row["kind"] == "online" else "updates_per_second"
            row["speed"] = {"key": speed_key, "mean": _mean([s.get(speed_key) for _, s, _ in done])}
            row["wall_seconds_mean"] = _mean([s.get("wall_seconds") for _, s, _ in done])
            rows[algo] = row
        table[env] = rows
    return table


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(numbers) / len(numbers) if numbers else None


def _n(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) >= 10 else f"{x:.{digits}f}"


def _score_value(row: dict) -> str | None:
    """The final greedy score as 'mean ± ci', or the mean alone for one seed; None if none."""
    score = row.get("final_greedy_win_rate") or row.get("final_greedy_return")
    if score is None:
        return None
    return _n(score["mean"]) if score["ci95"] is None else f"{_n(score['mean'])} ± {_n(score['ci95'])}"


def _score_text(row: dict) -> str:
    value = _score_value(row)
    if value is None:
        return "n/a"
    kind = "win rate" if "final_greedy_win_rate" in row else "return"
    return f"{value} ({kind}, one seed)" if "±" not in value else f"{value} ({kind})"


def suite_table_lines(algos: list[str], table: dict) -> list[str]:
    """One row per environment: each algorithm's final greedy score beside the peers'
    published figures and the MA-Trace paper's SMAC figure (offmarl/evaluation/published.py).
    Empty when no environment of the grid has a published figure."""
    from offmarl.evaluation.published import (PAPER_SMAC_COLUMN, PAPER_SMAC_MEDIAN_WIN_PERCENT, PEER_COLUMNS,
                                              PEER_ENV_STEPS, PEER_SMAX_WIN_RATES, has_published)

    if not any(has_published(env) for env in table):
        return []
    lines = ["## Suite table", "",
             f"Ours: final greedy win rate, mean ± 95% t-interval over the seeds done (n in brackets). Peers: "
             f"published SMAX final win rates at about {PEER_ENV_STEPS:,} env steps, read from plots (±0.05). "
             "The paper's column is SMAC, a different simulator (median win %).", "",
             "| map | " + " | ".join(algos) + " | " + " | ".join(PEER_COLUMNS) + f" | {PAPER_SMAC_COLUMN} |",
             "| --- |" + " --- |" * (len(algos) + len(PEER_COLUMNS) + 1)]
    for env, rows in table.items():
        ours = []
        for algo in algos:
            row = rows[algo]
            ours.append(f"{_score_value(row)} ({row['done']})" if row["done"] else "pending")
        peers = PEER_SMAX_WIN_RATES.get(env)
        paper = PAPER_SMAC_MEDIAN_WIN_PERCENT.get(env)
        published = [f"{v:.2f}" for v in peers] if peers else ["–"] * len(PEER_COLUMNS)
        published.append("/".join(str(v) for v in paper) if paper else "–")
        lines.append(f"| {env} | " + " | ".join(ours + published) + " |")
    return [*lines, ""]


def suite_table_from_report(report: dict) -> list[str]:
    """suite_table_lines for the online groups of `offmarl report` (runs of any sweeps):
    the same per-map table of final greedy win rates beside the published figures."""
    algos: list[str] = []
    table: dict[str, dict] = {}
    for group in report["groups"]:
        wins = group["metrics"].get("final_eval_greedy_win_rate")
        if group.get("dataset") is not None or wins is None:
            continue
        if group["algo"] not in algos:
            algos.append(group["algo"])
        table.setdefault(group["env"], {})[group["algo"]] = {
            "done": wins["n"], "final_greedy_win_rate": {"mean": wins["mean"], "ci95": wins["ci95"], "n": wins["n"]}}
    for rows in table.values():
        for algo in algos:
            rows.setdefault(algo, {"done": 0})
    return suite_table_lines(algos, table)


def _table_md(plan_json: dict, table: dict, stats: dict | None, partial: bool) -> str:
    lines = [f"# Sweep results{' (partial)' if partial else ''}", "",
             f"algorithms {', '.join(plan_json['algos'])}; environments {', '.join(plan_json['envs'])}; "
             f"seeds {', '.join(str(s) for s in plan_json['seeds'])}"
             + (f"; dataset {plan_json['dataset']}" if plan_json.get("dataset") else "")
             + (f"; overrides {' '.join(plan_json['overrides'])}" if plan_json.get("overrides") else ""), "",
             "Final greedy score: mean ± half-width of the 95% Student-t interval over the seeds done "
             f"(win rate where the env has one, else return). 'to {THRESHOLD}': the first periodic greedy "
             f"evaluation with win rate >= {THRESHOLD}, mean over the seeds that reach it (steps are env "
             "steps online, iterations offline).", ""]
    lines += suite_table_lines(plan_json["algos"], table)
    for env, rows in table.items():
        lines += [f"## {env}", "",
                  f"| algorithm | seeds done | final greedy score | steps to {THRESHOLD} | wall s to {THRESHOLD} "
                  "| reached | steps/s | wall s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for algo, row in rows.items():
            text = _score_text(row)
            first = row[f"first_{THRESHOLD}"]
            reached = f"{first['reached']}/{first['of']}" if first["has_win_rate"] else "n/a (no win rate)"
            speed = row["speed"]
            unit = "env steps/s" if speed["key"] == "env_steps_per_second" else "it/s"
            lines.append(f"| {algo} | {row['done']}/{row['seeds']} | {text} | {_n(first['steps_mean'])} | "
                         f"{_n(first['wall_seconds_mean'])} | {reached} | {_n(speed['mean'])} {unit} | "
                         f"{_n(row['wall_seconds_mean'])} |")
        lines.append("")
    from offmarl.evaluation.statistics import format_aggregate

    lines += ["## Aggregate over tasks (rliable)", "", *format_aggregate(stats)]
    return "\n".join(lines).rstrip() + "\n"


def summarise_sweep(out: str | Path, reps: int | None = None, seed: int = 0, partial: bool = False,
                    return_ranges: dict[str, tuple[float, float]] | None = None) -> dict:
    """Aggregate the sweep in `out` from its run directories as they are now, and write
    (atomically) marl_eval.json, aggregate.json, table.md, performance_profile.png,
    probability_of_improvement.png and curves.png there. Returns aggregate.json's contents.
    Reads and writes nothing else; safe to call while cells run (it only reads them)."""
    from offmarl.evaluation.statistics import DEFAULT_REPS, rliable_report, write_marl_eval_json
    from offmarl.utils.files import atomic_write_bytes, atomic_write_json

    out = Path(out)
    reps = DEFAULT_REPS if reps is None else reps
    plan_json = read_sweep_json(out)
    if plan_json is None:
        raise ConfigError(f"{str(out)!r} is not a sweep directory (no {SWEEP_FILE})")
    done = [out / c["dir"] for c, _, _ in _done_cells(plan_json, out)]
    write_marl_eval_json(done, out / "marl_eval.json")
    stats = rliable_report(done, reps=reps, seed=seed, return_ranges=return_ranges,
                           plot_dir=out) if done else None
    if stats is None:
        from offmarl.evaluation.statistics import plot_probability_of_improvement
        from offmarl.utils.plotting import save_message_figure

        save_message_figure("no finished runs yet", out / "performance_profile.png")
        plot_probability_of_improvement([], out / "probability_of_improvement.png")
    from offmarl.evaluation.plots import plot_mean_curves

    plot_mean_curves(done, out / "curves.png")
    table = _env_table(plan_json, out)
    cells = {}
    for c in plan_json["cells"]:
        summary = _read_json(out / c["dir"] / "summary.json")
        cells[c["name"]] = {"dir": c["dir"], "status": (summary or {}).get("status") or (
            "started" if (out / c["dir"] / "config.json").is_file() else "not started")}
    result = {"partial": partial, "threshold": THRESHOLD, "grid": {k: plan_json.get(k) for k in
              ("algos", "envs", "seeds", "dataset", "overrides", "budget")},
              "cells": cells, "per_env": table, "statistics": stats}
    atomic_write_json(out / "aggregate.json", result)
    atomic_write_bytes(out / "table.md", _table_md(plan_json, table, stats, partial).encode())
    return result


# -- the command --------------------------------------------------------------------------
def _keep_jax_on_the_cpu() -> None:
    """The sweep process loads datasets with JAX only to check them; on a GPU machine it
    would otherwise start the GPU backend and reserve most of the memory its cells need.
    (Set in this process's JAX config, not its environment, which the cells inherit.)"""
    import jax

    try:
        jax.config.update("jax_platforms", "cpu")
    except RuntimeError:  # a backend already started (e.g. in-process use): leave it
        pass


def sweep_command(args: argparse.Namespace) -> int:
    """`offmarl sweep`: check everything (exit 2 with one line on bad input, creating
    nothing), then run the grid and aggregate."""
    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel={args.parallel} is invalid: must be a positive integer")
    if args.reps is not None:
        from offmarl.evaluation.statistics import check_reps

        check_reps(args.reps)
    _keep_jax_on_the_cpu()
    if args.ray_address is not None:
        from offmarl.runners.distributed import check_ray_address

        check_ray_address(args.ray_address)
    plan = plan_sweep(args.out, parse_names("--algos", args.algos), parse_names("--envs", args.envs),
                      parse_seeds(args.seeds), env_steps=args.env_steps, steps=args.steps,
                      dataset=args.dataset, overrides=args.overrides)
    return run_sweep(plan, parallel=args.parallel, ray_address=args.ray_address, quiet=args.quiet,
                     reps=args.reps)
