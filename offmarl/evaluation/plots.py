"""Plots of runs (learning curves, policy-lag histograms, several seeds' mean curves),
written atomically as PNG."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from offmarl.utils.plotting import plt, save_figure

_SERIES = [("eval_greedy", "eval (greedy)"), ("eval_sampled", "eval (sampled)"), ("train", "train episodes"),
           ("expected", "expected (product of the policies)")]


def plot_learning_curve(
    records: list[dict], path: str | Path, title: str, has_win: bool, x_key: str = "env_steps"
) -> None:
    """Evaluation (and training) win rate and return against `x_key` (environment steps
    for online runs, training iterations for offline ones)."""
    panels = (["win_rate"] if has_win else []) + ["return"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, quantity in zip(axes[0], panels):
        for prefix, label in _SERIES:
            key = f"{prefix}_{quantity}"
            points = [(r[x_key], r[key]) for r in records if r.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if prefix != "train" else None, ms=3, label=label)
        ax.set_xlabel(x_key.replace("_", " "))
        ax.set_ylabel(quantity.replace("_", " "))
        if quantity == "win_rate":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_lag_histogram(histogram: Counter, path: str | Path) -> None:
    """Bar chart of how many updates saw each policy lag."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    if histogram:
        lags = sorted(histogram)
        ax.bar(lags, [histogram[k] for k in lags])
    ax.set_xlabel("policy lag (learner version - behaviour version)")
    ax.set_ylabel("updates")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path)


def mean_curves(run_dirs: list[str | Path]) -> dict[str, dict[str, dict]]:
    """The periodic greedy evaluations of finished runs, averaged over seeds:
    {task: {algo: {"x", "mean", "ci95", "seeds", "quantity", "x_key"}}}, where a task is an
    environment (with its dataset for offline runs), x the evaluation points every seed of
    the group has (x_key: env_steps online; steps, i.e. training iterations, offline),
    quantity the win rate where every record has one, else the return, and ci95 the
    half-width of the Student-t interval over seeds (0 for one seed)."""
    from offmarl.evaluation.aggregate import mean_ci, read_summary
    from offmarl.evaluation.statistics import task_of
    from offmarl.utils.files import read_jsonl

    groups: dict[tuple[str, str], list[list[dict]]] = {}
    x_keys: dict[tuple[str, str], str] = {}
    for run in run_dirs:
        summary = read_summary(run)
        if summary.get("status") != "completed":
            continue
        x_key = "env_steps" if "env_steps" in summary else "steps"
        records = [r for r in read_jsonl(Path(run) / "metrics.jsonl")
                   if x_key in r and r.get("eval_greedy_return") is not None]
        if not records:  # no periodic evaluation to average
            continue
        key = (task_of(summary), str(summary.get("algo")))
        x_keys[key] = x_key
        groups.setdefault(key, []).append(
            [{"x": r[x_key], "win_rate": r.get("eval_greedy_win_rate"), "return": r["eval_greedy_return"]}
             for r in records])
    curves: dict[str, dict[str, dict]] = {}
    for (task, algo), seeds in groups.items():
        quantity = "win_rate" if all(p["win_rate"] is not None for run in seeds for p in run) else "return"
        by_x = [{p["x"]: p[quantity] for p in run} for run in seeds]
        xs = sorted(set.intersection(*(set(points) for points in by_x)))
        stats = [mean_ci([points[x] for points in by_x]) for x in xs]
        curves.setdefault(task, {})[algo] = {"x": xs, "mean": [m for m, _ in stats], "ci95": [h for _, h in stats],
                                             "seeds": len(seeds), "quantity": quantity,
                                             "x_key": x_keys[(task, algo)]}
    return curves


