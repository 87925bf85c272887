"""MA-Trace with and without importance weights under increasing policy lag.

Arms: `--policy-lag L` in the fused runner (acting with parameters L updates old),
`--simulated-workers N` in the fused runner (the lag of N IMPALA workers, simulated in one
process, so the paper's 30-worker scale fits on a laptop), and real Ray workers
(`--workers K`, the lag the asynchronous workers create). Each setting
is trained with importance weights (MA-Trace) and with every ratio set to 1
(`importance_weights=false`), over several seeds; the final greedy evaluation win rate is
compared. The paper's claim (section 3.3): without the weights, learning degrades as the
lag grows. Finished runs are reused, so an interrupted sweep continues where it stopped. A run
that diverges (stopped on NaN or inf, last good checkpoint kept) is an outcome of its arm: it
scores its last periodic evaluation and the table counts it as diverged.
Writes is_ablation.json, is_ablation.md and is_ablation.png under --out. Usage:

    python benchmarks/is_ablation.py --env smax:3m --lags 0,8,32 --workers 2 --seeds 3 [key=value ...]
    python benchmarks/is_ablation.py --env smax:3m --lags '' --simulated 1,2,8,32 --workers 2 --seeds 3
    python benchmarks/is_ablation.py --lags '' --simulated 1,32 --workers '' --arms with behaviour_kl_cost=0.1
    python benchmarks/is_ablation.py --lags '' --simulated 2,8 --workers '' --merge OLD_OUT   # one table with OLD_OUT's rows

Trailing key=value words override config fields for every run, as in `offmarl train`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from offmarl.config import parse_overrides  # noqa: E402
from offmarl.runners.experiment import resolve_experiment  # noqa: E402
from offmarl.runners.online import train_or_resume  # noqa: E402
from offmarl.utils.plotting import save_figure  # noqa: E402
from offmarl.utils.files import atomic_write_bytes, atomic_write_json  # noqa: E402
from timing import machine  # noqa: E402

ARMS = {"with": ("with IS", True), "without": ("without IS", False)}


def run_setting(env: str, setting: dict, weights: bool, seed: int, budget: dict, runs: Path) -> dict:
    """Train (or reuse) one run; returns its summary."""
    name = "_".join(f"{k}{v}" for k, v in setting.items())
    run_dir = runs / f"{env.replace(':', '_')}_{name}_{'is' if weights else 'nois'}_s{seed}"
    experiment = resolve_experiment("matrace", env, seed, {**budget, **setting, "importance_weights": weights})
    summary = train_or_resume(experiment, run_dir, quiet=True)[0]
    if summary["status"] == "diverged":  # an outcome of the arm: it scores its last evaluation
        print(f"{run_dir}: diverged at {summary['env_steps']:,} env steps; it enters the table with its "
              f"last evaluation ({summary['eval_win_rate']:.3f})", file=sys.stderr)
    elif summary["status"] != "completed":  # a signal: no partial run enters a table
        print(f"{run_dir}: {summary['status']}; rerun the same command to continue", file=sys.stderr)
        raise SystemExit(summary.get("stop_exit_code", 1))
    return summary


def describe(setting: str, arm: str, summaries: list[dict], fused_lag: int | None) -> dict:
    """Win-rate statistics of one arm; the lag is measured with workers, exact when fused."""
    wins = np.array([s["eval_win_rate"] for s in summaries])
    lags = [s["lag_mean"] for s in summaries if s.get("lag_mean") is not None] or [fused_lag]
    return {"setting": setting, "arm": arm, "seeds": len(wins), "win_rate_mean": float(wins.mean()),
            "win_rate_std": float(wins.std(ddof=1)) if len(wins) > 1 else 0.0,
            "win_rates": wins.tolist(), "diverged": sum(s["status"] == "diverged" for s in summaries),
            "measured_lag_mean": None if lags == [None] else float(np.mean(lags))}


def write_outputs(rows: list[dict], out: Path, info: dict) -> None:
    lines = ["| setting | mean lag (updates) | with IS: final win rate (mean ± std) | without IS | "
             "difference |", "|---|---|---|---|---|"]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    by_key = {(r["setting"], r["arm"]): r for r in rows}
    for setting in settings:
        with_is, without = by_key.get((setting, "with IS")), by_key.get((setting, "without IS"))
        cells = [f"{r['win_rate_mean']:.2f} ± {r['win_rate_std']:.2f} (n={r['seeds']}"
                 + (f", {r['diverged']} diverged)" if r.get("diverged") else ")") if r else "-"
                 for r in (with_is, without)]
        lag = next((r["measured_lag_mean"] for r in (with_is, without) if r and r["measured_lag_mean"] is not None), None)
        diff = f"{with_is['win_rate_mean'] - without['win_rate_mean']:+.2f}" if with_is and without else "-"
        lines.append(f"| {setting} | {'-' if lag is None else f'{lag:.1f}'} | {cells[0]} | {cells[1]} | {diff} |")
    atomic_write_bytes(out / "is_ablation.md", ("\n".join(lines) + "\n").encode())
    atomic_write_json(out / "is_ablation.json", {**info, "rows": rows})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(settings))
    for offset, arm in ((-0.1, "with IS"), (0.1, "without IS")):
        points = [(i + offset, by_key[(s, arm)]) for i, s in enumerate(settings) if (s, arm) in by_key]
        if points:
            ax.errorbar([p for p, _ in points], [r["win_rate_mean"] for _, r in points],
                        yerr=[r["win_rate_std"] for _, r in points], marker="o", capsize=4, ls="", label=arm)
            for p, r in points:
                ax.scatter([p] * len(r["win_rates"]), r["win_rates"], s=8, alpha=0.4, color="grey")
    ax.set_xticks(x, settings, rotation=15)
    ax.set_xlim(-0.5, len(settings) - 0.5)
    ax.set_ylabel("final greedy eval win rate")
    ax.set_ylim(-0.02, 1.02)
    changes = " ".join(f"{k}={v}" for k, v in info["overrides"].items())
    ax.set_title(f"{info['env']}: importance weights under policy lag ({info['env_steps']:,} steps)"
                 + (f"\n{changes}" if changes else ""), fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "is_ablation.png")
    print("\n".join(lines), flush=True)


def refuse(message: str) -> None:
    """Bad input: one line on stderr, exit code 2, before any run starts."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def merged_rows(sources: list[str], info: dict) -> list[dict]:
    """The rows of earlier outputs (is_ablation.json) of the same design: environment, budget,
    seeds and overrides must match this run's, or the tables would mix designs."""
    rows = []
    for source in sources:
        path = Path(source) / "is_ablation.json"
        if not path.is_file():
            refuse(f"--merge {source!r}: no is_ablation.json there")
        earlier = json.loads(path.read_text())
        for key in ("env", "env_steps", "seeds", "overrides"):
            if earlier.get(key) != info[key]:
                refuse(f"--merge {source!r}: its {key} is {earlier.get(key)!r}, this run's {info[key]!r}")
        rows += earlier["rows"]
    return rows


