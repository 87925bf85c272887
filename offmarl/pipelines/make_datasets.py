"""Datasets of several qualities from several MA-Trace runs, made the OG-MARL way (discrete
actions) or the way OMIGA's MaMuJoCo datasets are made (box actions), in OG-MARL's vault
layout (docs/datasets.md).

Several independent MA-Trace runs (one per seed, dense checkpoints) are trained, or
existing ones reused. Every saved checkpoint of every run is evaluated, greedy and
sampled, acting epsilon-mixed with random available actions at the rollout epsilon
(0.05 by default, OG-MARL's), and scored. Each quality level then takes, *from every
run*, the policy whose score lies in its band (closest to the band's target). The
levels depend on the action space (`level_scheme`):

    discrete (SMAC-style, OG-MARL)      box (MaMuJoCo-style, OMIGA)
    good    score >= 0.80               expert  score >= 0.80
    medium  0.30 <= score <= 0.60       medium  1/3 <= score <= 1/2
            target 0.45                         target 5/12
    poor    score <= 0.15, target 0.10

and each rolls its policy out with the same epsilon until the run's share of the
dataset's transitions (at least 100k per dataset by default) is collected. Two more
datasets:

    replay         each run's untrained policy and training checkpoints up to its
    (medium-replay) medium policy, sampled acting, transitions spread evenly over them:
                    the replay of training to medium
    mixed          the union of good, medium and poor (medium-expert: of medium and
    (medium-expert) expert)

The score is the win rate ("win_rate" scoring) if the environment has a win condition
and the best checkpoint's win rate over all runs reaches the medium band's lower edge.
Otherwise the win rate cannot separate the levels (no win condition, as in MPE and
MABrax, or runs that never learned to win), and the score is the mean return rescaled
between two anchors shared by all runs ("return" scoring, OG-MARL's practice of grading
SMAC datasets by episode return, and D4RL's normalised score): 0 is the mean return of
the uniform-random policy (epsilon = 1, measured on its own seed), 1 that of the best
evaluated checkpoint. In return units a band [a, b] is [R_random + a (R_best - R_random),
R_random + b (R_best - R_random)].

If no checkpoint of a run lands in a lower band, the run's weakest policy above the band
is mixed with a larger epsilon, found by bisection on fresh evaluations. A band that
still cannot be hit gets the closest policy found, and the metadata says so. Each
dataset's metadata lists its sources (run, seed, checkpoint, acting, epsilon, episodes,
transitions, how the policy was chosen); the vault's checkpoint_evaluations.json records
the settings, every evaluation and the scoring. Each run's folder keeps its evaluations as
they finish (dataset_measurements.jsonl), so a pipeline killed while scoring resumes where
it stopped.

One process at a time writes a vault (a lock on its folder). A rerun adds the missing
datasets (and missing cards) under the same settings only: settings that differ from the
recorded ones, or a run folder trained with another config than planned, are refused
before anything is trained or scored.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from offmarl.data.card import write_dataset_card
from offmarl.data.collect import CollectedEpisodes, EpisodeCollector, check_epsilon, split_evenly
from offmarl.data.dataset import concatenate
from offmarl.data.vault import list_uids, load_vault, vault_metadata, write_vault
from offmarl.envs import check_env_name, has_continuous_actions
from offmarl.errors import ConfigError
from offmarl.pipelines.collect import outcome_metadata, provenance
from offmarl.runners.common import RunLock, holds_only_lock
from offmarl.runners.experiment import Experiment, resolve_experiment
from offmarl.runners.saved import SavedRun
from offmarl.utils.files import JsonlMemo, atomic_write_json
from offmarl.utils.progress import progress_display

@dataclass(frozen=True)
class LevelScheme:
    """The datasets one make-datasets call writes: quality levels (a score band and a
    target each), the replay of training up to the medium level, and a union of levels."""

    bands: dict[str, tuple[float, float]]
    """Each quality level's score band, in the order the levels are written."""
    targets: dict[str, float]
    """The score each level's policy is chosen closest to, within its band."""
    best: str
    """The level that takes the best available policy when none reaches its band."""
    medium: str
    """The level whose policy bounds the replay."""
    replay: str
    """The uid of the replay of training up to the medium policy."""
    mixed: str
    """The uid of the union of the `mixed_of` levels."""
    mixed_of: tuple[str, ...]

    @property
    def uids(self) -> list[str]:
        return [*self.bands, self.replay, self.mixed]


