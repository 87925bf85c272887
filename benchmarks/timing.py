"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable

import jax


def time_it(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds per call, after one warm-up call (which also compiles)."""
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / repeats


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
            "machine": platform.machine()}