def setting_order(row: dict) -> tuple[str, int]:
    """Rows by kind of setting, then by its number ('simulated workers 8' before '... 32')."""
    kind, _, number = row["setting"].rpartition(" ")
    return kind, int(number) if number.isdigit() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="smax:3m")
    parser.add_argument("--lags", default="0,8,32", help="fused --policy-lag settings")
    parser.add_argument("--simulated", default="", help="fused --simulated-workers counts ('' for none)")
    parser.add_argument("--workers", default="2", help="Ray worker counts ('' for none)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--env-steps", type=int, default=3_000_000)
    parser.add_argument("--final-eval-episodes", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results/is_ablation")
    parser.add_argument("--arms", default="with,without",
                        help="which arms to train: with (MA-Trace), without (importance_weights=false), or both")
    parser.add_argument("--merge", nargs="+", default=[], metavar="DIR",
                        help="earlier outputs of the same design whose rows join this table (this run's rows win)")
    parser.add_argument("overrides", nargs="*", help="config fields for every run, e.g. lr=5e-4")
    args = parser.parse_args()
    settings = [{"policy_lag": int(lag)} for lag in args.lags.split(",") if lag]
    settings += [{"simulated_workers": int(n)} for n in args.simulated.split(",") if n]
    settings += [{"workers": int(k)} for k in args.workers.split(",") if k]
    if args.seeds < 1 or not settings:
        parser.error("need --seeds >= 1 and at least one lag, simulated-worker or worker setting")
    arms = [a for a in args.arms.split(",") if a]
    if not arms or any(a not in ARMS for a in arms):
        parser.error(f"--arms={args.arms!r} is invalid; valid choices: with, without, or with,without")
    out = Path(args.out)
    overrides = parse_overrides(args.overrides)
    budget = {**overrides, "env_steps": args.env_steps, "final_eval_episodes": args.final_eval_episodes}
    info = {"env": args.env, "env_steps": args.env_steps, "seeds": args.seeds, "overrides": overrides, **machine()}
    earlier = merged_rows(args.merge, info)
    if args.merge:
        info["merged_from"] = args.merge
    rows = []
    for setting in settings:
        label = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in setting.items())
        for arm, weights in (ARMS[a] for a in arms):
            summaries = [run_setting(args.env, setting, weights, seed, budget, out / "runs")
                         for seed in range(args.seeds)]
            rows.append(describe(label, arm, summaries, setting.get("policy_lag")))
            ours = {(r["setting"], r["arm"]) for r in rows}
            # After every arm, so an interrupted sweep keeps its rows.
            write_outputs(sorted([r for r in earlier if (r["setting"], r["arm"]) not in ours] + rows,
                                 key=setting_order), out, info)


if __name__ == "__main__":
    main()
