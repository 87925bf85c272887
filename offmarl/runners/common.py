"""Pieces every run shares: the NaN guard, the run-directory lock, signal handling,
the progress log and reading a run directory's config."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from offmarl.errors import ConfigError
from offmarl.utils.progress import format_elapsed

LOCK_FILE = ".lock"


class TrainingDiverged(RuntimeError):
    """A loss or parameter became NaN or inf, or an offline critic ran away."""


def check_finite(metrics: dict[str, float], where: str) -> None:
    """Raise TrainingDiverged naming the first metric that is NaN or inf."""
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise TrainingDiverged(f"{key} became {value} {where}")


def read_run_config(run_dir: str | Path) -> dict:
    """The raw config.json of an existing run directory."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{str(path)!r} is unreadable: {err}") from None


# -- the run-directory lock ------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run directory, held while one process writes it.

    It is an flock on `DIR/.lock`: the kernel releases it when the process dies, however
    it dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir, self._fd = run_dir, fd

    @classmethod
    def acquire(cls, run_dir: str | Path, what: str = "run directory") -> RunLock:
        """Lock `run_dir` (created if missing); ConfigError naming `what` if another process
        holds it or it cannot be written."""
        run_dir = Path(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise ConfigError(f"cannot write the {what} {str(run_dir)!r}: "
                              f"{err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"{what} {str(run_dir)!r} is in use by another offmarl "
                                  f"process (pid {holder}); wait for it to finish or choose "
                                  "another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(run_dir, fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1


def holds_only_lock(run_dir: Path) -> bool:
    """True if `run_dir` holds nothing but (perhaps) its lock file."""
    return all(p.name == LOCK_FILE for p in run_dir.iterdir())


# -- signals ---------------------------------------------------------------------------
class StopRequested(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: the run checkpoints and stops."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Turn SIGINT and SIGTERM into StopRequested in the main thread.

    Inside `deferred()` a signal is only noted and raised when the block ends, so the
    block (writing a metrics record and its checkpoint) is never cut in half. After
    `shutting_down()`, signals are noted and ignored: the final checkpoint and summary
    are being written.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, raise_on_signal: bool = True) -> None:
        """With `raise_on_signal` False, signals are only noted in `received` (the first
        one) for the caller to poll."""
        self.received: int | None = None
        self._raise = raise_on_signal
        self._defer = 0
        self._shutting_down = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if not self._raise or self._defer or self._shutting_down or not first:
            return
        raise StopRequested(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1
        if not self._defer and not self._shutting_down and self.received is not None:
            raise StopRequested(self.received)

    def shutting_down(self) -> None:
        self._shutting_down = True

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Within the shutdown, a block that a (new) signal may cut short."""
        self.received, self._shutting_down = None, False
        try:
            yield
        finally:
            self._shutting_down = True


# -- progress --------------------------------------------------------------------------
class RunProgress:
    """What a long run shows while it works.

    In a terminal: a bar with counts and speed, and one permanent line per evaluation.
    Otherwise (output sent to a file or a pipe): the same evaluation lines, plus a plain
    heartbeat line whenever `heartbeat_s` seconds pass without one, naming the phase
    (compiling, training, evaluating). Warnings and errors bypass `quiet`.
    """

    def __init__(self, unit: str, total: int, done: int, quiet: bool = False,
                 heartbeat_s: float = 15.0, console: Console | None = None) -> None:
        self.unit, self.total, self.done = unit, total, done
        self.console = console or Console(stderr=True, quiet=quiet, highlight=False)
        self.errors = Console(stderr=True, highlight=False)
        self.quiet, self.heartbeat_s = quiet, heartbeat_s
        self.phase = "starting"
        self.speed = ""
        self._start = time.perf_counter()
        self._last_line = self._start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar: Progress | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunProgress:
        if self.quiet:
            return self
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
                BarColumn(bar_width=24),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task("run", total=self.total, completed=self.done, info=self.phase)
        else:
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.stop()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        if self._bar is not None:
            self._bar.update(self._task, info=f"{phase} {self.speed}".strip())

    def line(self, text: str) -> None:
        """A permanent line (evaluation results, notes)."""
        with self._lock:
            self._last_line = time.perf_counter()
            self.console.print(f"[{self._elapsed()}] {text}", soft_wrap=True)

    def warn(self, text: str) -> None:
        self.errors.print(f"offmarl: warning: {text}", soft_wrap=True, markup=False)

    def error(self, text: str) -> None:
        self.errors.print(f"offmarl: {text}", soft_wrap=True, markup=False)

    def advance(self, done: int, speed: str) -> None:
        self.done, self.speed = done, speed
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=f"{self.phase} {speed}".strip())

    def _elapsed(self) -> str:
        return format_elapsed(time.perf_counter() - self._start)

    def _heartbeat(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                due = time.perf_counter() - self._last_line >= self.heartbeat_s
            if due:
                self.line(f"{self.phase}: {self.done:,}/{self.total:,} {self.unit} {self.speed}".rstrip())
