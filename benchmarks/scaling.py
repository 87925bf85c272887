"""Throughput of the Ray runner against the number of rollout workers, in one run.

For each K in 1..max_workers and each batch size U in --unrolls-per-update, K workers
(each with num_envs environments) feed one learner that consumes U unrolls per update;
after a warm-up (worker start-up and compilation), `--updates` updates are timed. SPS is
environment steps learned from per second; the efficiency is SPS(K) / (K x SPS(1)) at
the same U. A point is learner-bound when the learner's own rate (env steps per second
of update time) is below what the workers produce (K x their mean rate), else
worker-bound. The fused single-process runner is timed at the same num_envs for
reference. Writes scaling.json, scaling.md and scaling.png under --out.

`--learner-only` times the learner alone, without Ray or workers: for each U, one update
(`apply_rollout`) on U unrolls handed over as host (NumPy) arrays, as the Ray learner gets
them, so the host-to-device copy is counted. It shows what a learner on this machine's
default device (a GPU where there is one) can consume, and how that grows with U. Writes
learner.json and learner.md. Usage:

    python benchmarks/scaling.py --env smax:3m                          # 1..cores-1 workers, local Ray
    python benchmarks/scaling.py --max-workers 4 --unrolls-per-update 1,4   # one-unroll vs batching learner
    python benchmarks/scaling.py --workers 1,2,4,8,14 --unrolls-per-update 1,4  # chosen worker counts
    python benchmarks/scaling.py --learner-only --unrolls-per-update 1,2,4,8,16  # the learner alone
    python benchmarks/scaling.py --max-workers 32 --ray-address HEAD:6379   # on a cluster
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from offmarl.config import parse_overrides  # noqa: E402
from offmarl.runners.experiment import resolve_experiment  # noqa: E402
from offmarl.utils.plotting import save_figure  # noqa: E402
from offmarl.runners.fused import FusedTrainer  # noqa: E402
from offmarl.utils.files import atomic_write_bytes, atomic_write_json  # noqa: E402
from timing import machine, time_it  # noqa: E402


def ray_throughput(env: str, workers: int, unrolls_per_update: int, overrides: dict, updates: int,
                   warmup: int, address: str | None) -> dict:
    """Learned env steps/s, and the mean of the workers' own steps/s, with `workers` workers."""
    from offmarl.runners.distributed import DistributedTrainer  # Ray is not needed for --learner-only
    experiment = resolve_experiment("matrace", env, 0, overrides,
                                    {"workers": workers, "unrolls_per_update": unrolls_per_update})
    built_env, algo = experiment.build()
    learner = FusedTrainer(experiment.run_config, algo, built_env)
    trainer = DistributedTrainer(experiment, built_env.settings, learner, address)
    try:
        state = trainer.init(jax.random.PRNGKey(0))
        state, _, _ = trainer.train(state, warmup)
        start = time.perf_counter()
        state, _, metrics = trainer.train(state, updates)
        seconds = time.perf_counter() - start
    finally:
        trainer.shutdown()
    steps = updates * experiment.run_config.steps_per_update
    per_worker = [v for k, v in metrics.items() if k.startswith("worker")]
    worker_mean = sum(per_worker) / len(per_worker)
    learner = metrics["learner_steps_per_second"]
    return {"workers": workers, "unrolls_per_update": unrolls_per_update, "steps_per_second": steps / seconds,
            "lag_mean": metrics["lag_mean"], "queue_depth_mean": metrics["queue_depth_mean"],
            "worker_steps_per_second_mean": worker_mean, "learner_steps_per_second": learner,
            "bound": "learner" if learner < workers * worker_mean else "workers"}


