"""A rich progress bar for long non-run work (data collection, dataset pipelines)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def progress_display(console: Console, unit: str) -> Progress:
    """A progress bar with counts of `unit`, elapsed time and a free-text stats column
    (for data collection; runs use RunProgress)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
    )