OG_MARL_LEVELS = LevelScheme(
    bands={"good": (0.8, 1.0), "medium": (0.3, 0.6), "poor": (0.0, 0.15)},
    targets={"good": 1.0, "medium": 0.45, "poor": 0.1},
    best="good", medium="medium", replay="replay", mixed="mixed", mixed_of=("good", "medium", "poor"),
)
"""OG-MARL's SMAC levels, for discrete actions."""
MAMUJOCO_LEVELS = LevelScheme(
    bands={"expert": (0.8, 1.0), "medium": (1 / 3, 1 / 2)},
    targets={"expert": 1.0, "medium": 5 / 12},
    best="expert", medium="medium", replay="medium-replay", mixed="medium-expert", mixed_of=("medium", "expert"),
)
"""OMIGA's multi-agent MuJoCo levels, for box actions: medium is a policy at a third to a
half of the expert's (normalised) return."""


def level_scheme(env_name: str) -> LevelScheme:
    """MaMuJoCo-style levels for box actions, OG-MARL's SMAC levels otherwise."""
    return MAMUJOCO_LEVELS if has_continuous_actions(env_name) else OG_MARL_LEVELS


EVALUATIONS_FILE = "checkpoint_evaluations.json"
SETTING_FLAGS = {
    "env": "--env",
    "source_runs": "--seeds or --runs",
    "run_env_steps": "--env-steps",
    "run_checkpoint_intervals": "the runs' checkpoint spacing, num_checkpoints",
    "episodes_each": "eval_episodes",
    "rollout_epsilon": "--epsilon",
    "transitions_per_dataset": "--transitions",
}
"""The settings that define a vault's datasets, as EVALUATIONS_FILE records them, and the
option that sets each. Older files lack some; those are not compared."""
EVALUATION_ONLY_SETTINGS = ("eval_episodes", "final_eval_episodes", "eval_mode")
"""Run settings that change only a run's own evaluations, not its checkpoints (which are
scored again): a run saved with other values (older runs had 64 and 256 episodes) is reused."""
MEASUREMENTS_FILE = "dataset_measurements.jsonl"  # in each run's folder: every evaluation, kept for reruns
DEFAULT_SEEDS = (0, 1, 2, 3)
DEFAULT_TRANSITIONS = 100_000
DEFAULT_EPSILON = 0.05
DEFAULT_CHECKPOINTS = 20
DEFAULT_EVAL_EPISODES = 128
RUN_EVAL_EPISODES = (16, 64)
"""The most (periodic, final) evaluation episodes of a run that make-datasets trains: its
checkpoints are scored again, on DEFAULT_EVAL_EPISODES, so the runs' own evaluations only
draw the learning curve. On MABrax (1,000-step episodes) the defaults (64 and 256, greedy and
sampled) took about as long as the training."""
EPSILON_SEARCH_STEPS = 6
MAX_TOP_UPS = 8
TOP_UP_GROWTH = 2
"""A top-up collects at most this many times the episodes collected so far (collect_transitions)."""
# Seed offsets, so evaluation, the epsilon search and each dataset use their own streams.
EVAL_SEED, SEARCH_SEED, LEVEL_SEED, REPLAY_SEED, RANDOM_SEED = 1_000, 2_000, 3_000, 4_000, 5_000
SCORING_THREADS = 2
"""Checkpoint evaluations run at once. Each is one XLA program stepping its environments,
which leaves part of a 2-core CPU idle; each keeps its own seed, so the scores are the same
with any number."""
RUN_SEED_STRIDE = 100_000  # run r's collection seeds are offset by r * this


@dataclass(frozen=True)
class Behaviour:
    """A way of acting (run, checkpoint, greedy or sampled, epsilon) and how well it did."""

    run: int  # index into the pipeline's runs
    env_steps: int
    greedy: bool
    epsilon: float
    score: float  # win rate, or mean return rescaled random -> 0, best checkpoint -> 1
    win_rate: float | None
    mean_return: float
    mean_length: float


def vault_path(out_dir: str | Path, env_name: str) -> Path:
    """`<out_dir>/<env with ':' replaced by '_'>.vlt`, e.g. datasets/smax_3m.vlt."""
    return Path(out_dir) / f"{env_name.replace(':', '_')}.vlt"


