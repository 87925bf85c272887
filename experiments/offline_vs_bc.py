"""Offline learners against behaviour cloning, per dataset (issues 13 and 14's criteria).

Reads finished offline runs (any run directories below the given folders, e.g. sweep
directories) and prints one markdown row per (environment, dataset, algorithm): a final
evaluation score for the greedy and the sampled policy, mean and 95% Student-t interval over
seeds, and each algorithm's difference from BC on the same dataset with the 95% Welch
interval of the difference. "beats BC" means the whole interval of the difference is above zero.

Scores (`--metric`): `win_rate` (SMAX); `return`; `normalised`, the return rescaled between
the uniform-random policy (0) and the vault's `expert` dataset (1), as `make-datasets` wrote them
in the vault's metadata (OMIGA's MaMuJoCo convention): from the run's config.json where the run
recorded them, else from the vault. With `return` and
`normalised` each row also gives the dataset's own mean return (normalised alike), and with
`normalised` the greedy policy's return and the dataset's as returns too (issue 14's table).

    python experiments/offline_vs_bc.py docs/results/offline_smax_og [--out FILE.json]
    python experiments/offline_vs_bc.py docs/results/offline_mabrax --metric normalised [--plot FILE.png]

`--label FIELD` names each algorithm that has the config field FIELD with its value (e.g.
`--label alpha` gives rows "omiga alpha=1.0" and "omiga alpha=10.0"), to compare settings in one
table; a row is compared with BC of the same value (`--label box_policy`: each family's
learners against that family's BC), else with BC's only row on that dataset, else with none.
The runs of one row must share the algorithm's config, the iteration budget and the data's
SHA-256; otherwise the script stops naming the first difference (an interval over seeds of
different settings would mislead). `--plot` draws the greedy column as bars per dataset, with
each seed and the dataset's own score.

A run that stopped as `diverged` (NaN or inf, or an offline critic that ran away) has no final
evaluation: it is not scored, and its row's "seeds" column counts it apart ("2 (+1 diverged)";
a row whose every run diverged shows only that).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import stats

from offmarl.algos import ALGORITHMS
from offmarl.data.source import return_anchors
from offmarl.data.vault import parse_dataset_arg
from offmarl.evaluation.aggregate import mean_ci
from offmarl.evaluation.plots import plot_dataset_scores
from offmarl.utils.files import atomic_write_json

MODES = ("greedy", "sampled")
METRICS = ("win_rate", "return", "normalised")


def welch_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a) - mean(b) and the half-width of its 95% Welch interval."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    if se == 0:
        return float(a.mean() - b.mean()), 0.0
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(a.mean() - b.mean()), float(stats.t.ppf(0.975, dof) * se)


@lru_cache(maxsize=None)
def vault_anchors(vault: str, uid: str) -> tuple[float, float]:
    """(uniform-random return, expert dataset's mean return) of a make-datasets vault."""
    anchors = return_anchors(vault, uid)
    if anchors is None:
        raise SystemExit(f"{vault}:{uid} has no return anchors (made by make-datasets with return scoring?)")
    return anchors


def score(summary: dict, key: str, metric: str, recorded_anchors: list[float] | None = None) -> float:
    """One run's `key` (a return or a win rate) in `metric` units."""
    if summary.get(key) is None:
        raise SystemExit(f"offline_vs_bc.py: error: {summary['env']} runs have no {key} "
                         f"(an environment without wins?): choose --metric return or normalised")
    value = float(summary[key])
    if metric != "normalised":
        return value
    if recorded_anchors is None:
        vault, uid = parse_dataset_arg(summary["dataset"])
        recorded_anchors = vault_anchors(str(vault), uid)
    low, high = recorded_anchors
    return (value - low) / (high - low)


def row_name(config: dict, algo: str, label: str | None) -> str:
    """`algo`, or "algo FIELD=value" with the run's (config.json's) algo_config value of
    `label` (a run made before the field existed: its default; not for an algorithm without
    that field)."""
    if label is None:
        return algo
    algo_config = algo_config_with_defaults(config, algo)
    return f"{algo} {label}={algo_config[label]}" if label in algo_config else algo


@lru_cache(maxsize=None)
def config_defaults(algo: str) -> dict:
    """`algo`'s config defaults as config.json writes them ({} for an unknown name)."""
    return json.loads(json.dumps(asdict(ALGORITHMS[algo].config_class()))) if algo in ALGORITHMS else {}


def algo_config_with_defaults(config: dict, algo: str) -> dict:
    """The run's algo_config, a field added to the code after the run was made at its default
    (as the run then behaved)."""
    return {**config_defaults(algo), **config.get("algo_config", {})}


def defining_settings(config: dict, algo: str) -> dict:
    """What must be equal for runs to be seeds of one row: the algorithm's config (a field
    added to the code after the run was made counts at its default, as it then behaved),
    the iteration budget and the data (its SHA-256 where the run recorded it)."""
    return {**{f"algo_config.{k}": v for k, v in algo_config_with_defaults(config, algo).items()},
            "run_config.steps": config.get("run_config", {}).get("steps"),
            "dataset sha256": config.get("dataset_info", {}).get("sha256")}


def check_same_setting(key: tuple[str, str, str], algo: str, run: Path, config: dict,
                       first_of: dict[tuple[str, str, str], tuple[Path, dict]]) -> None:
    """SystemExit naming the first setting in which `run` differs from the first run of its
    row: a row's seeds must be one configuration on one dataset, or its interval misleads."""
    settings = defining_settings(config, algo)
    first_run, first = first_of.setdefault(key, (run, settings))
    for name, value in settings.items():
        if name in first and None not in (first[name], value) and first[name] != value:  # None: not recorded
            raise SystemExit(f"offline_vs_bc.py: error: the runs of row {' / '.join(key)} differ in {name} "
                             f"({first[name]} in {first_run}, {value} in {run}): report them from separate "
                             "folders, or name the setting with --label")


def collect(folders: list[str], metric: str,
            label: str | None = None) -> dict[tuple[str, str, str], dict[str, list[float]]]:
    """(env, dataset uid, algo) -> {mode: final scores over seeds, "data": the dataset's own,
    "diverged": one entry per diverged run}; with `normalised` also the unnormalised
    "greedy_return" and "data_return"."""
    quantity = "win_rate" if metric == "win_rate" else "return"
    found: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    first_of: dict[tuple[str, str, str], tuple[Path, dict]] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("summary.json")):
            summary = json.loads(path.read_text())
            status = summary.get("status") if isinstance(summary, dict) else None
            if status not in ("completed", "diverged") or "dataset" not in summary:
                continue
            config = json.loads((path.parent / "config.json").read_text())
            key = (summary["env"], summary["dataset"].rpartition(":")[2], row_name(config, summary["algo"], label))
            check_same_setting(key, summary["algo"], path.parent, config, first_of)
            if status == "diverged":
                found[key]["diverged"].append(float(summary["steps"]))
                continue
            anchors = config.get("dataset_info", {}).get("return_anchors")
            for mode in MODES:
                found[key][mode].append(score(summary, f"final_eval_{mode}_{quantity}", metric, anchors))
            if metric != "win_rate":
                found[key]["data"].append(score(summary, "dataset_return_mean", metric, anchors))
            if metric == "normalised":
                found[key]["greedy_return"].append(float(summary["final_eval_greedy_return"]))
                found[key]["data_return"].append(float(summary["dataset_return_mean"]))
    return found


