"""Aggregate several runs (seeds) into means with 95% confidence intervals.

`report_runs` reads the runs' summary.json files, groups them by (algo, env, dataset) and
never averages across groups; runs that did not complete are listed but left out of the
statistics. `format_report` renders that as a plain-text table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from offmarl.errors import ConfigError

# What `report_runs` aggregates, in this order; a key no completed run of a group has
# (e.g. env_steps_per_second for offline runs, win rates for matrix games) is skipped.
REPORT_KEYS = ("final_eval_greedy_win_rate", "final_eval_sampled_win_rate",
               "final_eval_greedy_return", "final_eval_sampled_return",
               "wall_seconds", "env_steps_per_second", "updates_per_second")
# Settings that make runs of one group incomparable when they differ (a warning, not a split).
SETUP_KEYS = ("env_steps", "steps", "num_envs", "batch_size", "workers")


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for one value)."""
    x = np.asarray(values, float)
    if x.size < 2:
        return float(x.mean()), 0.0
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def read_summary(run: str | Path) -> dict:
    """A run directory's summary.json (ConfigError if missing or unreadable)."""
    path = Path(run) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{str(run)!r} has no summary.json (is it a finished run directory?)")
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{str(run)!r}: cannot read summary.json ({reason})") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{str(run)!r}: summary.json does not hold a JSON object")
    return summary


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _label(algo: Any, env: Any, dataset: Any) -> str:
    text = f"{algo if algo is not None else '?'} on {env if env is not None else '?'}"
    return text + (f" [{dataset}]" if dataset is not None else "")


def _status_phrase(status: str) -> str:
    return {"interrupted": "is interrupted", "diverged": "diverged",
            "unknown": "has no status"}.get(status, f"has status {status!r}")


def _metric(values: list[float], seeds: list[Any], runs: list[str]) -> dict:
    mean, half = mean_ci(values)
    return {"values": values, "seeds": seeds, "runs": runs, "n": len(values),
            "mean": mean, "ci95": half if len(values) >= 2 else None}


def _group(key: tuple, members: list[tuple[str, dict]], warnings: list[str]) -> dict:
    algo, env, dataset = key
    label = _label(algo, env, dataset)
    done = [(run, s) for run, s in members if s.get("status") == "completed"]
    unfinished = [{"run": run, "seed": s.get("seed"), "status": s.get("status") or "unknown"}
                  for run, s in members if s.get("status") != "completed"]
    for entry in unfinished:
        warnings.append(f"{entry['run']} {_status_phrase(entry['status'])}: left out of the statistics")
    if not done:
        warnings.append(f"{label}: no completed runs, no statistics")
    elif len(done) == 1:
        warnings.append(f"{label}: 1 completed run, no confidence interval")

    seeds = [s.get("seed") for _, s in done]
    repeated = sorted({str(x) for x in seeds if x is not None and seeds.count(x) > 1})
    if repeated:
        warnings.append(f"{label}: seed {', '.join(repeated)} appears more than once")
    for setting in SETUP_KEYS:
        seen = {"unset" if s.get(setting) is None else json.dumps(s[setting]) for _, s in done}
        if len(seen) > 1:
            warnings.append(f"{label}: completed runs differ in {setting} ({', '.join(sorted(seen))})")

    metrics = {}
    for name in REPORT_KEYS:
        have = [(run, s) for run, s in done if _is_number(s.get(name))]
        if not have:
            continue
        metrics[name] = _metric([float(s[name]) for _, s in have], [s.get("seed") for _, s in have],
                                [run for run, _ in have])
        if len(have) < len(done):
            warnings.append(f"{label}: {name} is missing from {len(done) - len(have)} of "
                            f"{len(done)} completed runs")
    return {"algo": algo, "env": env, "dataset": dataset, "label": label,
            "runs": [run for run, _ in done], "seeds": seeds,
            "unfinished": unfinished, "metrics": metrics}


