"""Datasets from online runs: a run's saved policy, at a chosen checkpoint, rolled out
into a vault with its provenance (`offmarl collect`)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from offmarl.data.collect import (
    DEFAULT_NUM_ENVS,
    CollectedEpisodes,
    EpisodeCollector,
    check_episodes,
    check_epsilon,
)
from offmarl.data.vault import check_uid_available, check_vault_destination, write_vault
from offmarl.errors import ConfigError
from offmarl.runners.common import read_run_config
from offmarl.runners.saved import SavedRun
from offmarl.utils.checkpoint import list_checkpoints, resolve_checkpoint
from offmarl.utils.files import read_jsonl
from offmarl.utils.progress import progress_display


def resolve_run_checkpoint(run_dir: str | Path, checkpoint: str | int) -> int:
    """The step count of checkpoint `checkpoint` of a run (online or offline): 'latest', 'best' or a step.

    'best' is the saved checkpoint whose periodic evaluation in metrics.jsonl (the run's
    headline eval_win_rate, or eval_return without a win condition) is highest; ties
    go to the later checkpoint. No new evaluation is run.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    if checkpoint != "best":
        return resolve_checkpoint(ckpt_dir, str(checkpoint))
    saved = set(list_checkpoints(ckpt_dir))
    if not saved:
        raise ConfigError(f"no checkpoint in {str(ckpt_dir)!r}")
    scored = []
    for record in read_jsonl(Path(run_dir) / "metrics.jsonl"):
        score = record.get("eval_win_rate")
        score = record.get("eval_return") if score is None else score
        step = record.get("env_steps", record.get("steps"))  # online runs count env steps
        if step in saved and score is not None:
            scored.append((score, step))
    if not scored:
        raise ConfigError(
            f"checkpoint 'best': no saved checkpoint of {str(run_dir)!r} has an evaluation in "
            "metrics.jsonl; use latest or one of " + ", ".join(map(str, sorted(saved)))
        )
    return max(scored)[1]


def provenance(
    run: SavedRun, env_steps: int | None, greedy: bool, epsilon: float, seed: int
) -> dict[str, Any]:
    """Where a dataset's episodes came from (env_steps None: several checkpoints)."""
    return {
        "env": run.experiment.env,
        "source_run": str(run.run_dir.resolve()),
        "algo": run.experiment.algo,
        "run_seed": run.experiment.seed,
        "checkpoint_env_steps": env_steps,
        "acting": "greedy" if greedy else "sampled",
        "epsilon": float(epsilon),
        "collection_seed": seed,
    }


def outcome_metadata(collected: CollectedEpisodes) -> dict[str, Any]:
    """Size and outcome of collected episodes, for the vault metadata."""
    return {
        "episodes": collected.dataset.num_episodes,
        "transitions": collected.dataset.num_transitions,
        "mean_return": float(collected.returns.mean()),
        "win_rate": collected.win_rate,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def collect_from_run(
    run_dir: str | Path, checkpoint: str | int, num_episodes: int, out: str | Path, uid: str,
    epsilon: float = 0.0, seed: int = 0, greedy: bool = False, num_envs: int = DEFAULT_NUM_ENVS,
    quiet: bool = False,
) -> Path:
    """Collect `num_episodes` episodes of a run's saved policy into vault `out`, dataset `uid`.

    `checkpoint` is 'latest', 'best' (see `resolve_run_checkpoint`) or an env-step count.
    Every argument is checked before anything is built or compiled.
    """
    check_episodes(num_episodes)
    check_epsilon(epsilon)
    read_run_config(run_dir)  # a missing or unreadable run directory fails first, with its own message
    env_steps = resolve_run_checkpoint(run_dir, checkpoint)
    check_uid_available(out, uid)
    run = SavedRun.open(run_dir)
    check_vault_destination(out, run.experiment.env)
    collector = EpisodeCollector(run.env, run.algo, min(num_envs, num_episodes))
    console = Console(stderr=True, quiet=quiet)
    with progress_display(console, "episodes") as progress:
        task = progress.add_task(f"collect {run.experiment.env} @ {env_steps:,}", total=num_episodes, stats="")
        collected = collector.collect(
            run.params(env_steps), num_episodes, seed, epsilon, greedy,
            on_progress=lambda done, _: progress.update(task, completed=done),
        )
    metadata = {
        **provenance(run, env_steps, greedy, epsilon, seed),
        "checkpoint": str(checkpoint),
        **outcome_metadata(collected),
    }
    return write_vault(collected.dataset, out, uid, metadata)
