"""Learning-curve plots from a run's metrics.jsonl."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from offmarl.utils.files import atomic_write_bytes  # noqa: E402

_SERIES = [("eval_greedy", "eval (greedy)"), ("eval_sampled", "eval (sampled)"), ("train", "train episodes")]


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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