def plot_mean_curves(run_dirs: list[str | Path], path: str | Path) -> dict[str, dict[str, dict]]:
    """One panel per task, one line per algorithm: the mean greedy evaluation over seeds
    with its 95% interval shaded (`mean_curves`). Returns the curves."""
    curves = mean_curves(run_dirs)
    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(5 * max(len(curves), 1), 3.8), squeeze=False)
    for ax, (task, algos) in zip(axes[0], curves.items()):
        for algo, curve in algos.items():
            low = [m - h for m, h in zip(curve["mean"], curve["ci95"])]
            high = [m + h for m, h in zip(curve["mean"], curve["ci95"])]
            (line,) = ax.plot(curve["x"], curve["mean"], label=f"{algo} ({curve['seeds']} seeds)")
            ax.fill_between(curve["x"], low, high, color=line.get_color(), alpha=0.2)
        first = next(iter(algos.values()))
        quantity = first["quantity"]
        ax.set_xlabel("env steps" if first["x_key"] == "env_steps" else "training iterations")
        ax.set_title(task)
        ax.set_ylabel(f"greedy eval {quantity.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save_panels(fig, axes, bool(curves), path, "no finished runs with periodic evaluations yet")
    return curves


def plot_dataset_scores(rows: list[dict], path: str | Path,
                        y_label: str) -> dict[tuple[str, str, str], tuple[float, float]]:
    """One panel per environment (stacked), one group of bars per dataset (ordered by the
    data's own score; group k centred at x = k), one bar per algorithm (BC first): the mean
    final greedy score over seeds with its 95% interval, each seed as a dot, and the
    dataset's own score as a black line across its group. `rows` hold "env", "dataset",
    "algo", "greedy" (mean, half-width), and optionally "greedy_values" (the seeds) and
    "dataset_score". Returns each bar's (x, height) by (env, dataset, algo)."""
    envs = sorted({r["env"] for r in rows})
    algos = sorted({r["algo"] for r in rows}, key=lambda a: (a.partition(" ")[0] != "bc", a))
    colours = {algo: plt.get_cmap("tab10")(i % 10) for i, algo in enumerate(algos)}
    width = 0.8 / max(len(algos), 1)
    panels = max(len(envs), 1)
    fig, axes = plt.subplots(panels, 1, figsize=(1.5 + 2.2 * max(len({r["dataset"] for r in rows}), 1), 3.4 * panels),
                             squeeze=False)
    bars: dict[tuple[str, str, str], tuple[float, float]] = {}
    for ax, env in zip(axes[:, 0], envs):
        mine = [r for r in rows if r["env"] == env]
        data_score = {r["dataset"]: r.get("dataset_score") for r in mine}
        datasets = sorted(data_score, key=lambda d: (data_score[d] is None, data_score[d] or 0.0, d))
        labelled: set[str] = set()
        for group, dataset in enumerate(datasets):
            for slot, algo in enumerate(algos):
                row = next((r for r in mine if r["dataset"] == dataset and r["algo"] == algo), None)
                if row is None:
                    continue
                x = group - 0.4 + width * (slot + 0.5)
                mean, half = row["greedy"]
                ax.bar(x, mean, width * 0.9, yerr=half, capsize=2, color=colours[algo], alpha=0.75,
                       label=None if algo in labelled else algo)
                labelled.add(algo)
                seeds = row.get("greedy_values", [])
                ax.plot([x] * len(seeds), seeds, "o", ms=2.5, color="black", alpha=0.6)
                bars[(env, dataset, algo)] = (x, mean)
            if data_score[dataset] is not None:
                ax.hlines(data_score[dataset], group - 0.45, group + 0.45, colors="black", linewidth=2,
                          label=None if "data" in labelled else "data")
                labelled.add("data")
        ax.set_xticks(range(len(datasets)), datasets)
        ax.set_title(env)
        ax.set_ylabel(y_label)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save_panels(fig, axes, bool(envs), path)
    return bars


def _save_panels(fig: plt.Figure, axes: Any, drawn: bool, path: str | Path,
                 nothing: str = "no finished runs yet") -> None:
    """Write a figure of panels, saying `nothing` in its first panel when there was nothing to draw."""
    if not drawn:
        axes[0][0].axis("off")
        axes[0][0].text(0.5, 0.5, nothing, ha="center", va="center")
    fig.tight_layout()
    save_figure(fig, path)