def report_runs(run_dirs: list[str | Path]) -> dict:
    """Mean and 95% Student-t CI of each metric, per group of comparable runs.

    Runs are grouped by (algo, env, dataset or None) and never averaged across groups.
    A group's "runs"/"seeds" are its completed runs, the only ones in its statistics; the
    others are in "unfinished" with their status. Each metric has "values" (with their
    "seeds" and "runs"), "n", "mean" and "ci95" (the half-width; None when n < 2).
    "warnings" says what was split, left out or looks inconsistent.
    Raises ConfigError for a missing or unreadable summary.json."""
    if not run_dirs:
        raise ConfigError("no run directories given")
    warnings: list[str] = []
    grouped: dict[tuple, list[tuple[str, dict]]] = {}
    seen: set[Path] = set()
    for run in run_dirs:
        summary = read_summary(run)
        where = Path(run).resolve()
        if where in seen:
            warnings.append(f"{run} is given more than once: counted once")
            continue
        seen.add(where)
        key = (summary.get("algo"), summary.get("env"), summary.get("dataset"))
        grouped.setdefault(key, []).append((str(run), summary))
    groups_warnings: list[str] = []
    groups = [_group(key, members, groups_warnings) for key, members in grouped.items()]
    if len(groups) > 1:
        warnings.insert(0, f"{len(groups)} groups: runs of different algorithms/environments/"
                           "datasets are reported separately")
    return {"groups": groups, "warnings": warnings + groups_warnings}


# -- plain-text table ---------------------------------------------------------------------

_WIDTH = 96


def _decimals(x: float) -> int:
    size = abs(x)
    return 0 if size >= 1000 else 1 if size >= 10 else 3


def _num(x: float | None, decimals: int) -> str:
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    return f"{x:,.{decimals}f}"


def _seed_name(seed: Any) -> str:
    return f"s{seed}" if seed is not None else "s?"


def _wrap(cells: list[str], first: str, indent: int, sep: str = "  ") -> list[str]:
    """`first` followed by `cells`, `sep` apart, on lines of at most _WIDTH characters."""
    lines, line = [], first
    for cell in cells:
        if len(line) + len(sep) + len(cell) > _WIDTH and line.strip():
            lines.append(line.rstrip())
            line = " " * indent
        line += (sep if line.strip() else "") + cell
    lines.append(line.rstrip())
    return lines


def format_report(report: dict) -> str:
    """`report_runs`'s result as plain text: a table per group, then the warnings."""
    out: list[str] = []
    for group in report["groups"]:
        n_done = len(group["runs"])
        header = f"{group['label']}: {n_done} completed run{'s' * (n_done != 1)}"
        if group["seeds"]:
            seeds = [f"{s}," for s in group["seeds"]]
            seeds[0] = f"(seed{'s' * (n_done != 1)} {seeds[0]}"
            seeds[-1] = seeds[-1][:-1] + ")"
            out.extend(_wrap(seeds, header, 4, sep=" "))
        else:
            out.append(header)
        if group["metrics"]:
            name_w = max(len("metric"), *(len(k) for k in group["metrics"]))
            cells = {}
            for name, m in group["metrics"].items():
                d = _decimals(m["mean"])
                cells[name] = (f"{_num(m['mean'], d)} ± {_num(m['ci95'], d)}", d)
            mean_w = max(len("mean ± ci95"), *(len(c) for c, _ in cells.values()))
            head = f"  {'metric':<{name_w}}  {'mean ± ci95':>{mean_w}}  {'n':>3}  per seed"
            out.append(head)
            indent = len(head) - len("per seed")
            for name, m in group["metrics"].items():
                text, d = cells[name]
                first = f"  {name:<{name_w}}  {text:>{mean_w}}  {m['n']:>3}"
                values = [f"{_seed_name(s)} {_num(v, d)}" for s, v in zip(m["seeds"], m["values"])]
                out.extend(_wrap(values, first, indent))
        for entry in group["unfinished"]:
            seed = f"seed {entry['seed']}, " if entry["seed"] is not None else ""
            out.append(f"  not in the statistics: {entry['run']} ({seed}{entry['status']})")
        out.append("")
    if report["warnings"]:
        out.append("warnings:")
        out.extend(f"  - {w}" for w in report["warnings"])
    return "\n".join(out).rstrip() + "\n"
