"""Child processes that end with the process that started them.

A sweep starts each cell as `python -m offmarl.cli ...`. If the sweep dies, its cells must
checkpoint and stop rather than run on unwatched. On Linux that is PR_SET_PDEATHSIG, set
by the child itself at start-up (`stop_with_parent_from_env`): setting it between fork and
exec (`preexec_fn`) would run Python code in a forked copy of a multithreaded JAX process.
"""

from __future__ import annotations

import os
import signal
import sys

PARENT_PID_VARIABLE = "OFFMARL_STOP_WITH_PARENT"


def child_environment() -> dict[str, str]:
    """This process's environment plus the variable that makes an offmarl child stop with it."""
    return {**os.environ, PARENT_PID_VARIABLE: str(os.getpid())}


def stop_with_parent_from_env() -> None:
    """If started by `child_environment`, get SIGTERM when that parent dies (Linux), and
    stop now if it already has. The variable is removed, so this process's own children
    are not tied to its parent."""
    parent = os.environ.pop(PARENT_PID_VARIABLE, None)
    if parent is None or not parent.isdigit() or sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
