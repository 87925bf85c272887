"""Pieces every runner's outer loop shares: the NaN guard, the progress display and
reading a run directory's config."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from offmarl.errors import ConfigError


class TrainingDiverged(RuntimeError):
    """A loss or parameter became NaN or inf."""


def check_finite(metrics: dict[str, float], where: str) -> None:
    """Raise TrainingDiverged naming the first metric that is NaN or inf."""
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise TrainingDiverged(f"{key} became {value} {where}")


def progress_display(console: Console, unit: str) -> Progress:
    """A progress bar with counts of `unit`, elapsed time and a free-text stats column."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
    )


def read_run_config(run_dir: str | Path) -> dict:
    """The raw config.json of an existing run directory."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    return json.loads(path.read_text())
