"""Children started with `child_environment` stop when their parent dies (Linux), and do
not pass that tie on to their own children (offmarl/utils/process.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from offmarl.utils.process import PARENT_PID_VARIABLE

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from offmarl.utils.process import PARENT_PID_VARIABLE, stop_with_parent_from_env
    stop_with_parent_from_env()
    print(os.getpid(), PARENT_PID_VARIABLE in os.environ, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    time.sleep(60)
""")

PARENT = textwrap.dedent("""
    import subprocess, sys
    from offmarl.utils.process import child_environment
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=child_environment(), stdout=sys.stdout)
    sys.stdout.flush()
    import time; time.sleep(float(sys.argv[2]))
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_a_child_gets_sigterm_when_its_parent_dies_and_its_own_children_are_free() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, "2"], stdout=subprocess.PIPE, text=True)
    child_pid, tied_onwards = parent.stdout.readline().split()
    assert tied_onwards == "False"  # the variable is gone from the child's environment
    assert _alive(int(child_pid))
    parent.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _alive(int(child_pid)):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.05)
