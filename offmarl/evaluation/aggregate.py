"""Aggregate several runs (seeds) into means with 95% confidence intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from offmarl.errors import ConfigError

DEFAULT_KEYS = ("final_eval_greedy_win_rate", "final_eval_sampled_win_rate",
                "final_eval_greedy_return", "wall_seconds", "env_steps_per_second")


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for one value)."""
    x = np.asarray(values, float)
    if x.size < 2:
        return float(x.mean()), 0.0
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def summarise_runs(run_dirs: list[str | Path], keys: tuple[str, ...] = DEFAULT_KEYS) -> dict:
    """Per-key values, mean and 95% CI over the runs' summary.json files."""
    summaries = []
    for run in run_dirs:
        path = Path(run) / "summary.json"
        if not path.is_file():
            raise ConfigError(f"{str(run)!r} has no summary.json (is it a finished run directory?)")
        summaries.append(json.loads(path.read_text()))
    out = {"runs": [str(r) for r in run_dirs], "seeds": [s.get("seed") for s in summaries]}
    for key in keys:
        values = [s[key] for s in summaries if s.get(key) is not None]
        if values:
            mean, half = mean_ci(values)
            out[key] = {"values": values, "mean": mean, "ci95": half}
    return out
