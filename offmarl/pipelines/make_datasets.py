"""Datasets of several qualities from one MA-Trace run, in OG-MARL's vault layout.

One MA-Trace run with dense checkpoints is trained (or an existing one reused). Every
saved checkpoint is evaluated, greedy and sampled, and scored; each quality level takes
the policy whose score lies in its band (closest to the band's target):

    good    score >= 0.80 (the highest available if no policy reaches 0.8)
    medium  0.30 <= score <= 0.60, target 0.45
    poor    score <= 0.15, target 0.10

The score is the win rate ("win_rate" scoring) if the environment has a win condition
and the best checkpoint's win rate reaches the medium band's lower edge (0.3). Otherwise
the win rate cannot separate the levels (no win condition, as in MPE, or a run that
never learned to win, as MA-Trace on smax:5m_vs_6m), and the score is the mean return
rescaled between two anchors ("return" scoring, OG-MARL's practice of grading SMAC
datasets by episode return): 0 is the mean return of the uniform-random policy
(epsilon = 1: uniform over the available actions, measured on its own seed), 1 that of
the best evaluated checkpoint. In return units a band [a, b] is then
[R_random + a (R_best - R_random), R_random + b (R_best - R_random)], so good is the best
checkpoint itself.

If no checkpoint lands in the medium or poor band, the weakest policy above the band is
epsilon-mixed with random available actions, epsilon found by bisection on fresh
evaluations. A band that still cannot be hit gets the closest policy found, and the
vault metadata says so. The metadata of every level and checkpoint_evaluations.json
record the scoring and, for "return", both anchors.

The `replay` dataset spreads its episodes evenly over every saved checkpoint (sampled
acting), like the replay buffer of the whole run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from offmarl.data.card import write_dataset_card
from offmarl.data.collect import CollectedEpisodes, EpisodeCollector, check_episodes, split_evenly
from offmarl.data.dataset import concatenate
from offmarl.data.vault import list_uids, vault_metadata, write_vault
from offmarl.envs import check_env_name
from offmarl.errors import ConfigError
from offmarl.pipelines.collect import outcome_metadata, provenance
from offmarl.runners.experiment import Experiment, resolve_experiment
from offmarl.runners.saved import SavedRun
from offmarl.utils.files import atomic_write_json
from offmarl.utils.progress import progress_display

QUALITY_BANDS: dict[str, tuple[float, float]] = {
    "good": (0.8, 1.0),
    "medium": (0.3, 0.6),
    "poor": (0.0, 0.15),
}
BAND_TARGETS: dict[str, float] = {"good": 1.0, "medium": 0.45, "poor": 0.1}
REPLAY_UID = "replay"
EVALUATIONS_FILE = "checkpoint_evaluations.json"
DEFAULT_CHECKPOINTS = 20
DEFAULT_EVAL_EPISODES = 128
EPSILON_SEARCH_STEPS = 6
# Seed offsets, so evaluation, the epsilon search and each dataset use their own streams.
EVAL_SEED, SEARCH_SEED, LEVEL_SEED, REPLAY_SEED, RANDOM_SEED = 1_000, 2_000, 3_000, 4_000, 5_000
# Below this best checkpoint win rate (the medium band's lower edge), score by return.
WIN_SCORING_MIN = QUALITY_BANDS["medium"][0]


@dataclass(frozen=True)
class Behaviour:
    """A way of acting (checkpoint, greedy or sampled, epsilon) and how well it did."""

    env_steps: int
    greedy: bool
    epsilon: float
    score: float  # win rate, or mean return rescaled random -> 0, best checkpoint -> 1
    win_rate: float | None
    mean_return: float


def vault_path(out_dir: str | Path, env_name: str) -> Path:
    """`<out_dir>/<env with ':' replaced by '_'>.vlt`, e.g. datasets/smax_3m.vlt."""
    return Path(out_dir) / f"{env_name.replace(':', '_')}.vlt"


def dense_checkpoint_experiment(
    env_name: str, seed: int, env_steps: int | None, num_checkpoints: int
) -> Experiment:
    """Default MA-Trace settings, with about `num_checkpoints` checkpoints all kept."""
    budget = {} if env_steps is None else {"env_steps": env_steps}
    base = resolve_experiment("matrace", env_name, seed, budget).run_config
    interval = max(base.steps_per_update, base.env_steps // num_checkpoints)
    dense = {
        "checkpoint_interval": interval,
        "eval_interval": min(base.eval_interval, interval),
        "keep_checkpoints": 10 * num_checkpoints,
    }
    return resolve_experiment("matrace", env_name, seed, budget, dense)


def train_run(experiment: Experiment, run_dir: Path, console: Console, quiet: bool) -> None:
    """Train `experiment` into `run_dir`, resuming it if it was interrupted before."""
    from offmarl.runners.online import train_or_resume

    summary, reused = train_or_resume(experiment, run_dir, quiet)
    if reused:
        console.print(f"reusing the finished run {run_dir}")
        return
    status = summary["status"]
    if status == "interrupted":
        console.print("interrupted: run the same command again to resume training")
        raise SystemExit(130)
    if status == "diverged":
        console.print("[yellow]training diverged; the datasets use the checkpoints saved before")


class _Evaluator:
    """Measures behaviours with fresh episodes and scores them (see the module docstring)."""

    def __init__(self, run: SavedRun, collector: EpisodeCollector, episodes: int, seed: int) -> None:
        """`seed` is the base seed; evaluations and the epsilon search offset it."""
        self.run, self.collector, self.episodes, self.seed = run, collector, episodes, seed
        self.has_win = run.env.spec.has_win
        self.scoring = "win_rate" if self.has_win else "return"
        self.random_return: float | None = None  # the "return" anchors: score 0 ...
        self.best_return: float | None = None  # ... and score 1
        self.random_win_rate: float | None = None

    def measure(self, env_steps: int, greedy: bool, epsilon: float, seed: int) -> tuple[float | None, float]:
        collected = self.collector.collect(
            self.run.params(env_steps), self.episodes, seed, epsilon, greedy
        )
        return collected.win_rate, float(collected.returns.mean())

    def score(self, win_rate: float | None, mean_return: float) -> float:
        if self.scoring == "win_rate":
            assert win_rate is not None
            return win_rate
        assert self.random_return is not None and self.best_return is not None
        low, high = self.random_return, self.best_return
        return (mean_return - low) / max(high - low, 1e-8)

    def behaviour(self, env_steps: int, greedy: bool, epsilon: float, seed: int) -> Behaviour:
        win_rate, mean_return = self.measure(env_steps, greedy, epsilon, seed)
        return Behaviour(env_steps, greedy, epsilon, self.score(win_rate, mean_return), win_rate,
                         mean_return)

    def checkpoints(self, on_done: Callable[[], None]) -> list[Behaviour]:
        """Greedy and sampled acting of every saved checkpoint, all on the same seed, scored.

        Then chooses the scoring (see the module docstring); "return" scoring also
        measures the uniform-random policy, calling `on_done` once more.
        """
        raw = []
        for env_steps in self.run.steps:
            for greedy in (True, False):
                measured = self.measure(env_steps, greedy, 0.0, self.seed + EVAL_SEED)
                raw.append((env_steps, greedy, *measured))
                on_done()
        best_win = max((w for _, _, w, _ in raw if w is not None), default=None)
        if best_win is None or best_win < WIN_SCORING_MIN:
            self.scoring = "return"
            # epsilon = 1: every action uniform over the available ones, whatever the params.
            self.random_win_rate, self.random_return = self.measure(
                self.run.steps[-1], True, 1.0, self.seed + RANDOM_SEED
            )
            on_done()
            self.best_return = max(mean_return for *_, mean_return in raw)
        return [Behaviour(s, g, 0.0, self.score(w, r), w, r) for s, g, w, r in raw]

    def scoring_metadata(self) -> dict[str, Any]:
        """How behaviours were scored: "win_rate", or "return" with its two anchors."""
        if self.scoring == "win_rate":
            return {"scoring": "win_rate"}
        return {
            "scoring": "return",
            "score_0_return": self.random_return,  # the uniform-random policy
            "score_1_return": self.best_return,  # the best evaluated checkpoint
            "random_policy_win_rate": self.random_win_rate,
            "random_policy_seed": self.seed + RANDOM_SEED,
        }

    def band_in_returns(self, band: tuple[float, float]) -> list[float] | None:
        """A score band in mean-return units, rounded to 4 decimals ("return" scoring only)."""
        if self.scoring == "win_rate":
            return None
        assert self.random_return is not None and self.best_return is not None
        span = self.best_return - self.random_return
        return [round(self.random_return + edge * span, 4) for edge in band]


def _in_band(score: float, band: tuple[float, float]) -> bool:
    return band[0] <= score <= band[1]


def choose_behaviour(
    level: str, candidates: list[Behaviour], evaluator: _Evaluator
) -> tuple[Behaviour, str]:
    """The behaviour for quality `level` and a note on how it was chosen."""
    band, target = QUALITY_BANDS[level], BAND_TARGETS[level]

    def closest(behaviours: list[Behaviour]) -> Behaviour:
        return min(behaviours, key=lambda b: (abs(b.score - target), -b.env_steps))

    in_band = [b for b in candidates if _in_band(b.score, band)]
    if in_band:
        return closest(in_band), "checkpoint in band"
    if level == "good":
        return closest(candidates), f"best available: no policy reached {band[0]}"
    above = [b for b in candidates if b.score > band[1]]
    if not above:
        return closest(candidates), "closest available: no policy above the band to mix"
    base = min(above, key=lambda b: b.score)
    found = _search_epsilon(base, band, target, evaluator)
    if _in_band(found.score, band):
        return found, f"epsilon-mixed checkpoint {base.env_steps} to reach the band"
    return closest([found, *candidates]), "closest available: epsilon mixing missed the band"


def _search_epsilon(
    base: Behaviour, band: tuple[float, float], target: float, evaluator: _Evaluator
) -> Behaviour:
    """Bisect epsilon until mixing `base` with random actions scores inside `band`."""
    low, high = 0.0, 1.0
    best = base
    for attempt in range(EPSILON_SEARCH_STEPS):
        epsilon = (low + high) / 2
        trial = evaluator.behaviour(
            base.env_steps, base.greedy, epsilon, evaluator.seed + SEARCH_SEED + attempt
        )
        if abs(trial.score - target) < abs(best.score - target):
            best = trial
        if _in_band(trial.score, band):
            return trial
        low, high = (epsilon, high) if trial.score > band[1] else (low, epsilon)
    return best


def _level_metadata(
    level: str, behaviour: Behaviour, note: str, evaluator: _Evaluator
) -> dict[str, Any]:
    returns_band = evaluator.band_in_returns(QUALITY_BANDS[level])
    return {
        "quality": level,
        "quality_band": list(QUALITY_BANDS[level]),
        **({} if returns_band is None else {"quality_band_return": returns_band}),
        **evaluator.scoring_metadata(),
        "selection": note,
        "selection_eval_episodes": evaluator.episodes,
        "selection_eval_score": behaviour.score,
        "selection_eval_win_rate": behaviour.win_rate,
        "selection_eval_return": behaviour.mean_return,
    }


def _collect_replay(
    run: SavedRun, collector: EpisodeCollector, episodes: int, seed: int,
    on_progress: Callable[[int], None],
) -> CollectedEpisodes:
    """`episodes` episodes spread evenly over all saved checkpoints, sampled acting."""
    parts, done = [], 0
    for index, (env_steps, count) in enumerate(zip(run.steps, split_evenly(episodes, len(run.steps)))):
        if count == 0:
            continue
        parts.append(collector.collect(
            run.params(env_steps), count, seed + REPLAY_SEED + index,
            on_progress=lambda finished, _, before=done: on_progress(before + finished),
        ))
        done += count
    wins = None if parts[0].wins is None else np.concatenate([p.wins for p in parts])
    return CollectedEpisodes(
        concatenate([p.dataset for p in parts]), np.concatenate([p.returns for p in parts]), wins
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_results(vault: Path) -> None:
    """A table of the datasets with their measured win rates, then how each was chosen."""
    table = Table(title=f"datasets in {vault}")
    for column in ("uid", "band", "checkpoint", "acting", "eps", "eval score", "eval win",
                   "data win", "return", "episodes"):
        table.add_column(column)
    notes = []
    scoring = None
    for uid in [*QUALITY_BANDS, REPLAY_UID]:
        if uid not in list_uids(vault):
            continue
        meta = vault_metadata(vault, uid)
        band = meta.get("quality_band")
        checkpoint = meta.get("checkpoint_env_steps")
        table.add_row(
            uid,
            "-" if band is None else f"{band[0]:.2f}-{band[1]:.2f}",
            f"all {len(meta.get('checkpoints', []))}" if checkpoint is None else f"{checkpoint:,}",
            str(meta.get("acting")),
            f"{meta.get('epsilon', 0.0):.2f}",
            _fmt(meta.get("selection_eval_score")),
            _fmt(meta.get("selection_eval_win_rate")),
            _fmt(meta.get("win_rate")),
            _fmt(meta.get("mean_return")),
            str(meta.get("episodes")),
        )
        if "selection" in meta:
            notes.append(f"{uid}: {meta['selection']}")
            scoring = scoring or meta
    if scoring is not None and scoring.get("scoring") == "return":
        notes.insert(0, "score: mean return rescaled, uniform-random policy "
                        f"{scoring['score_0_return']:.3f} -> 0, best checkpoint "
                        f"{scoring['score_1_return']:.3f} -> 1")
    elif scoring is not None and scoring.get("scoring") == "win_rate":
        notes.insert(0, "score: win rate")
    # Wide enough for every column when stdout is a file or pipe (rich assumes 80 there).
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    console.print("\n".join(notes))


def make_datasets(
    env_name: str, out_dir: str | Path, run_dir: str | Path | None = None, episodes: int = 1000,
    seed: int = 0, env_steps: int | None = None, num_checkpoints: int = DEFAULT_CHECKPOINTS,
    eval_episodes: int = DEFAULT_EVAL_EPISODES, quiet: bool = False,
) -> Path:
    """Build `<out_dir>/<env>.vlt` with uids good, medium, poor and replay, and their cards.

    Trains an MA-Trace run into `<out_dir>/runs/` unless `run_dir` is given. Datasets that
    already exist are kept (and not recollected). Returns the vault path.
    """
    from offmarl.runners.online import load_run

    check_env_name(env_name)
    check_episodes(episodes)
    check_episodes(eval_episodes)
    if num_checkpoints <= 0:
        raise ConfigError(f"num_checkpoints={num_checkpoints} is invalid: must be a positive integer")
    train = run_dir is None
    if train:
        experiment = dense_checkpoint_experiment(env_name, seed, env_steps, num_checkpoints)
        run_dir = Path(out_dir) / "runs" / f"matrace_{env_name.replace(':', '_')}_s{seed}"
    else:
        if env_steps is not None:
            raise ConfigError("--env-steps sets the budget of a new run; it cannot change --run")
        run_dir = Path(run_dir)
        experiment, _ = load_run(run_dir)
        if experiment.env != env_name:
            raise ConfigError(f"run {str(run_dir)!r} trained on {experiment.env}, not {env_name}")
    vault = vault_path(out_dir, env_name)
    console = Console(stderr=True, quiet=quiet)
    todo = [uid for uid in [*QUALITY_BANDS, REPLAY_UID] if uid not in list_uids(vault)]
    if todo:
        if train:
            train_run(experiment, run_dir, console, quiet)
        _build_levels(todo, vault, SavedRun.open(run_dir), episodes, seed, eval_episodes, console)
    else:
        console.print(f"every dataset of {vault} exists already")
    _print_results(vault)
    return vault


def _build_levels(
    todo: list[str], vault: Path, run: SavedRun, episodes: int, seed: int, eval_episodes: int,
    console: Console,
) -> None:
    """Evaluate the run's checkpoints (if a quality level is to be made), then collect and
    write each uid in `todo` with its card."""
    collector = EpisodeCollector(run.env, run.algo)
    evaluator = _Evaluator(run, collector, eval_episodes, seed)
    with progress_display(console, "episodes") as progress:
        if any(uid in QUALITY_BANDS for uid in todo):
            task = progress.add_task("evaluate checkpoints", total=2 * len(run.steps) * eval_episodes,
                                     stats="")
            candidates = evaluator.checkpoints(lambda: progress.advance(task, eval_episodes))
            if evaluator.scoring == "return":
                progress.update(task, total=(2 * len(run.steps) + 1) * eval_episodes)
                span = (evaluator.best_return or 0.0) - (evaluator.random_return or 0.0)
                if span <= 0:
                    console.print("[yellow]no checkpoint beats the uniform-random policy's mean "
                                  "return: the quality levels cannot be told apart")
            atomic_write_json(vault / EVALUATIONS_FILE, {
                "source_run": str(run.run_dir.resolve()),
                "episodes_each": eval_episodes,
                "seed": seed + EVAL_SEED,
                **evaluator.scoring_metadata(),
                "evaluations": [asdict(b) for b in candidates],
            })
        for uid in todo:
            task = progress.add_task(f"collect {uid}", total=episodes, stats="")

            def report(done: int, task: Any = task) -> None:
                progress.update(task, completed=done)

            if uid == REPLAY_UID:
                collected = _collect_replay(run, collector, episodes, seed, report)
                origin = {
                    **provenance(run, None, False, 0.0, seed + REPLAY_SEED),
                    "checkpoints": run.steps,
                    "episodes_per_checkpoint": split_evenly(episodes, len(run.steps)),
                }
            else:
                behaviour, note = choose_behaviour(uid, candidates, evaluator)
                level_seed = seed + LEVEL_SEED + list(QUALITY_BANDS).index(uid)
                collected = collector.collect(
                    run.params(behaviour.env_steps), episodes, level_seed, behaviour.epsilon,
                    behaviour.greedy, on_progress=lambda done, _: report(done),
                )
                origin = {
                    **provenance(run, behaviour.env_steps, behaviour.greedy, behaviour.epsilon,
                                 level_seed),
                    **_level_metadata(uid, behaviour, note, evaluator),
                }
            write_vault(collected.dataset, vault, uid, {**origin, **outcome_metadata(collected)})
            write_dataset_card(vault, uid)
