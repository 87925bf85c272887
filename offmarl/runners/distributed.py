"""Distributed online training on Ray: N rollout workers feed one learner, IMPALA style.

Each worker is a Ray actor process with its own vmapped environments and copy of the
policy. It rolls out jitted unrolls (the fused runner's `collect`) and returns each with
its behaviour log-probs and the parameter version that produced it. The learner (this
process) takes whichever unroll is ready first, hands that worker the newest published
parameters straight away, so workers never wait for a gradient step, and then learns
from the unroll with the fused runner's `apply_rollout`. The lag of an update is the
learner's version minus the unroll's behaviour version; MA-Trace's importance weights
correct for it.

A worker process that dies is replaced, and its unroll in flight is counted as lost. At
the end of a run the counters satisfy submitted = produced + lost + abandoned (still in
flight when the run stopped) and produced = consumed + dropped (finished but not learned
from: drained at the end, or part of an update chunk cut short by Ctrl-C).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import ray

from offmarl.errors import ConfigError
from offmarl.evaluation.plots import plot_lag_histogram
from offmarl.runners.experiment import Experiment, experiment_from_dict
from offmarl.runners.fused import EpisodeStats, FusedTrainer, TrainState
from offmarl.utils.files import atomic_write_json

CONNECT_TIMEOUT_S = 15.0
"""A Ray address that does not answer within this time is reported as bad input."""
DRAIN_TIMEOUT_S = 10.0
MAX_RESTARTS_PER_WORKER = 10


def check_ray_address(address: str) -> tuple[str, int] | None:
    """(host, port) of `address`, None for 'auto'; ConfigError if it is malformed."""
    if address == "auto":
        return None
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--ray-address {address!r} is invalid: expected HOST:PORT (e.g. 10.0.0.5:6379), "
            "ray://HOST:PORT or auto"
        )
    return host, int(port)


def connect_ray(address: str | None, workers: int) -> None:
    """Start a local Ray instance (no address) or join the cluster at `address`.

    Fails with a ConfigError within about CONNECT_TIMEOUT_S when the address does not
    answer, and when the cluster has fewer CPUs than workers.
    """
    if ray.is_initialized():
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        ray.init(num_cpus=max(os.cpu_count() or 1, workers + 1), **quiet)
        return
    endpoint = check_ray_address(address)
    if endpoint is not None:
        try:
            socket.create_connection(endpoint, timeout=5.0).close()
        except OSError as err:
            raise ConfigError(f"no Ray cluster answers at --ray-address {address!r} ({err}); "
                              "start one with `ray start --head`, or leave out --ray-address "
                              "for a local instance") from None
    outcome: dict[str, BaseException | None] = {}

    def join() -> None:
        try:
            ray.init(address=address, **quiet)
            outcome["error"] = None
        except BaseException as err:  # reported to the caller's thread below
            outcome["error"] = err

    thread = threading.Thread(target=join, daemon=True)
    with _stderr_silenced():  # Ray's C++ client logs every retry; the outcome is reported below
        thread.start()
        thread.join(CONNECT_TIMEOUT_S)
    if "error" not in outcome:
        raise ConfigError(f"the Ray cluster at --ray-address {address!r} did not answer within "
                          f"{CONNECT_TIMEOUT_S:.0f} s")
    if outcome["error"] is not None:
        raise ConfigError(f"cannot join the Ray cluster at --ray-address {address!r}: "
                          f"{str(outcome['error']).splitlines()[0]}")
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < workers:
        ray.shutdown()
        raise ConfigError(f"--workers {workers} needs {workers} CPUs; the cluster at {address!r} "
                          f"has {cpus:g}")


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration (C++ logs bypass sys.stderr)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class RolloutWorker:
    """A Ray actor: vmapped environments and a policy copy that produce jitted unrolls.

    Workers act on the CPU, as IMPALA's actors do; only the learner uses an accelerator.
    On a GPU machine, workers that also took the GPU would each reserve most of its memory."""

    def __init__(self, experiment: dict, worker_index: int, stream: int) -> None:
        """`stream` (the learner's update count when the worker starts) separates the random
        streams of restarted and resumed workers from the ones before."""
        jax.config.update("jax_platforms", "cpu")
        from offmarl.utils.compile_cache import enable_compile_cache

        enable_compile_cache()
        exp = experiment_from_dict(experiment)
        env, algo = exp.build()
        trainer = FusedTrainer(exp.run_config, algo, env)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(exp.seed), stream), worker_index + 1)
        self.state = trainer.init(key)
        self.collect = jax.jit(trainer.collect)

    def pid(self) -> int:
        return os.getpid()

    def unroll(self, params: Any, version: int) -> tuple[Any, EpisodeStats, int, float]:
        """One unroll of every environment with `params`; returns it as NumPy arrays with
        the episode stats, the parameter version and the seconds it took."""
        start = time.perf_counter()
        self.state, rollout, episodes = self.collect(self.state, params)
        rollout, episodes = jax.device_get((rollout, episodes))
        return rollout, episodes, version, time.perf_counter() - start


@dataclass
class UnrollCounts:
    """Where every unroll went; saved in checkpoints so resumed runs keep counting."""

    submitted: int = 0
    produced: int = 0
    consumed: int = 0
    dropped: int = 0
    lost: int = 0
    abandoned: int = 0
    worker_restarts: int = 0
    lag_histogram: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        data = {k: v for k, v in vars(self).items() if k != "lag_histogram"}
        return {**data, "lag_histogram": {str(k): v for k, v in sorted(self.lag_histogram.items())}}

    @classmethod
    def from_dict(cls, data: dict) -> UnrollCounts:
        counts = cls(**{k: v for k, v in data.items() if k != "lag_histogram"})
        counts.lag_histogram = Counter({int(k): v for k, v in data.get("lag_histogram", {}).items()})
        return counts

    def copy(self) -> UnrollCounts:
        return UnrollCounts.from_dict(self.to_dict())

    def settle_in_flight(self) -> None:
        """Count unrolls that were in flight when these counts were saved as abandoned."""
        self.abandoned = self.submitted - self.produced - self.lost


class DistributedTrainer:
    """The fused trainer's `init`/`train` interface, with unrolls from Ray workers."""

    def __init__(self, experiment: Experiment, env_settings: dict, learner: FusedTrainer,
                 ray_address: str | None = None, run_dir: Path | None = None) -> None:
        self.cfg = experiment.run_config
        self.learner = learner
        self.experiment = experiment.to_dict(env_settings)
        self.ray_address = ray_address
        self.run_dir = run_dir
        self.apply_rollout = jax.jit(learner.apply_rollout)
        self.counts = UnrollCounts()
        self._committed = UnrollCounts()
        self.workers: list[Any] = []
        self.pids: list[int] = []
        self.restarts = [0] * self.cfg.workers
        self.in_flight: dict[Any, int] = {}
        self.published: deque[tuple[int, Any]] = deque(maxlen=self.cfg.policy_lag + 1)
        connect_ray(ray_address, self.cfg.workers)

    # -- the trainer interface -------------------------------------------------
    def init(self, rng: jax.Array) -> TrainState:
        return self.learner.init(rng)

    def train(self, state: TrainState, num_updates: int) -> tuple[TrainState, EpisodeStats, dict]:
        """`num_updates` learner updates, each on the next `unrolls_per_update` unrolls any
        workers deliver (joined along the environment axis)."""
        version = int(state.update)
        if not self.published or self.published[-1][0] != version:
            self._publish(state.params, version)
        if not self.workers:
            self._start_workers(version)
        episodes = EpisodeStats(0.0, 0.0, 0.0)
        sums: dict[str, float] = {}
        lags, depths, learn_seconds = [], [], 0.0
        worker_steps = np.zeros(self.cfg.workers)
        worker_seconds = np.zeros(self.cfg.workers)
        try:
            for _ in range(num_updates):
                rollouts, update_lags = [], []
                for _ in range(self.cfg.unrolls_per_update):
                    (rollout, unroll_episodes, behaviour_version, seconds), worker, depth = self._next_unroll()
                    rollouts.append(rollout)
                    update_lags.append(version - behaviour_version)
                    depths.append(depth)
                    worker_steps[worker] += self.cfg.steps_per_unroll
                    worker_seconds[worker] += seconds
                    episodes = EpisodeStats(*(a + float(b) for a, b in zip(episodes, unroll_episodes)))
                batch = rollouts[0] if len(rollouts) == 1 else jax.tree.map(
                    lambda *parts: np.concatenate(parts, axis=1), *rollouts)
                start = time.perf_counter()
                state, metrics = self.apply_rollout(state, batch)
                version = int(state.update)
                learn_seconds += time.perf_counter() - start
                self.counts.consumed += len(rollouts)
                self.counts.lag_histogram.update(update_lags)
                self._publish(state.params, version)
                lags += update_lags
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
        except BaseException:
            self.abort()
            raise
        metrics = {k: v / max(num_updates, 1) for k, v in sums.items()}
        metrics.update(
            lag_mean=float(np.mean(lags)), lag_max=float(np.max(lags)),
            queue_depth_mean=float(np.mean(depths)),
            learner_steps_per_second=num_updates * self.cfg.steps_per_update / max(learn_seconds, 1e-9),
        )
        for index in range(self.cfg.workers):
            if worker_seconds[index] > 0:
                metrics[f"worker{index}_steps_per_second"] = worker_steps[index] / worker_seconds[index]
        return state, episodes, metrics

    def checkpoint_meta(self) -> dict:
        return {"unroll_counts": self.counts.to_dict()}

    def commit(self) -> None:
        """The last chunk's updates became the run's state."""
        self._committed = self.counts.copy()

    def abort(self) -> None:
        """The run keeps the state of the last commit: the unrolls learned from since then
        count as dropped, and workers get the committed parameters from now on."""
        self.counts.consumed = self._committed.consumed
        self.counts.lag_histogram = self._committed.lag_histogram.copy()
        self.counts.dropped = self.counts.produced - self.counts.consumed
        self.published.clear()

    def restore(self, meta: dict) -> None:
        if "unroll_counts" in meta:
            self.counts = UnrollCounts.from_dict(meta["unroll_counts"])
            self.counts.settle_in_flight()
        self.commit()

    def summary(self) -> dict:
        counts = self.counts.to_dict()
        lag_histogram = counts.pop("lag_histogram")
        hist = self.counts.lag_histogram
        total = sum(hist.values())
        return {
            "workers": self.cfg.workers,
            "ray_address": self.ray_address or "local",
            "unrolls": counts,
            "lag_mean": sum(k * v for k, v in hist.items()) / total if total else None,
            "lag_max": max(hist) if hist else None,
            "lag_histogram": lag_histogram,
        }

    def close(self, run_dir: Path) -> None:
        """Stop the workers (see `shutdown`) and plot the lag histogram into `run_dir`."""
        self.shutdown()
        plot_lag_histogram(self.counts.lag_histogram, run_dir / "lag_histogram.png")

    def shutdown(self) -> None:
        """Count the unrolls still in flight, stop the workers and leave Ray."""
        if self.in_flight:
            ready, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight),
                                timeout=DRAIN_TIMEOUT_S)
            for ref in ready:
                try:
                    ray.get(ref)
                    self.counts.produced += 1
                    self.counts.dropped += 1
                except ray.exceptions.RayError:
                    self.counts.lost += 1
            self.in_flight.clear()
        # An interrupt can land between taking an unroll off the queue and counting it, so
        # the in-flight remainder is derived from the totals rather than counted.
        self.counts.settle_in_flight()
        self.counts.dropped = self.counts.produced - self.counts.consumed
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
        ray.shutdown()

    # -- pieces ----------------------------------------------------------------
    def _publish(self, params: Any, version: int) -> None:
        self.published.append((version, ray.put(jax.device_get(params))))

    def _start_workers(self, version: int) -> None:
        self.workers = [self._new_worker(index, version) for index in range(self.cfg.workers)]
        self.pids = ray.get([worker.pid.remote() for worker in self.workers])
        self._write_pids()
        for index in range(self.cfg.workers):
            self._submit(index)

    def _new_worker(self, index: int, version: int) -> Any:
        actor = ray.remote(num_cpus=1, max_restarts=0)(RolloutWorker)
        return actor.remote(self.experiment, index, version + 1_000_003 * self.restarts[index])

    def _write_pids(self) -> None:
        if self.run_dir is not None:
            atomic_write_json(self.run_dir / "workers.json", {"pids": self.pids})

    def _submit(self, index: int) -> None:
        """Give worker `index` its next unroll, with the parameters `policy_lag` versions old."""
        version, params = self.published[0]
        self.in_flight[self.workers[index].unroll.remote(params, version)] = index
        self.counts.submitted += 1

    def _restart(self, index: int) -> None:
        self.restarts[index] += 1
        self.counts.worker_restarts += 1
        if self.restarts[index] > MAX_RESTARTS_PER_WORKER:
            raise RuntimeError(f"worker {index} died {self.restarts[index]} times; giving up")
        ray.kill(self.workers[index])
        self.workers[index] = self._new_worker(index, self.published[-1][0])
        self.pids[index] = ray.get(self.workers[index].pid.remote())
        self._write_pids()

    def _next_unroll(self) -> tuple[tuple, int, int]:
        """The first finished unroll, its worker and the queue depth (how many other
        finished unrolls wait for the learner). Dead workers are replaced on the way."""
        while True:
            ready, _ = ray.wait(list(self.in_flight), num_returns=1)
            waiting, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=0)
            index = self.in_flight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayActorError:
                self.counts.lost += 1
                self._restart(index)
                self._submit(index)
                continue
            self.counts.produced += 1
            self._submit(index)
            return result, index, len(waiting) - 1