def learner_throughput(env: str, unrolls_per_update: int, overrides: dict, updates: int) -> dict:
    """The learner's env steps/s on U unrolls per update, and one unroll's collection rate
    on the same device, with no workers: the ceiling the learner puts on any worker count."""
    experiment = resolve_experiment("matrace", env, 0, overrides,
                                    {"workers": 1, "unrolls_per_update": unrolls_per_update})
    built_env, algo = experiment.build()
    trainer = FusedTrainer(experiment.run_config, algo, built_env)
    state = trainer.init(jax.random.PRNGKey(0))
    collect = jax.jit(trainer.collect)
    rollouts = []
    for _ in range(unrolls_per_update):
        state, rollout, _ = collect(state, state.params)
        rollouts.append(jax.device_get(rollout))
    batch = jax.tree.map(lambda *parts: np.concatenate(parts, axis=1), *rollouts)
    apply_rollout = jax.jit(trainer.apply_rollout)

    def update() -> jax.Array:
        nonlocal state
        state, _ = apply_rollout(state, batch)
        return state.update

    def unroll() -> jax.Array:
        nonlocal state
        state, rollout, _ = collect(state, state.params)
        return rollout.rewards

    steps = experiment.run_config.steps_per_unroll
    update_seconds = time_it(update, repeats=updates)
    return {"unrolls_per_update": unrolls_per_update, "steps_per_update": unrolls_per_update * steps,
            "learner_steps_per_second": unrolls_per_update * steps / update_seconds,
            "update_seconds": update_seconds,
            "collect_steps_per_second": steps / time_it(unroll, repeats=updates)}


def write_learner_outputs(rows: list[dict], out: Path, info: dict) -> None:
    one = next((r["learner_steps_per_second"] for r in rows if r["unrolls_per_update"] == 1), None)
    for row in rows:
        row["learner_vs_one_unroll"] = row["learner_steps_per_second"] / one if one else None
        row["workers_to_saturate"] = row["learner_steps_per_second"] / row["collect_steps_per_second"]
    lines = [f"Learner alone on {info['device']} ({info['cpu_count']} CPUs), {info['env']}: one update on U "
             "unrolls handed over as host arrays; collection timed on the same device.", "",
             "| unrolls per update | env steps per update | update seconds | learner env steps/s "
             "| learner vs one unroll | one unroll's collection, env steps/s | workers at that rate to feed it |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['unrolls_per_update']} | {r['steps_per_update']:,} | {r['update_seconds']:.4f} "
              f"| {r['learner_steps_per_second']:,.0f} | "
              + ("-" if r["learner_vs_one_unroll"] is None else f"{r['learner_vs_one_unroll']:.2f}x")
              + f" | {r['collect_steps_per_second']:,.0f} | {r['workers_to_saturate']:.1f} |" for r in rows]
    atomic_write_bytes(out / "learner.md", ("\n".join(lines) + "\n").encode())
    atomic_write_json(out / "learner.json", {**info, "rows": rows})
    print("\n".join(lines))


def fused_throughput(env: str, overrides: dict, updates: int) -> float:
    experiment = resolve_experiment("matrace", env, 0, overrides)
    built_env, algo = experiment.build()
    trainer = FusedTrainer(experiment.run_config, algo, built_env)
    state = trainer.init(jax.random.PRNGKey(0))
    seconds = time_it(lambda: trainer.train(state, updates), repeats=1)
    return updates * experiment.run_config.steps_per_update / seconds


