"""Offline learners over several datasets and seeds; writes a markdown table and the raw
summaries. Presets: `games` (the small games with known answers) and `smax` (the
good/medium/poor vaults written by `offmarl make-datasets --out datasets`). Usage (the
figures of docs/results_offline.md):

    python experiments/offline_sweep.py games --out docs/results/offline_games
    python experiments/offline_sweep.py smax --out docs/results/offline_smax
    python experiments/offline_sweep.py games --only xor:02_20 --algos inspo --seeds 3   # a quick look
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from offmarl.runners.experiment import resolve_offline_experiment
from offmarl.runners.offline import OfflineRun
from offmarl.utils.compile_cache import enable_compile_cache
from offmarl.utils.files import atomic_write_bytes, atomic_write_json

# label -> (env, dataset, training iterations, default number of seeds)
PRESETS: dict[str, dict[str, tuple[str, str, int, int]]] = {
    "games": {
        "xor:02_20": ("matrix:xor", "02_20", 2000, 10),
        "mne:balanced": ("matrix:mne", "balanced", 2000, 5),
        "mne:imbalanced": ("matrix:mne", "imbalanced", 2000, 5),
        "mne:uniform": ("matrix:mne", "uniform", 2000, 5),
        "bridge:mix": ("bridge", "mix", 10000, 5),
    },
    "smax": {
        f"{m}:{level}": (f"smax:{m}", f"datasets/smax_{m}.vlt:{level}", 4000, 3)
        for m in ("3m", "2s3z", "5m_vs_6m") for level in ("good", "medium", "poor")
    },
}
# Small networks (OMIGA's reference is 256-256): CPU time is the budget here.
SETTINGS = {"hidden_sizes": "64,64", "eval_episodes": 32, "final_eval_episodes": 128}
# InSPO's temperature must suit the value scale: 0.1 for the games' unit rewards; on SMAX,
# 0.1 made the weights noise-dominated (3m medium: 0.10 win rate over 3 seeds), 1.0 did not.
ALGO_SETTINGS = {"smax": {"inspo": {"alpha": 1.0}}}


def run_one(algo: str, env: str, dataset: str, steps: int, seed: int, work: Path, extra: dict) -> dict:
    layers = {**SETTINGS, "steps": steps, "eval_interval": steps // 2, **extra}
    experiment = resolve_offline_experiment(algo, env, dataset, seed, layers)
    return OfflineRun.create(experiment, work / f"{algo}_{env.replace(':', '_')}_{dataset}_s{seed}", quiet=True).execute()


def describe(game: str, algo: str, summaries: list[dict]) -> dict:
    returns = np.array([s["expected_return"] if "expected_return" in s else s["eval_return"] for s in summaries])
    row = {"game": game, "algo": algo, "seeds": len(summaries), "return_mean": float(returns.mean()),
           "return_std": float(returns.std(ddof=1)) if len(returns) > 1 else 0.0,
           "dataset_return_mean": summaries[0]["dataset_return_mean"]}
    if summaries[0]["eval_win_rate"] is not None:
        wins = np.array([s["eval_win_rate"] for s in summaries])
        row.update(win_rate_mean=float(wins.mean()), win_rate_std=float(wins.std(ddof=1)) if len(wins) > 1 else 0.0)
    if "joint_action_distribution" in summaries[0]:
        greedy = [s["greedy_joint_action"] for s in summaries]
        row["greedy_joint_actions"] = {a: greedy.count(a) for a in sorted(set(greedy))}
        row["mass"] = {a: float(np.mean([s["joint_action_distribution"][a] for s in summaries]))
                       for a in summaries[0]["joint_action_distribution"]}
    return row


def markdown(rows: list[dict]) -> str:
    """Games: expected return and joint-action mass; SMAX: win rate and return."""
    smax = "win_rate_mean" in rows[0]
    if smax:
        lines = ["| map:dataset | algo | seeds | eval win rate (mean ± std) | eval return (mean ± std) | dataset mean return |",
                 "|---|---|---|---|---|---|"]
    else:
        lines = ["| game:dataset | algo | seeds | return (mean ± std over seeds) | greedy joint action (count of seeds) "
                 "| mean probability of each joint action |", "|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['game']} | {r['algo']} | {r['seeds']} |"
        ret = f"{r['return_mean']:.3f} ± {r['return_std']:.3f}"
        if smax:
            lines.append(f"{head} {r['win_rate_mean']:.2f} ± {r['win_rate_std']:.2f} | {ret} | {r['dataset_return_mean']:.3f} |")
        else:
            greedy = ", ".join(f"({a}) x{n}" for a, n in r.get("greedy_joint_actions", {}).items()) or "-"
            mass = ", ".join(f"({a}) {p:.2f}" for a, p in r.get("mass", {}).items() if p >= 0.005) or "-"
            lines.append(f"{head} {ret} | {greedy} | {mass} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--only", help="comma-separated labels of the preset (default: all)")
    parser.add_argument("--algos", default="inspo,omiga,bc,iql_cql,maicq")
    parser.add_argument("--seeds", type=int, help="seeds per game (default: 10 on XOR, 5 elsewhere)")
    parser.add_argument("--out", help="folder for results.md and results.json")
    args = parser.parse_args()
    enable_compile_cache()
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        preset = PRESETS[args.preset]
        for game in args.only.split(",") if args.only else preset:
            env, dataset, steps, default_seeds = preset[game]
            for algo in args.algos.split(","):
                extra = ALGO_SETTINGS.get(args.preset, {}).get(algo, {})
                summaries = [run_one(algo, env, dataset, steps, seed, Path(tmp), extra)
                             for seed in range(args.seeds or default_seeds)]
                raw[f"{game}/{algo}"] = summaries
                rows.append(describe(game, algo, summaries))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
                if args.out:  # after every row, so an interrupted sweep keeps what it measured
                    atomic_write_bytes(Path(args.out) / "results.md", markdown(rows).encode())
                    atomic_write_json(Path(args.out) / "results.json", {"rows": rows, "runs": raw})
            shutil.rmtree(tmp, ignore_errors=True)
            Path(tmp).mkdir(exist_ok=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
