"""A rich progress bar for long non-run work (data collection, dataset pipelines)."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def format_elapsed(seconds: float) -> str:
    """H:MM:SS."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class HeartbeatProgress(Progress):
    """A Progress for output sent to a file or a pipe, where rich draws nothing until the
    end: every `heartbeat_s` seconds one plain line per unfinished task."""

    def __init__(self, *columns: Any, unit: str, heartbeat_s: float, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.unit, self.heartbeat_s = unit, heartbeat_s
        self._began = time.perf_counter()
        self._stopped = threading.Event()
        self._beat = threading.Thread(target=self._beat_until_stopped, daemon=True)

    def start(self) -> None:
        super().start()
        self._beat.start()

    def stop(self) -> None:
        self._stopped.set()
        super().stop()

    def _beat_until_stopped(self) -> None:
        while not self._stopped.wait(self.heartbeat_s):
            for task in self.tasks:
                if not task.finished:
                    self.console.print(f"[{format_elapsed(time.perf_counter() - self._began)}] {task.description}: "
                                       f"{task.completed:,.0f}/{task.total or 0:,.0f} {self.unit}".rstrip(),
                                       markup=False, highlight=False, soft_wrap=True)


def progress_display(console: Console, unit: str, heartbeat_s: float = 15.0) -> Progress:
    """A progress bar with counts of `unit`, elapsed time and a free-text stats column
    (for data collection; runs use RunProgress). Where the console is not a terminal, a
    plain line per unfinished task every `heartbeat_s` seconds instead."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    if console.is_terminal:
        return Progress(*columns, console=console)
    return HeartbeatProgress(*columns, unit=unit, heartbeat_s=heartbeat_s, console=console)
