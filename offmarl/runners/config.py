"""Settings of the online runners, independent of the algorithm they train."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

from offmarl.config import FLOAT32_MAX, require

MAX_WORKERS = 1024
# The fused runner stacks policy_lag + 1 copies of the parameters (and the distributed one
# keeps as many published versions), so the lag is capped.
MAX_POLICY_LAG = 1024


@dataclass(frozen=True)
class OnlineConfig:
    """How an online run collects data, optimises, evaluates and saves. Each algorithm
    overrides some of these defaults with its own (its config class's RUN_DEFAULTS, e.g.
    MA-Trace's lr, passes and budget); `offmarl config --algo NAME` shows the result."""

    env_steps: int = 10_000_000
    """Budget of training environment steps (summed over parallel environments)."""
    num_envs: int = 128
    """Parallel environments stepped in one vmapped batch."""
    unroll_length: int = 32
    """Steps per unroll; each update consumes num_envs x unroll_length transitions."""
    num_epochs: int = 1
    """Passes over each batch of unrolls (later passes are off-policy for the batch)."""
    num_minibatches: int = 8
    """Minibatches per pass, split along the environment axis (unrolls stay whole)."""
    lr: float = 5e-4
    """Adam learning rate."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to zero over the run."""
    max_grad_norm: float = 0.5
    """Clip of the global gradient norm; 0 disables clipping."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    policy_lag: int = 0
    """Act with parameters this many updates old, to exercise the off-policy correction
    (with workers, on top of the lag the asynchronous workers create)."""
    pipeline: bool = False
    """Fused runner: act and learn at the same time, on separate threads, the actors one
    update behind the learner. Acting (mostly single-threaded environment stepping) then overlaps
    the learner's update instead of waiting for it; the price is a behaviour policy one
    update old (a lag of 1, which a lag from policy_lag or simulated_workers already covers).
    Refused with Ray workers, which act concurrently anyway."""
    actor_threads: int = 4
    """Fused runner: split the num_envs environments (of each simulated worker) into this
    many equal groups, each stepped by its own thread at the same time, with the same
    parameters (no lag). One XLA
    CPU program of small environment kernels leaves much of a core idle, so several side by
    side step more environments per second (benchmarks/throughput.py). Must divide num_envs.
    Part of the arithmetic (each group draws its own random keys), not only of the speed:
    results are reproducible per seed and actor_threads on any machine. No effect with Ray
    workers (each worker steps its environments in one program)."""
    simulated_workers: int = 0
    """0: off. N > 0 (fused runner only): N simulated IMPALA workers, each with its own
    num_envs environments, take turns feeding the learner one unroll per update; the
    behaviour parameters are then N updates old (plus policy_lag), as with N Ray workers."""
    workers: int = 0
    """0: the fused single-process runner. N > 0: N Ray rollout workers feed one learner;
    each update's batch is unrolls_per_update unrolls of num_envs x unroll_length steps."""
    unrolls_per_update: int = 1
    """Ray runner only (IMPALA-style batching): each learner update consumes this many
    unrolls, the first to arrive from any workers, joined along the environment axis and
    split into num_minibatches; more unrolls per update means fewer, larger gradient steps."""
    eval_interval: int = 500_000
    """Environment steps between evaluations."""
    eval_episodes: int = 64
    """Episodes per periodic evaluation (run with their own environments and seeds)."""
    final_eval_episodes: int = 256
    """Episodes of the final evaluation."""
    eval_mode: Literal["greedy", "sampled"] = "greedy"
    """Which evaluation is the headline eval_win_rate/eval_return: greedy or sampled."""
    checkpoint_interval: int = 2_000_000
    """Environment steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep."""

    @property
    def steps_per_unroll(self) -> int:
        return self.num_envs * self.unroll_length

    @property
    def steps_per_update(self) -> int:
        return self.steps_per_unroll * self.unrolls_per_update

    @property
    def num_updates(self) -> int:
        return max(1, self.env_steps // self.steps_per_update)

    def validate(self) -> None:
        for name in ("env_steps", "num_envs", "unroll_length", "num_epochs", "num_minibatches",
                     "unrolls_per_update", "eval_interval", "eval_episodes", "final_eval_episodes",
                     "checkpoint_interval", "keep_checkpoints", "actor_threads"):
            value = getattr(self, name)
            require(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0,
                    f"{name}={value} is invalid: must be a positive integer")
        for name in ("lr", "max_grad_norm", "adam_eps"):
            value = getattr(self, name)
            require(math.isfinite(value) and abs(value) <= FLOAT32_MAX,
                    f"{name}={value} is invalid: must be a finite number (float32)")
        require(self.lr > 0, f"lr={self.lr} is invalid: must be > 0")
        require(self.max_grad_norm >= 0, f"max_grad_norm={self.max_grad_norm} must be >= 0")
        require(self.adam_eps > 0, f"adam_eps={self.adam_eps} is invalid: must be > 0")
        require(self.policy_lag >= 0, f"policy_lag={self.policy_lag} is invalid: must be >= 0")
        require(self.policy_lag <= MAX_POLICY_LAG,
                f"policy_lag={self.policy_lag} is invalid: 0..{MAX_POLICY_LAG} (the runner keeps "
                "policy_lag + 1 copies of the parameters)")
        require(0 <= self.simulated_workers <= MAX_POLICY_LAG,
                f"simulated_workers={self.simulated_workers} is invalid: 0 (off) or 1..{MAX_POLICY_LAG}")
        require(self.policy_lag + self.simulated_workers <= MAX_POLICY_LAG,
                f"policy_lag + simulated_workers = {self.policy_lag + self.simulated_workers} is invalid: "
                f"at most {MAX_POLICY_LAG} (the runner keeps that many + 1 copies of the parameters)")
        require(not (self.simulated_workers and self.workers),
                f"simulated_workers={self.simulated_workers} cannot be combined with workers={self.workers}: "
                "simulated workers run in the fused runner, workers on Ray; choose one")
        require(not (self.pipeline and self.workers),
                f"pipeline=true cannot be combined with workers={self.workers}: it overlaps acting with "
                "learning in the fused runner, and Ray workers already act while the learner learns; choose one")
        require(self.num_envs % self.actor_threads == 0,
                f"actor_threads={self.actor_threads} is invalid: must divide num_envs={self.num_envs} "
                f"(e.g. {', '.join(str(k) for k in range(1, 9) if self.num_envs % k == 0)})")
        require(self.unrolls_per_update == 1 or self.workers > 0,
                f"unrolls_per_update={self.unrolls_per_update} needs Ray workers (workers > 0): the "
                "fused runner learns from one unroll per update")
        require(0 <= self.workers <= MAX_WORKERS,
                f"workers={self.workers} is invalid: 0 (fused runner) or 1..{MAX_WORKERS} Ray workers")
        require(
            self.num_envs % self.num_minibatches == 0,
            f"num_minibatches={self.num_minibatches} must divide num_envs={self.num_envs}",
        )
        require(
            self.env_steps >= self.steps_per_update,
            f"env_steps={self.env_steps} is smaller than one update "
            f"(num_envs x unroll_length x unrolls_per_update = {self.steps_per_update})",
        )


@dataclass(frozen=True)
class OfflineConfig:
    """How an offline run samples, evaluates and saves."""

    steps: int = 20_000
    """Training iterations (one minibatch each)."""
    batch_size: int = 128
    """Transitions per minibatch, sampled uniformly from the dataset."""
    eval_interval: int = 2_000
    """Iterations between evaluations."""
    eval_episodes: int = 32
    """Episodes per periodic evaluation (fresh environments and seeds)."""
    final_eval_episodes: int = 256
    """Episodes of the final evaluation."""
    eval_mode: Literal["greedy", "sampled"] = "greedy"
    """Which evaluation is the headline eval_win_rate/eval_return: greedy or sampled."""
    checkpoint_interval: int = 10_000
    """Iterations between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep."""

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_interval", "eval_episodes", "final_eval_episodes",
                     "checkpoint_interval", "keep_checkpoints"):
            value = getattr(self, name)
            require(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0,
                    f"{name}={value} is invalid: must be a positive integer")