def dense_checkpoint_experiment(
    env_name: str, seed: int, env_steps: int | None, num_checkpoints: int
) -> Experiment:
    """Default MA-Trace settings, with about `num_checkpoints` checkpoints all kept and the
    lighter evaluations of RUN_EVAL_EPISODES (evaluations have their own seeds, so the
    trained parameters are the same with any). The interval is whole updates, so each
    training chunk (eval_interval) ends on a checkpoint; an interval a few steps longer than
    the chunk would checkpoint every second chunk only."""
    budget = {} if env_steps is None else {"env_steps": env_steps}
    base = resolve_experiment("matrace", env_name, seed, budget).run_config
    spu = base.steps_per_update
    interval = max(spu, base.env_steps // num_checkpoints // spu * spu)
    dense = {
        "checkpoint_interval": interval,
        "eval_interval": min(base.eval_interval, interval),
        "keep_checkpoints": 10 * num_checkpoints,
        "eval_episodes": min(base.eval_episodes, RUN_EVAL_EPISODES[0]),
        "final_eval_episodes": min(base.final_eval_episodes, RUN_EVAL_EPISODES[1]),
    }
    return resolve_experiment("matrace", env_name, seed, budget, dense)


def train_run(experiment: Experiment, run_dir: Path, console: Console, quiet: bool) -> None:
    """Train `experiment` into `run_dir`, resuming it if it was interrupted before."""
    from offmarl.runners.online import train_or_resume

    summary, reused = train_or_resume(experiment, run_dir, quiet)
    status = summary["status"]
    if reused:
        console.print(f"reusing the finished run {run_dir}" + (" (it diverged)" if status == "diverged" else ""))
        return
    if status == "interrupted":
        console.print("interrupted: run the same command again to resume training")
        raise SystemExit(summary.get("stop_exit_code", 130))
    if status == "diverged":
        console.print("[yellow]training diverged; the datasets use the checkpoints saved before")


def check_run_matches(experiment: Experiment, run_dir: Path) -> None:
    """ConfigError naming the first setting in which the run saved in `run_dir` differs
    from `experiment`, which is planned there; nothing if `run_dir` holds no run yet. A
    setting its config.json lacks (added to the code since) is not compared, nor are
    EVALUATION_ONLY_SETTINGS."""
    from offmarl.runners.online import load_run

    if not (run_dir / "config.json").is_file():
        return
    saved_experiment, raw = load_run(run_dir)
    saved, planned = saved_experiment.to_dict(), experiment.to_dict()
    compared = [(key, saved[key], planned[key]) for key in ("algo", "env", "seed")]
    if all(old == new for _, old, new in compared):  # the same algorithm: the same config fields
        compared = [(f"{section}.{key}", saved[section][key], planned[section][key])
                    for section in ("algo_config", "run_config") for key in raw[section]
                    if key not in EVALUATION_ONLY_SETTINGS]
    for key, old, new in compared:
        if old != new:
            raise ConfigError(f"run {str(run_dir)!r} was trained with {key}={old}, not {new} as planned now: "
                              "rerun with the settings it was made with, or choose a new --out")


def _run_status(run_dir: Path) -> str:
    """A run's status from its summary.json ("completed", "interrupted", ...), or why it has none."""
    try:
        return str(json.loads((run_dir / "summary.json").read_text()).get("status", "unknown"))
    except FileNotFoundError:
        return "no summary.json"
    except (OSError, ValueError):
        return "unreadable summary.json"


def dataset_settings(env_name: str, run_dirs: Sequence[Path], runs: Sequence[Experiment], epsilon: float,
                     transitions: int, eval_episodes: int) -> dict[str, Any]:
    """The settings that define the datasets (keys of SETTING_FLAGS), as recorded; `runs`
    are the source runs' experiments (their budgets and checkpoint spacing)."""
    return {
        "env": env_name,
        "source_runs": [str(run_dir.resolve()) for run_dir in run_dirs],
        "run_env_steps": [run.run_config.env_steps for run in runs],
        "run_checkpoint_intervals": [run.run_config.checkpoint_interval for run in runs],
        "episodes_each": eval_episodes,
        "rollout_epsilon": epsilon,
        "transitions_per_dataset": transitions,
    }


def check_same_settings(vault: Path, settings: dict[str, Any]) -> None:
    """ConfigError naming the first of `settings` whose value differs from the one the
    vault's EVALUATIONS_FILE records; settings it does not record (older files, or no file
    yet) are accepted."""
    path = vault / EVALUATIONS_FILE
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{str(path)!r} is unreadable: {err}") from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"{str(path)!r} is not a record of make-datasets' evaluations")
    for key, value in settings.items():
        if key in recorded and recorded[key] != value:
            raise ConfigError(f"{str(vault)!r} was made with {key} ({SETTING_FLAGS[key]}) {_shown(recorded[key])}, "
                              f"now {_shown(value)}: rerun with the recorded settings, or choose a new --out")


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def write_missing_cards(vault: Path, uids: Sequence[str]) -> list[str]:
    """Write the card of each of `uids` that the vault holds without one (a kill between a
    dataset and its card); returns those uids."""
    held = list_uids(vault)
    missing = [uid for uid in uids if uid in held and not (vault / f"{uid}.md").is_file()]
    for uid in missing:
        write_dataset_card(vault, uid)
    return missing


class _Evaluator:
    """Measures behaviours of several runs with fresh episodes and scores them on one scale
    (see the module docstring)."""

    def __init__(self, runs: Sequence[SavedRun], collectors: Sequence[Any], episodes: int, seed: int,
                 epsilon: float = 0.0, levels: LevelScheme = OG_MARL_LEVELS,
                 memos: Sequence[JsonlMemo] | None = None) -> None:
        """`seed` is the base seed; evaluations and the epsilon search offset it. `epsilon`
        is the rollout epsilon every checkpoint is evaluated (and later collected) with;
        `levels` are the quality levels the scores serve. `memos` (one per run) keep each
        measurement, so a rerun after an interruption repeats none of them."""
        self.runs, self.collectors = list(runs), list(collectors)
        self.memos = list(memos) if memos is not None else None
        self.episodes, self.seed, self.epsilon, self.levels = episodes, seed, epsilon, levels
        self.has_win = self.runs[0].env.spec.has_win
        self.scoring = "win_rate" if self.has_win else "return"
        self.random_return: float | None = None  # the "return" anchors: score 0 ...
        self.best_return: float | None = None  # ... and score 1
        self.random_win_rate: float | None = None
        self._memo_lock = threading.Lock()

    def measure(self, run: int, env_steps: int, greedy: bool, epsilon: float,
                seed: int) -> tuple[float | None, float, float]:
        """(win rate, mean return, mean episode length) of fresh episodes."""
        key = {"env_steps": env_steps, "greedy": greedy, "epsilon": epsilon, "episodes": self.episodes,
               "seed": seed}
        if self.memos is not None and (known := self.memos[run].get(key)) is not None:
            return tuple(known)
        collected = self.collectors[run].collect(
            self.runs[run].params(env_steps), self.episodes, seed, epsilon, greedy
        )
        measured = collected.win_rate, float(collected.returns.mean()), float(collected.mean_length)
        if self.memos is not None:
            with self._memo_lock:
                self.memos[run].put(key, list(measured))
        return measured

    def score(self, win_rate: float | None, mean_return: float) -> float:
        if self.scoring == "win_rate":
            assert win_rate is not None
            return win_rate
        assert self.random_return is not None and self.best_return is not None
        low, high = self.random_return, self.best_return
        return (mean_return - low) / max(high - low, 1e-8)

    def behaviour(self, run: int, env_steps: int, greedy: bool, epsilon: float, seed: int) -> Behaviour:
        win_rate, mean_return, length = self.measure(run, env_steps, greedy, epsilon, seed)
        return Behaviour(run, env_steps, greedy, epsilon, self.score(win_rate, mean_return), win_rate,
                         mean_return, length)

    def checkpoints(self, on_done: Callable[[], None]) -> list[Behaviour]:
        """Greedy and sampled acting of every saved checkpoint of every run, all on the same
        seed and at the rollout epsilon, scored.

        Then chooses the scoring (see the module docstring); "return" scoring also
        measures the uniform-random policy, calling `on_done` once more.
        """
        todo = [(run, env_steps, greedy) for run, saved in enumerate(self.runs)
                for env_steps in saved.steps for greedy in (True, False)]

        def measure(task: tuple[int, int, bool]) -> tuple:
            measured = self.measure(*task, self.epsilon, self.seed + EVAL_SEED)
            on_done()
            return (*task, *measured)

        # On an error or a signal, map cancels the queue: only the running ones finish (and are memoised).
        with ThreadPoolExecutor(SCORING_THREADS) as pool:
            raw = list(pool.map(measure, todo))
        best_win = max((w for _, _, _, w, _, _ in raw if w is not None), default=None)
        # Below the medium band's lower edge the win rate cannot separate the levels.
        if best_win is None or best_win < self.levels.bands[self.levels.medium][0]:
            self.scoring = "return"
            # epsilon = 1: every action uniform over the available ones, whatever the params.
            self.random_win_rate, self.random_return, _ = self.measure(
                0, self.runs[0].steps[-1], True, 1.0, self.seed + RANDOM_SEED
            )
            on_done()
            self.best_return = max(mean_return for *_, mean_return, _ in raw)
        return [Behaviour(r, s, g, self.epsilon, self.score(w, ret), w, ret, length)
                for r, s, g, w, ret, length in raw]

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
    """The behaviour for quality `level` among one run's `candidates`, and a note on how it
    was chosen."""
    band, target = evaluator.levels.bands[level], evaluator.levels.targets[level]

    def closest(behaviours: list[Behaviour]) -> Behaviour:
        return min(behaviours, key=lambda b: (abs(b.score - target), -b.env_steps))

    in_band = [b for b in candidates if _in_band(b.score, band)]
    if in_band:
        return closest(in_band), "checkpoint in band"
    if level == evaluator.levels.best:
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
    """Bisect epsilon (above `base`'s own) until mixing `base` with random actions scores in `band`."""
    low, high = base.epsilon, 1.0
    best = base
    for attempt in range(EPSILON_SEARCH_STEPS):
        epsilon = (low + high) / 2
        trial = evaluator.behaviour(
            base.run, base.env_steps, base.greedy, epsilon, evaluator.seed + SEARCH_SEED + attempt
        )
        if abs(trial.score - target) < abs(best.score - target):
            best = trial
        if _in_band(trial.score, band):
            return trial
        low, high = (epsilon, high) if trial.score > band[1] else (low, epsilon)
    return best


def _level_metadata(level: str, evaluator: _Evaluator) -> dict[str, Any]:
    """What a quality level is and how it was scored (the sources list its policies)."""
    band = evaluator.levels.bands[level]
    returns_band = evaluator.band_in_returns(band)
    return {
        "quality": level,
        "quality_band": list(band),
        **({} if returns_band is None else {"quality_band_return": returns_band}),
        **evaluator.scoring_metadata(),
        "selection_eval_episodes": evaluator.episodes,
    }


def _source_metadata(run: SavedRun, behaviour: Behaviour, note: str, seed: int,
                     collected: CollectedEpisodes) -> dict[str, Any]:
    """One run's contribution to a dataset: provenance, selection and size."""
    return {
        **provenance(run, behaviour.env_steps, behaviour.greedy, behaviour.epsilon, seed),
        "selection": note,
        "selection_eval_score": behaviour.score,
        "selection_eval_win_rate": behaviour.win_rate,
        "selection_eval_return": behaviour.mean_return,
        "episodes": collected.dataset.num_episodes,
        "transitions": collected.dataset.num_transitions,
    }


def merge_collected(parts: Sequence[CollectedEpisodes]) -> CollectedEpisodes:
    """One CollectedEpisodes holding every part's episodes, in order."""
    wins = None if parts[0].wins is None else np.concatenate([p.wins for p in parts])
    return CollectedEpisodes(concatenate([p.dataset for p in parts]),
                             np.concatenate([p.returns for p in parts]), wins)


def collect_transitions(
    collector: Any, params: Any, transitions: int, mean_length: float, seed: int, epsilon: float,
    greedy: bool, on_progress: Callable[[int], None] = lambda _: None,
) -> CollectedEpisodes:
    """Whole episodes until at least `transitions` steps are recorded.

    The first batch is sized from `mean_length` (from the evaluation); top-ups on new
    seeds follow if the episodes turned out shorter, sized from the mean length of every
    episode so far and at most TOP_UP_GROWTH times as many episodes as collected so far:
    where episode lengths are bimodal (a robot that falls at once or runs the full 1,000
    steps), a first batch of short episodes must not size a top-up of thousands of
    episodes. `on_progress` gets transitions so far.
    """
    parts, have, episodes_so_far = [], 0, 0
    for top_up in range(MAX_TOP_UPS + 1):
        missing = transitions - have
        episodes = max(1, math.ceil(1.05 * missing / max(mean_length, 1.0)))
        if episodes_so_far:
            episodes = min(episodes, TOP_UP_GROWTH * episodes_so_far)
        part = collector.collect(params, episodes, seed + 7_919 * top_up, epsilon, greedy)
        parts.append(part)
        have += part.dataset.num_transitions
        episodes_so_far += part.dataset.num_episodes
        on_progress(have)
        if have >= transitions:
            break
        mean_length = have / episodes_so_far
    return merge_collected(parts)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_results(vault: Path, levels: LevelScheme) -> None:
    """A table of the datasets and their sources with measured win rates, then the scoring."""
    table = Table(title=f"datasets in {vault}")
    for column in ("uid", "run seed", "checkpoint", "acting", "eps", "eval score", "data win",
                   "return", "episodes", "transitions"):
        table.add_column(column)
    scoring = None
    uids = list_uids(vault)
    for uid in levels.uids:
        if uid not in uids:
            continue
        meta = vault_metadata(vault, uid)
        table.add_row(uid, "all", "-", "-", "-", "-", _fmt(meta.get("win_rate")), _fmt(meta.get("mean_return")),
                      str(meta.get("episodes")), str(meta.get("transitions")))
        for source in meta.get("sources", []):
            checkpoint = source.get("checkpoint_env_steps")
            table.add_row(
                source.get("level", ""), str(source.get("run_seed")),
                f"{len(source.get('checkpoints', []))} up to {source['checkpoints'][-1]:,}"
                if checkpoint is None else f"{checkpoint:,}",
                str(source.get("acting")), f"{source.get('epsilon', 0.0):.2f}",
                _fmt(source.get("selection_eval_score")), "", "",
                str(source.get("episodes")), str(source.get("transitions")),
            )
        scoring = scoring or (meta if "scoring" in meta else None)
    notes = []
    if scoring is not None and scoring.get("scoring") == "return":
        notes.append("score: mean return rescaled, uniform-random policy "
                     f"{scoring['score_0_return']:.3f} -> 0, best checkpoint {scoring['score_1_return']:.3f} -> 1")
    elif scoring is not None:
        notes.append("score: win rate")
    # Wide enough for every column when stdout is a file or pipe (rich assumes 80 there).
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(table)
    console.print("\n".join(notes))


def _check_arguments(seeds: Sequence[int], transitions: int, epsilon: float, num_checkpoints: int,
                     eval_episodes: int) -> None:
    if not seeds:
        raise ConfigError("seeds is empty: give at least one run seed, e.g. --seeds 0,1,2,3")
    for name, value in (("transitions", transitions), ("num_checkpoints", num_checkpoints),
                        ("eval_episodes", eval_episodes)):
        if value <= 0:
            raise ConfigError(f"{name}={value} is invalid: must be a positive integer")
    check_epsilon(epsilon)


def make_datasets(
    env_name: str, out_dir: str | Path, run_dirs: Sequence[str | Path] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS, transitions: int = DEFAULT_TRANSITIONS,
    epsilon: float = DEFAULT_EPSILON, env_steps: int | None = None,
    num_checkpoints: int = DEFAULT_CHECKPOINTS, eval_episodes: int = DEFAULT_EVAL_EPISODES,
    quiet: bool = False,
) -> Path:
    """Build `<out_dir>/<env>.vlt` with the uids of `level_scheme(env_name)` (good, medium,
    poor, replay and mixed; or expert, medium, medium-replay and medium-expert), and cards.

    Trains one MA-Trace run per seed into `<out_dir>/runs/` (resuming interrupted ones)
    unless `run_dirs` are given. Datasets that already exist are kept (and not
    recollected), which needs the settings they were made with (ConfigError otherwise,
    before any work); a missing card is written. Returns the vault path.
    """
    from offmarl.runners.online import FINISHED_STATUSES, load_run

    check_env_name(env_name)
    levels = level_scheme(env_name)
    if run_dirs is not None and not run_dirs:
        raise ConfigError("--runs is empty: name at least one finished online run")
    _check_arguments(list(seeds) if run_dirs is None else [0], transitions, epsilon, num_checkpoints,
                     eval_episodes)
    if run_dirs is None:
        planned = [(dense_checkpoint_experiment(env_name, seed, env_steps, num_checkpoints),
                    Path(out_dir) / "runs" / f"matrace_{env_name.replace(':', '_')}_s{seed}") for seed in seeds]
        sources = [experiment for experiment, _ in planned]
    else:
        if env_steps is not None:
            raise ConfigError("--env-steps sets the budget of new runs; it cannot change --runs")
        planned, sources = [], []
        for run_dir in map(Path, run_dirs):
            experiment, _ = load_run(run_dir)
            if experiment.env != env_name:
                raise ConfigError(f"run {str(run_dir)!r} trained on {experiment.env}, not {env_name}")
            status = _run_status(run_dir)
            if status not in FINISHED_STATUSES:  # a diverged run's checkpoints before the divergence serve
                raise ConfigError(f"run {str(run_dir)!r} is not finished (status: {status}); finish it with "
                                  f"`offmarl train --resume {run_dir}` or leave it out of --runs")
            planned.append((None, run_dir))
            sources.append(experiment)
    settings = dataset_settings(env_name, [run_dir for _, run_dir in planned], sources, epsilon, transitions,
                                eval_episodes)
    vault = vault_path(out_dir, env_name)
    console = Console(stderr=True, quiet=quiet)
    created = not vault.exists()
    lock = RunLock.acquire(vault, "vault")
    try:
        check_same_settings(vault, settings)
        todo = [uid for uid in levels.uids if uid not in list_uids(vault)]
        to_train = [(experiment, run_dir) for experiment, run_dir in planned if experiment is not None and todo]
        for experiment, run_dir in to_train:
            check_run_matches(experiment, run_dir)  # every run before any trains
        for uid in write_missing_cards(vault, levels.uids):
            console.print(f"wrote the missing card of {uid}")
        for experiment, run_dir in to_train:
            train_run(experiment, run_dir, console, quiet)
        if todo:
            runs = [SavedRun.open(run_dir) for _, run_dir in planned]
            _build_datasets(todo, vault, runs, levels, settings, console)
        else:
            console.print(f"every dataset of {vault} exists already")
    finally:
        if created and holds_only_lock(vault):  # removed while locked: no other process is using it
            shutil.rmtree(vault, ignore_errors=True)
        lock.release()
    _print_results(vault, levels)
    return vault


def _collectors(runs: Sequence[SavedRun]) -> list[EpisodeCollector]:
    """One collector per distinct policy configuration (runs with equal configs share its compile)."""
    by_config: dict[str, EpisodeCollector] = {}
    out = []
    for run in runs:
        key = repr(run.experiment.algo_config)
        if key not in by_config:
            by_config[key] = EpisodeCollector(run.env, run.algo)
        out.append(by_config[key])
    return out


def _build_datasets(
    todo: list[str], vault: Path, runs: list[SavedRun], levels: LevelScheme, settings: dict[str, Any],
    console: Console,
) -> None:
    """Evaluate every run's checkpoints, then collect and write each uid in `todo` with its
    card. `settings` (from dataset_settings) are recorded with the evaluations."""
    transitions, epsilon = settings["transitions_per_dataset"], settings["rollout_epsilon"]
    eval_episodes = settings["episodes_each"]
    collectors = _collectors(runs)
    base_seed = runs[0].experiment.seed
    memos = [JsonlMemo(run.run_dir / MEASUREMENTS_FILE) for run in runs]
    evaluator = _Evaluator(runs, collectors, eval_episodes, base_seed, epsilon, levels, memos)
    share = math.ceil(transitions / len(runs))  # each run's part of every dataset
    with progress_display(console, "") as progress:
        total = 2 * sum(len(run.steps) for run in runs) * eval_episodes
        task = progress.add_task("evaluate checkpoints (episodes)", total=total, stats="")
        candidates = evaluator.checkpoints(lambda: progress.advance(task, eval_episodes))
        if evaluator.scoring == "return":
            progress.update(task, total=total + eval_episodes)
            if (evaluator.best_return or 0.0) <= (evaluator.random_return or 0.0):
                console.print("[yellow]no checkpoint beats the uniform-random policy's mean return: "
                              "the quality levels cannot be told apart")
        atomic_write_json(vault / EVALUATIONS_FILE, {
            **settings,
            "seed": base_seed + EVAL_SEED,
            **evaluator.scoring_metadata(),
            "evaluations": [asdict(b) for b in candidates],
        })
        per_run = [[b for b in candidates if b.run == r] for r in range(len(runs))]
        # The medium policies serve the medium level and bound replay; chosen once, only if needed.
        needs_medium = levels.medium in todo or levels.replay in todo
        medium = ([choose_behaviour(levels.medium, per_run[r], evaluator) for r in range(len(runs))]
                  if needs_medium else [])

        def collect(uid: str, make_part: Callable[[int, Callable[[int], None]], tuple[CollectedEpisodes, dict]]
                    ) -> tuple[CollectedEpisodes, dict[str, Any]]:
            """Every run's part of dataset `uid`, merged, and the metadata naming the parts."""
            bar = progress.add_task(f"collect {uid} (transitions)", total=share * len(runs), stats="")
            parts, sources = [], []
            for r in range(len(runs)):
                done = sum(p.dataset.num_transitions for p in parts)
                part, source = make_part(r, lambda have, done=done: progress.update(bar, completed=done + have))
                parts.append(part)
                sources.append(source)
            collected = merge_collected(parts)
            meta = {"env": runs[0].experiment.env, "sources": sources, "rollout_epsilon": epsilon}
            return collected, meta

        for uid in todo:
            if uid in levels.bands:
                def level_part(r: int, report: Callable[[int], None], uid: str = uid):
                    behaviour, note = (medium[r] if uid == levels.medium
                                       else choose_behaviour(uid, per_run[r], evaluator))
                    seed = base_seed + LEVEL_SEED + list(levels.bands).index(uid) + r * RUN_SEED_STRIDE
                    part = collect_transitions(collectors[r], runs[r].params(behaviour.env_steps), share,
                                               behaviour.mean_length, seed, behaviour.epsilon, behaviour.greedy,
                                               report)
                    return part, _source_metadata(runs[r], behaviour, note, seed, part)

                collected, meta = collect(uid, level_part)
                meta.update(_level_metadata(uid, evaluator))
            elif uid == levels.replay:
                def replay_part(r: int, report: Callable[[int], None]):
                    return _replay_of_run(runs[r], collectors[r], medium[r][0], per_run[r], share, epsilon,
                                          base_seed + REPLAY_SEED + r * RUN_SEED_STRIDE, report)

                collected, meta = collect(uid, replay_part)
                meta.update({"quality": "replay of training up to the medium policy", **evaluator.scoring_metadata()})
            else:
                members = list(levels.mixed_of)
                collected = merge_collected([_reload(vault, level) for level in members])
                sources = [{**s, "level": level} for level in members
                           for s in vault_metadata(vault, level).get("sources", [])]
                meta = {"env": runs[0].experiment.env, "quality": "union of " + ", ".join(members),
                        "mixed_of": members, "sources": sources, "rollout_epsilon": epsilon,
                        **evaluator.scoring_metadata()}
            write_vault(collected.dataset, vault, uid, {**meta, **outcome_metadata(collected)})
            write_dataset_card(vault, uid)


def _replay_of_run(
    run: SavedRun, collector: Any, medium: Behaviour, candidates: list[Behaviour], transitions: int,
    epsilon: float, seed: int, report: Callable[[int], None],
) -> tuple[CollectedEpisodes, dict[str, Any]]:
    """Sampled acting of `run`'s untrained policy (step 0) and of each of its checkpoints up
    to its medium policy, transitions spread evenly over them: training from its start, so
    the replay holds the early play even where the first checkpoint is already medium."""
    steps = [0, *(s for s in run.steps if s <= medium.env_steps)]
    lengths = {b.env_steps: b.mean_length for b in candidates if not b.greedy}
    longest = max(lengths.values(), default=1.0)  # step 0 was not evaluated: start small, top up
    parts, done = [], 0
    for index, (env_steps, quota) in enumerate(zip(steps, split_evenly(transitions, len(steps)))):
        if quota == 0:
            continue
        params = run.initial_params() if env_steps == 0 else run.params(env_steps)
        part = collect_transitions(collector, params, quota, lengths.get(env_steps, longest),
                                   seed + index, epsilon, False, lambda have, done=done: report(done + have))
        parts.append(part)
        done += part.dataset.num_transitions
    collected = merge_collected(parts)
    source = {
        **provenance(run, None, False, epsilon, seed),
        "checkpoints": steps,
        "selection": f"the untrained policy (step 0) and the checkpoints up to the medium policy "
                     f"({medium.env_steps:,} env steps)",
        "episodes": collected.dataset.num_episodes,
        "transitions": collected.dataset.num_transitions,
    }
    return collected, source


def _reload(vault: Path, uid: str) -> CollectedEpisodes:
    """A dataset of the vault with its episode returns and wins, as collected."""
    from offmarl.data.card import episode_wins

    dataset = load_vault(vault, uid)
    env = vault_metadata(vault, uid).get("env")
    return CollectedEpisodes(dataset, dataset.episode_returns().astype(np.float32), episode_wins(dataset, env))