def bc_reference(found: dict[tuple[str, str, str], dict[str, list[float]]], env: str, uid: str,
                 setting: str) -> dict[str, list[float]] | None:
    """The BC row a row of `env`/`uid` labelled `setting` ("FIELD=value", or "") is compared
    with: BC with the same setting, else BC's only row on that dataset, else none."""
    same = (env, uid, f"bc {setting}".strip())
    if same in found:
        return found[same]
    rows = [by_mode for (e, u, algo), by_mode in found.items() if (e, u) == (env, uid) and algo.split(" ")[0] == "bc"]
    return rows[0] if len(rows) == 1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--metric", choices=METRICS, default="win_rate")
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--label", help="name each algorithm's rows by this config field's value")
    parser.add_argument("--plot", help="also draw the greedy scores per dataset as a PNG here")
    args = parser.parse_args()
    found = collect(args.folders, args.metric, args.label)
    with_returns = args.metric == "normalised"
    rows = []
    for (env, uid, algo), by_mode in sorted(found.items()):
        row = {"env": env, "dataset": uid, "algo": algo, "metric": args.metric, "seeds": len(by_mode["greedy"]),
               "diverged": len(by_mode["diverged"])}
        rows.append(row)
        if not by_mode["greedy"]:
            continue
        if by_mode.get("data"):
            row["dataset_score"] = float(np.mean(by_mode["data"]))
        if with_returns:
            row["dataset_return"] = float(np.mean(by_mode["data_return"]))
            row["greedy_return"] = mean_ci(by_mode["greedy_return"])
        name, _, setting = algo.partition(" ")
        bc = bc_reference(found, env, uid, setting)
        for mode in MODES:
            values = np.asarray(by_mode[mode])
            row[mode] = mean_ci(list(values))
            row[f"{mode}_values"] = [float(v) for v in values]
            if bc is not None and name != "bc" and len(values) > 1 and len(bc[mode]) > 1:
                row[f"{mode}_minus_bc"] = welch_difference(values, np.asarray(bc[mode]))
    data_column = args.metric != "win_rate"
    header = ["env", "dataset", *(["data return"] if with_returns else []), *(["data"] if data_column else []),
              "algo", "seeds", *(["greedy return"] if with_returns else []),
              "greedy", "greedy - BC", "sampled", "sampled - BC"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    scored = [r for r in rows if r["seeds"]]
    large = args.metric == "return" and max((abs(r["greedy"][0]) for r in scored), default=0.0) > 100
    digits = 1 if large else 3
    for r in rows:
        seeds = f"{r['seeds']} (+{r['diverged']} diverged)" if r["diverged"] else str(r["seeds"])
        if not r["seeds"]:
            before = int(with_returns) + int(data_column)  # the data columns, then algo and seeds
            print(f"| {r['env']} | {r['dataset']} |{' - |' * before} {r['algo']} | {seeds} |"
                  + " - |" * (len(header) - 4 - before))
            continue
        cells = []
        for mode in MODES:
            mean, half = r[mode]
            cells.append(f"{mean:.{digits}f} ± {half:.{digits}f}")
            if f"{mode}_minus_bc" in r:
                diff, dhalf = r[f"{mode}_minus_bc"]
                mark = " **beats BC**" if diff - dhalf > 0 else (" below BC" if diff + dhalf < 0 else "")
                cells.append(f"{diff:+.{digits}f} ± {dhalf:.{digits}f}{mark}")
            else:
                cells.append("-")
        data = f" {r['dataset_score']:.{digits}f} |" if data_column else ""
        if with_returns:
            data = f" {r['dataset_return']:.1f} |{data}"
            cells.insert(0, "{:.1f} ± {:.1f}".format(*r["greedy_return"]))
        print(f"| {r['env']} | {r['dataset']} |{data} {r['algo']} | {seeds} | " + " | ".join(cells) + " |")
    if args.out:
        atomic_write_json(args.out, rows)
    if args.plot:
        y_label = {"win_rate": "greedy win rate", "return": "greedy return",
                   "normalised": "greedy return, normalised\n(random 0, expert data 1)"}[args.metric]
        plot_dataset_scores(scored, args.plot, y_label)


if __name__ == "__main__":
    main()
