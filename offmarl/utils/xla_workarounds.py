"""XLA settings offmarl needs on CPU, put into XLA_FLAGS when offmarl is imported.

XLA reads XLA_FLAGS once, when JAX starts its first backend, so they apply to every
process that imports offmarl before it runs a JAX computation (the CLI, tests, Ray
workers). A flag the user already set in XLA_FLAGS is left as the user set it.

* ``--xla_cpu_enable_concurrency_optimized_scheduler=false``: with JAX 0.10.2, InSPO's
  training chunk on an smax:3m vault deadlocked in most runs (every thread idle, the
  main thread waiting in ``tsl::BlockUntilReady`` for a result never produced; only
  SIGKILL ended it). With this flag the same program completed 8 runs of 8 (docs/inspo.md).
  The scheduler it turns off reorders a program's operations for concurrency; MA-Trace's
  training throughput on smax:3m did not measurably change with it (docs/inspo.md).
"""

from __future__ import annotations

import os
from typing import MutableMapping

CPU_FLAGS = {"xla_cpu_enable_concurrency_optimized_scheduler": "false"}


def apply_xla_workarounds(environ: MutableMapping[str, str] = os.environ) -> None:
    """Append each of CPU_FLAGS to environ["XLA_FLAGS"] unless the flag is already there."""
    flags = environ.get("XLA_FLAGS", "")
    missing = [f"--{name}={value}" for name, value in CPU_FLAGS.items() if f"--{name}=" not in flags]
    if missing:
        environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()
