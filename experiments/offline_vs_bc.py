"""Offline learners against behaviour cloning, per dataset (issue 13's criterion).

Reads finished offline runs (any run directories below the given folders, e.g. sweep
directories) and prints one markdown row per (environment, dataset, algorithm): the final
greedy and sampled win rates, mean and 95% Student-t interval over seeds, and each
algorithm's difference from BC on the same dataset with the 95% Welch interval of the
difference. "beats BC" means the whole interval of the difference is above zero.

    python experiments/offline_vs_bc.py docs/results/offline_smax_og [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from offmarl.evaluation.aggregate import mean_ci
from offmarl.utils.files import atomic_write_json

MODES = ("greedy", "sampled")


def welch_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a) - mean(b) and the half-width of its 95% Welch interval."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    if se == 0:
        return float(a.mean() - b.mean()), 0.0
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(a.mean() - b.mean()), float(stats.t.ppf(0.975, dof) * se)


def collect(folders: list[str]) -> dict[tuple[str, str, str], dict[str, list[float]]]:
    """(env, dataset uid, algo) -> {mode: final win rates over seeds}, finished runs only."""
    found: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for folder in folders:
        for path in sorted(Path(folder).rglob("summary.json")):
            summary = json.loads(path.read_text())
            if not isinstance(summary, dict) or summary.get("status") != "completed" or "dataset" not in summary:
                continue
            key = (summary["env"], summary["dataset"].rpartition(":")[2], summary["algo"])
            for mode in MODES:
                found[key][mode].append(summary[f"final_eval_{mode}_win_rate"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    found = collect(args.folders)
    rows = []
    for (env, uid, algo), by_mode in sorted(found.items()):
        row = {"env": env, "dataset": uid, "algo": algo, "seeds": len(by_mode["greedy"])}
        bc = found.get((env, uid, "bc"))
        for mode in MODES:
            values = np.asarray(by_mode[mode])
            row[mode] = mean_ci(list(values))
            if bc is not None and algo != "bc" and len(values) > 1 and len(bc[mode]) > 1:
                row[f"{mode}_minus_bc"] = welch_difference(values, np.asarray(bc[mode]))
        rows.append(row)
    print("| env | dataset | algo | seeds | greedy | greedy - BC | sampled | sampled - BC |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cells = []
        for mode in MODES:
            mean, half = r[mode]
            cells.append(f"{mean:.3f} ± {half:.3f}")
            if f"{mode}_minus_bc" in r:
                diff, dhalf = r[f"{mode}_minus_bc"]
                mark = " **beats BC**" if diff - dhalf > 0 else (" below BC" if diff + dhalf < 0 else "")
                cells.append(f"{diff:+.3f} ± {dhalf:.3f}{mark}")
            else:
                cells.append("-")
        print(f"| {r['env']} | {r['dataset']} | {r['algo']} | {r['seeds']} | " + " | ".join(cells) + " |")
    if args.out:
        atomic_write_json(args.out, rows)


if __name__ == "__main__":
    main()
