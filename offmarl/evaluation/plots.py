"""Plots of runs (learning curves, policy-lag histograms), written atomically as PNG."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

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
