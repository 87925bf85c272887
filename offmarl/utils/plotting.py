"""Matplotlib without a screen, and PNGs written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from offmarl.utils.files import atomic_write_bytes  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 100) -> None:
    """Write `fig` as a PNG at `path` atomically, then release it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def save_message_figure(text: str, path: str | Path, title: str = "") -> None:
    """Write a small PNG that only says `text` (under `title`), where a plot has nothing to draw."""
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
