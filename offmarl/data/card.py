"""Dataset cards: a markdown summary and a return histogram of one vault dataset. Discrete
actions get each agent's action frequencies; box actions, which a histogram of values
cannot summarise per action, each agent's mean and standard deviation per dimension."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from offmarl.data.dataset import OfflineDataset
from offmarl.data.vault import load_vault, vault_metadata
from offmarl.envs import smax
from offmarl.utils.plotting import plt, save_figure
from offmarl.utils.files import atomic_write_bytes

def episode_wins(dataset: OfflineDataset, env_name: str | None) -> np.ndarray | None:
    """[episodes] bool win flags for SMAX datasets; None for environments without wins."""
    if not (env_name or "").startswith("smax:"):
        return None
    return smax.won(dataset.rewards[dataset.episode_ends, 0], True)


def action_stats(dataset: OfflineDataset) -> dict[str, Any]:
    """Discrete: `num_actions` and `action_frequencies` [N][A], the fraction of each agent's
    steps on each action. Box: `action_dim`, `action_mean` and `action_std` [N][D], and
    `action_at_range_ends` [N], the fraction of each agent's coordinates equal to the least or
    greatest value of their dimension in the dataset (where clipped samples pile up)."""
    if dataset.continuous:
        actions = dataset.actions.astype(np.float64)
        at_ends = (actions == actions.min(axis=(0, 1))) | (actions == actions.max(axis=(0, 1)))
        return {"action_dim": int(actions.shape[-1]), "action_mean": actions.mean(axis=0).tolist(),
                "action_std": actions.std(axis=0).tolist(), "action_at_range_ends": at_ends.mean(axis=(0, 2)).tolist()}
    num_actions = dataset.legals.shape[-1]
    frequencies = np.stack([
        np.bincount(dataset.actions[:, agent], minlength=num_actions) / dataset.num_transitions
        for agent in range(dataset.actions.shape[1])
    ])
    return {"num_actions": int(num_actions), "action_frequencies": frequencies.tolist()}


def dataset_stats(dataset: OfflineDataset, env_name: str | None) -> dict[str, Any]:
    """Size, returns, lengths, win rate and per-agent action statistics of a dataset."""
    returns = dataset.episode_returns()
    lengths = dataset.episode_lengths()
    wins = episode_wins(dataset, env_name)
    return {
        "episodes": dataset.num_episodes,
        "transitions": dataset.num_transitions,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "length_mean": float(lengths.mean()),
        "win_rate": None if wins is None else float(wins.mean()),
        "num_agents": int(dataset.actions.shape[1]),
        "obs_dim": int(dataset.observations.shape[-1]),
        "state_dim": int(dataset.states.shape[-1]),
        **action_stats(dataset),
    }


def _plot_histogram(returns: np.ndarray, title: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(returns, bins=min(40, max(5, returns.size // 10)), color="tab:blue", alpha=0.8)
    axes.axvline(float(returns.mean()), color="black", linestyle="--", label="mean")
    axes.set_xlabel("episode return")
    axes.set_ylabel("episodes")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, path, dpi=110)


SOURCE_COLUMNS = ("level", "run_seed", "checkpoint_env_steps", "checkpoints", "acting", "epsilon",
                  "selection", "selection_eval_score", "episodes", "transitions", "collection_seed", "source_run")
"""The columns of a card's sources table (make-datasets' metadata), those present shown."""


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def _table(rows: list[tuple[str, Any]], header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    return lines + [f"| {key} | {value} |" for key, value in rows]


def _action_section(stats: dict[str, Any]) -> list[str]:
    """The card's action table: frequencies per discrete action, or mean ± std per box
    dimension with each agent's share of coordinates at the range's ends."""
    if "action_dim" in stats:
        dims = range(stats["action_dim"])
        rows = [f"| {agent} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(means, stds)) + f" | {ends:.3f} |"
                for agent, (means, stds, ends) in enumerate(
                    zip(stats["action_mean"], stats["action_std"], stats["action_at_range_ends"]))]
        return ["## Actions (continuous)", "",
                "Mean ± standard deviation of each agent's action, per dimension, and the fraction of its",
                "coordinates at the least or greatest value of their dimension in the dataset: samples",
                "clipped into the box pile up there.", "",
                "| agent | " + " | ".join(f"d{d}" for d in dims) + " | at the range's ends |",
                "| --- |" + " --- |" * (len(dims) + 1), *rows]
    actions = range(stats["num_actions"])
    rows = [f"| {agent} | " + " | ".join(f"{p:.3f}" for p in row) + " |"
            for agent, row in enumerate(stats["action_frequencies"])]
    return ["## Action frequencies", "", "Fraction of each agent's time steps on which it took each action.",
            "", "| agent | " + " | ".join(f"a{a}" for a in actions) + " |", "| --- |" + " --- |" * len(actions),
            *rows]


def _card_markdown(name: str, stats: dict[str, Any], metadata: dict[str, Any], image: str) -> str:
    win_rate = stats["win_rate"]
    summary = [
        ("episodes", f"{stats['episodes']:,}"),
        ("transitions", f"{stats['transitions']:,}"),
        ("return, mean ± std", f"{stats['return_mean']:.3f} ± {stats['return_std']:.3f}"),
        ("return, min / max", f"{stats['return_min']:.3f} / {stats['return_max']:.3f}"),
        ("episode length, mean", f"{stats['length_mean']:.1f}"),
        ("win rate", "n/a (no win condition known for this environment)"
         if win_rate is None else f"{win_rate:.3f}"),
        ("agents / obs dim / state dim / actions",
         f"{stats['num_agents']} / {stats['obs_dim']} / {stats['state_dim']} / "
         + (f"box of {stats['action_dim']} dimensions" if "action_dim" in stats else str(stats["num_actions"]))),
    ]
    provenance = [(key, _cell(value)) for key, value in metadata.items() if key != "sources"]
    sources = metadata.get("sources", [])
    columns = [c for c in SOURCE_COLUMNS if any(c in s for s in sources)]
    source_rows = [
        "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns),
        *("| " + " | ".join(_cell(s.get(c, "")) for c in columns) + " |" for s in sources),
    ] if sources else []
    lines = [
        f"# Dataset card: `{name}`",
        "",
        "OG-MARL vault layout (flashbax): observations, actions, rewards, terminals, truncations,",
        "infos.state" + (" (box actions: no infos.legals)." if "action_dim" in stats else ", infos.legals.")
        + ("" if win_rate is None else " Win rate: SMAX episodes whose last team reward is >= 1."),
        "",
        *_table(summary, ("statistic", "value")),
        "",
        f"![return histogram]({image})",
        "",
        *_action_section(stats),
        "",
        "## Provenance",
        "",
        *(_table(provenance, ("field", "value")) if provenance else ["(none recorded)"]),
        "",
        *(["## Sources", "", "The policies whose episodes make up this dataset, one row per run.", "",
           *source_rows, ""] if source_rows else []),
    ]
    return "\n".join(lines)


def write_dataset_card(path: str | Path, uid: str, out_dir: str | Path | None = None) -> Path:
    """Write `<uid>.md` and `<uid>_returns.png` for dataset `uid` of the vault at `path`.

    They go into `out_dir` (default: the vault directory, beside the uid directories).
    Returns the markdown file's path. The vault itself is only read.
    """
    path = Path(path)
    dataset = load_vault(path, uid)
    metadata = vault_metadata(path, uid)
    stats = dataset_stats(dataset, metadata.get("env"))
    out = Path(out_dir) if out_dir is not None else path
    name = f"{path.name}:{uid}"
    image = f"{uid}_returns.png"
    _plot_histogram(dataset.episode_returns(), f"{name} returns", out / image)
    card = out / f"{uid}.md"
    atomic_write_bytes(card, _card_markdown(name, stats, metadata, image).encode())
    return card