def write_outputs(rows: list[dict], fused_sps: float, out: Path, info: dict) -> None:
    base = {r["unrolls_per_update"]: r["steps_per_second"] for r in rows if r["workers"] == rows[0]["workers"]}
    for row in rows:
        row["efficiency"] = row["steps_per_second"] / (row["workers"] * base[row["unrolls_per_update"]])
    one = {r["workers"]: r["learner_steps_per_second"] for r in rows if r["unrolls_per_update"] == 1}
    for row in rows:
        row["learner_vs_one_unroll"] = row["learner_steps_per_second"] / one[row["workers"]] if row["workers"] in one else None
    lines = [f"Fused single-process runner at the same num_envs: {fused_sps:,.0f} env steps/s.", "",
             "| workers | unrolls per update | learned env steps/s | efficiency SPS(K)/(K SPS(1)) | mean lag "
             "| queue depth | steps/s per worker | learner steps/s | learner vs one unroll | bound |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['unrolls_per_update']} | {r['steps_per_second']:,.0f} | {r['efficiency']:.2f} "
              f"| {r['lag_mean']:.2f} | {r['queue_depth_mean']:.2f} | {r['worker_steps_per_second_mean']:,.0f} "
              f"| {r['learner_steps_per_second']:,.0f} | "
              + ("-" if r["learner_vs_one_unroll"] is None else f"{r['learner_vs_one_unroll']:.2f}x")
              + f" | {r['bound']} |" for r in rows]
    atomic_write_bytes(out / "scaling.md", ("\n".join(lines) + "\n").encode())
    atomic_write_json(out / "scaling.json", {**info, "fused_steps_per_second": fused_sps, "rows": rows})
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for batch in sorted(base):
        points = [r for r in rows if r["unrolls_per_update"] == batch]
        ks = [r["workers"] for r in points]
        line, = ax.plot(ks, [r["steps_per_second"] for r in points], marker="o",
                        label=f"Ray workers, {batch} unroll{'s' if batch > 1 else ''}/update")
        ax.plot(ks, [k * base[batch] for k in ks], ls="--", color=line.get_color(), alpha=0.4)
    ks = sorted({r["workers"] for r in rows})
    ax.axhline(fused_sps, color="tab:green", ls=":", label="fused, one process")
    ax.set_xlabel("workers")
    ax.set_ylabel("learned env steps / s")
    ax.set_xticks(ks)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "scaling.png")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="smax:3m")
    parser.add_argument("--max-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="largest worker count (default: cores - 1); measures 1..max-workers")
    parser.add_argument("--workers", help="the worker counts to measure instead, e.g. 1,2,4,8,14")
    parser.add_argument("--learner-only", action="store_true",
                        help="time the learner alone, with no Ray workers (writes learner.json/md)")
    parser.add_argument("--updates", type=int, default=60, help="timed updates per worker count")
    parser.add_argument("--warmup", type=int, default=10, help="untimed updates first (start-up, compile)")
    parser.add_argument("--unrolls-per-update", default="1", help="learner batch sizes to compare, e.g. 1,4")
    parser.add_argument("--ray-address", help="join this Ray cluster instead of a local instance")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides")
    args = parser.parse_args()
    if args.max_workers < 1:
        parser.error(f"--max-workers={args.max_workers} is invalid: must be >= 1")
    worker_counts = _positive_list(parser, "--workers", args.workers) if args.workers else \
        list(range(1, args.max_workers + 1))
    overrides = parse_overrides(args.overrides)
    out = Path(args.out)
    info = {"env": args.env, "updates": args.updates, "overrides": overrides,
            "ray_address": args.ray_address or "local", **machine()}
    batches = _positive_list(parser, "--unrolls-per-update", args.unrolls_per_update)
    out.mkdir(parents=True, exist_ok=True)
    if args.learner_only:
        rows = []
        for batch in batches:
            rows.append(learner_throughput(args.env, batch, overrides, args.updates))
            print(f"learner, {batch} unrolls/update: {rows[-1]['learner_steps_per_second']:,.0f} env steps/s",
                  flush=True)
        write_learner_outputs(rows, out, info)
        return
    rows = []
    for workers in worker_counts:
        for batch in batches:
            rows.append(ray_throughput(args.env, workers, batch, overrides, args.updates, args.warmup,
                                       args.ray_address))
            print(f"{workers} workers, {batch} unrolls/update: {rows[-1]['steps_per_second']:,.0f} env steps/s "
                  f"({rows[-1]['bound']}-bound)", flush=True)
    write_outputs(rows, fused_throughput(args.env, overrides, args.updates), out, info)


def _positive_list(parser: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    """`text` as comma-separated positive integers, else a parser error naming `flag`."""
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        parser.error(f"{flag}={text!r} is invalid: comma-separated positive integers")
    return values


if __name__ == "__main__":
    main()
