"""Statistics across algorithms, tasks and seeds, with rliable, and marl-eval's JSON.

Scores. Each finished run (summary.json status "completed") gives one score: its final
greedy win rate (`final_eval_greedy_win_rate`) where the environment has a win
condition, otherwise its final greedy return (`final_eval_greedy_return`). Seeds are
runs; an algorithm is an `algo`; a task is an environment, or for an offline run an
(environment, dataset) pair named `env/dataset` (`smax:3m/mixed`), so that an algorithm's
aggregate (e.g. its IQM) runs over every map and dataset it was trained on.

Returns are not normalised by guessing: win rates (and returns mapped to [0, 1] with a
`return_ranges` entry {env: (worst, best)}, score = (return - worst) / (best - worst)) are
aggregated together; raw returns are aggregated only when they are the only task, since
returns of different environments are on different scales. Raw-return tasks next to
normalised ones are left out of the aggregate with a warning (they still appear per
task), and the optimality gap of raw returns is not reported (its threshold 1 means
nothing there).

rliable needs one [runs, tasks] matrix per algorithm, i.e. the same number of runs on
every task. Where an algorithm has fewer finished seeds on some task, its matrix uses
the common number, keeping the lowest seeds of each task, and a warning names what was
left out. Different algorithms may have different numbers of runs (the probability of
improvement resamples each algorithm independently). Only tasks every algorithm has at
least one finished run on are aggregated.

The bootstrap is rliable's stratified bootstrap (runs resampled within each task) with
percentile 95% intervals. rliable draws from NumPy's global random generator, so each
computation here seeds it with `seed` and restores its previous state afterwards: the
same inputs, `reps` and `seed` give the same numbers.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from offmarl.errors import ConfigError
from offmarl.evaluation.aggregate import read_summary

DEFAULT_REPS = 5000
"""Bootstrap replications (rliable's own default is 50,000; this keeps a sweep's
re-aggregation after every cell to seconds)."""
MAX_REPS = 1_000_000
"""More replications than this only cost memory (each holds one resampled score matrix)."""
DEFAULT_SEED = 0
CONFIDENCE = 0.95
PAIR_SEPARATOR = " vs "
AGGREGATES = ("iqm", "mean", "median", "optimality_gap")


def check_reps(reps: int) -> None:
    """ConfigError unless 1 <= reps <= MAX_REPS."""
    if not 1 <= reps <= MAX_REPS:
        raise ConfigError(f"--reps={reps} is invalid: 1..{MAX_REPS:,} bootstrap replications "
                          f"(default {DEFAULT_REPS:,})")


# -- rliable ---------------------------------------------------------------------------
_RLIABLE: SimpleNamespace | None = None


def rliable_modules() -> SimpleNamespace:
    """rliable's `library`, `metrics` and `plot_utils` (imported on first use; rliable
    1.2.0 needs arch < 8, which needs pandas < 3, pinned in constraints.txt)."""
    global _RLIABLE
    if _RLIABLE is not None:
        return _RLIABLE
    import matplotlib

    matplotlib.use("Agg")
    from rliable import library, metrics, plot_utils

    _RLIABLE = SimpleNamespace(library=library, metrics=metrics, plot_utils=plot_utils)
    return _RLIABLE


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """NumPy's global generator seeded with `seed` (rliable samples from it), then restored."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _check_reps(reps: int) -> None:
    if not isinstance(reps, int) or isinstance(reps, bool) or reps < 1:
        raise ConfigError(f"reps={reps!r} is invalid: must be a positive integer")


def _aggregate_fn(with_gap: bool, gamma: float):
    m = rliable_modules().metrics

    def aggregate(x: np.ndarray) -> np.ndarray:
        values = [m.aggregate_iqm(x), m.aggregate_mean(x), m.aggregate_median(x)]
        return np.array(values + [m.aggregate_optimality_gap(x, gamma)] if with_gap else values)
    return aggregate


def aggregate_scores(matrices: dict[str, np.ndarray], reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED,
                     optimality_gap: bool = True, gamma: float = 1.0) -> dict[str, dict]:
    """IQM, mean, median and optimality gap (threshold `gamma`) of each algorithm's
    [runs, tasks] score matrix, each with its stratified-bootstrap 95% CI:
    {algo: {"iqm": {"value", "ci95": [low, high]}, ..., "runs", "tasks"}}. With
    `optimality_gap` False, that entry is None."""
    _check_reps(reps)
    rly = rliable_modules()
    out: dict[str, dict] = {}
    fn = _aggregate_fn(optimality_gap, gamma)
    for algo, matrix in matrices.items():
        x = _matrix(algo, matrix)
        with _seeded(seed):
            points, intervals = rly.library.get_interval_estimates(
                {algo: x}, fn, reps=reps, confidence_interval_size=CONFIDENCE)
        entry: dict[str, Any] = {"runs": int(x.shape[0]), "tasks": int(x.shape[1])}
        for i, name in enumerate(AGGREGATES):
            if i >= len(points[algo]):
                entry[name] = None
                continue
            low, high = intervals[algo][:, i]
            entry[name] = {"value": float(points[algo][i]), "ci95": [float(low), float(high)]}
        out[algo] = entry
    return out


def probability_of_improvement(matrices: dict[str, np.ndarray], reps: int = DEFAULT_REPS,
                               seed: int = DEFAULT_SEED) -> list[dict]:
    """P(X > Y) for every pair of algorithms (X before Y in `matrices`' order; P(Y > X) is
    1 - P(X > Y), ties counting one half): the Mann-Whitney probability that a run of X
    beats a run of Y on a task, averaged over tasks (rliable's metric, computed by
    `improvement_probability`), with its 95% CI from rliable's stratified independent
    bootstrap (each algorithm resampled on its own, so their numbers of runs may differ)."""
    _check_reps(reps)
    rly = rliable_modules()
    out = []
    for x_name, y_name in itertools.combinations(matrices, 2):
        x, y = _matrix(x_name, matrices[x_name]), _matrix(y_name, matrices[y_name])
        if x.shape[1] != y.shape[1]:
            raise ConfigError(f"{x_name} has {x.shape[1]} tasks and {y_name} {y.shape[1]}: "
                              "the probability of improvement needs the same tasks")
        key = f"{x_name}{PAIR_SEPARATOR}{y_name}"
        with _seeded(seed):
            points, intervals = rly.library.get_interval_estimates(
                {key: (x, y)}, improvement_probability, reps=reps,
                confidence_interval_size=CONFIDENCE)
        low, high = np.ravel(intervals[key])
        out.append({"x": x_name, "y": y_name, "probability": float(points[key]),
                    "ci95": [float(low), float(high)]})
    return out


def improvement_probability(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """rliable.metrics.probability_of_improvement without its per-task Mann-Whitney
    call: per task, the fraction of (run of X, run of Y) pairs where X scores higher,
    ties counting one half (that is the Mann-Whitney U of X over n_x n_y), averaged over
    tasks. The same numbers (tests compare them), many times faster inside the bootstrap."""
    x, y = np.asarray(scores_x, float)[:, None, :], np.asarray(scores_y, float)[None, :, :]
    per_pair = (x > y) + 0.5 * (x == y)
    return float(per_pair.mean(axis=(0, 1)).mean())


def _matrix(name: str, matrix: Any) -> np.ndarray:
    x = np.asarray(matrix, dtype=float)
    if x.ndim != 2 or x.size == 0:
        raise ConfigError(f"{name}: scores must be a non-empty [runs, tasks] matrix, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"{name}: scores must be finite")
    return x


def _tau_list(matrices: dict[str, np.ndarray], normalised: bool) -> np.ndarray:
    if normalised:
        return np.linspace(0.0, 1.0, 81)
    values = np.concatenate([np.ravel(m) for m in matrices.values()])
    low, high = float(values.min()), float(values.max())
    return np.linspace(low, high if high > low else low + 1.0, 81)


def plot_performance_profile(matrices: dict[str, np.ndarray], path: str | Path, reps: int = DEFAULT_REPS,
                             seed: int = DEFAULT_SEED, normalised: bool = True, title: str = "") -> None:
    """rliable's score-distribution performance profile (the fraction of runs with score
    above tau, with stratified-bootstrap 95% bands), as a PNG written atomically."""
    _check_reps(reps)
    from offmarl.utils.plotting import plt, save_figure

    rly = rliable_modules()
    x = {algo: _matrix(algo, m) for algo, m in matrices.items()}
    taus = _tau_list(x, normalised)
    with _seeded(seed):
        profiles, cis = rly.library.create_performance_profile(x, taus, reps=reps,
                                                              confidence_interval_size=CONFIDENCE)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rly.plot_utils.plot_performance_profiles(
        profiles, taus, performance_profile_cis=cis, ax=ax,
        xlabel=r"score ($\tau$)" if normalised else r"return ($\tau$)",
        ylabel=r"fraction of runs with score $> \tau$")
    ax.legend(loc="lower left")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_probability_of_improvement(pairs: list[dict], path: str | Path, title: str = "") -> None:
    """rliable's probability-of-improvement plot (one bar per pair: the 95% CI, a tick
    at the point estimate), as a PNG written atomically. With no pairs (one algorithm)
    the figure says so."""
    from offmarl.utils.plotting import plt, save_figure, save_message_figure

    if not pairs:
        save_message_figure("one algorithm: no pairs to compare", path, title)
        return
    rly = rliable_modules()
    probs = {f"{p['x']}{PAIR_SEPARATOR}{p['y']}": p["probability"] for p in pairs}
    cis = {f"{p['x']}{PAIR_SEPARATOR}{p['y']}": np.array(p["ci95"]) for p in pairs}
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.6 * len(pairs)))
    rly.plot_utils.plot_probability_of_improvement(
        probs, cis, pair_separator=PAIR_SEPARATOR, ax=ax, xticks=[0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlim(0.0, 1.0)
    fig.tight_layout()
    if title:  # above rliable's "Algorithm X / Algorithm Y" labels
        fig.subplots_adjust(top=max(0.5, 1 - 0.6 / fig.get_figheight()))
        fig.suptitle(title)
    save_figure(fig, path)


# -- runs -> scores --------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_score(summary: dict, return_ranges: dict[str, tuple[float, float]] | None = None) -> tuple[float, str] | None:
    """(score, kind) of a finished run: kind "win_rate", "normalised_return" (with a
    `return_ranges` entry for its env) or "return"; None if it has neither value."""
    if _is_number(summary.get("final_eval_greedy_win_rate")):
        return float(summary["final_eval_greedy_win_rate"]), "win_rate"
    ret = summary.get("final_eval_greedy_return")
    if not _is_number(ret):
        return None
    if return_ranges and summary.get("env") in return_ranges:
        worst, best = (float(v) for v in return_ranges[summary["env"]])
        if not best > worst:
            raise ConfigError(f"return range of {summary['env']}: best ({best}) must exceed worst ({worst})")
        return (float(ret) - worst) / (best - worst), "normalised_return"
    return float(ret), "return"


def dataset_name(spec: str) -> str:
    """A dataset's short name: the uid of a vault spec ('datasets/smax_3m.vlt:mixed' ->
    'mixed'), or a built-in dataset's name as it is."""
    path, sep, uid = str(spec).rpartition(":")
    return uid if sep and path else str(spec)


def task_of(summary: dict) -> str:
    """A run's task: its environment, with the dataset's name for an offline run."""
    env = str(summary.get("env"))
    return f"{env}/{dataset_name(summary['dataset'])}" if summary.get("dataset") else env


def collect_scores(run_dirs: list[str | Path],
                   return_ranges: dict[str, tuple[float, float]] | None = None) -> dict:
    """The finished runs' scores as {"cells": {algo: {task: [{"run", "seed", "score"}]}},
    "kinds": {task: kind}, "algos": [...], "tasks": [...], "warnings": [...]}, in the
    order the runs are given. Runs not completed (or without a score) are left out
    with a warning."""
    warnings: list[str] = []
    loaded = [(str(run), read_summary(run)) for run in run_dirs]
    cells: dict[str, dict[str, list[dict]]] = {}
    kinds: dict[str, set[str]] = {}
    algos: list[str] = []
    tasks: list[str] = []
    for run, summary in loaded:
        algo = str(summary.get("algo"))
        if summary.get("status") != "completed":
            warnings.append(f"{run} has status {summary.get('status')!r}: left out of the statistics")
            continue
        scored = run_score(summary, return_ranges)
        if scored is None:
            warnings.append(f"{run} has no final greedy win rate or return: left out of the statistics")
            continue
        task = task_of(summary)
        if algo not in algos:
            algos.append(algo)
        if task not in tasks:
            tasks.append(task)
        cells.setdefault(algo, {}).setdefault(task, []).append(
            {"run": run, "seed": summary.get("seed"), "score": scored[0]})
        kinds.setdefault(task, set()).add(scored[1])
    task_kind = {}
    for task, found in kinds.items():
        if len(found) > 1:
            warnings.append(f"{task}: runs score differently ({', '.join(sorted(found))}): left out")
            continue
        task_kind[task] = found.pop()
    tasks = [t for t in tasks if t in task_kind]
    return {"cells": cells, "kinds": task_kind, "algos": algos, "tasks": tasks, "warnings": warnings}


def _seed_order(entry: dict) -> tuple:
    seed = entry["seed"]
    return (0, seed, entry["run"]) if isinstance(seed, int) else (1, 0, entry["run"])


def score_matrices(scores: dict) -> dict:
    """`collect_scores`' result as one [runs, tasks] matrix per algorithm, over the
    tasks every algorithm has runs on and whose scores can be aggregated together (see
    the module docstring). Returns {"matrices": {algo: ndarray}, "tasks", "score_kind",
    "runs": {algo: {task: [run dirs used]}}, "warnings"}."""
    warnings: list[str] = []
    cells, kinds, algos = scores["cells"], scores["kinds"], scores["algos"]
    tasks = [t for t in scores["tasks"] if all(t in cells.get(a, {}) for a in algos)]
    for task in scores["tasks"]:
        if task not in tasks:
            missing = [a for a in algos if task not in cells.get(a, {})]
            warnings.append(f"{task}: no finished runs of {', '.join(missing)}: left out of the aggregate")
    normalised = [t for t in tasks if kinds[t] != "return"]
    raw = [t for t in tasks if kinds[t] == "return"]
    if normalised and raw:
        warnings.append(f"{', '.join(raw)}: raw returns are not comparable with win rates: left out of the "
                        "aggregate (give a return range to normalise them)")
        tasks = normalised
    elif len(raw) > 1:
        warnings.append(f"{', '.join(raw)}: raw returns of different tasks are on different scales: "
                        "no aggregate (give return ranges to normalise them)")
        tasks = []
    if not tasks:
        kind = None
    elif raw and tasks == raw:
        kind = "return"
    elif all(kinds[t] == "win_rate" for t in tasks):
        kind = "win_rate"
    else:
        kind = "normalised"
    matrices, used = {}, {}
    for algo in algos if tasks else []:
        counts = {t: len(cells[algo][t]) for t in tasks}
        n = min(counts.values())
        if len(set(counts.values())) > 1:
            dropped = [e["run"] for t in tasks for e in sorted(cells[algo][t], key=_seed_order)[n:]]
            warnings.append(f"{algo}: unequal finished seeds per task ({', '.join(f'{t} {c}' for t, c in counts.items())}): "
                            f"using {n} per task (the lowest seeds); left out: {', '.join(dropped)}")
        if n == 1:
            warnings.append(f"{algo}: one run per task: its confidence intervals have width 0")
        chosen = {t: sorted(cells[algo][t], key=_seed_order)[:n] for t in tasks}
        matrices[algo] = np.array([[chosen[t][i]["score"] for t in tasks] for i in range(n)], dtype=float)
        used[algo] = {t: [e["run"] for e in chosen[t]] for t in tasks}
    return {"matrices": matrices, "tasks": tasks, "score_kind": kind, "runs": used, "warnings": warnings}


def rliable_report(run_dirs: list[str | Path], reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED,
                   return_ranges: dict[str, tuple[float, float]] | None = None,
                   plot_dir: str | Path | None = None) -> dict:
    """rliable statistics of finished runs (e.g. for `offmarl report`): per algorithm the
    IQM, mean, median and optimality gap with 95% CIs, the probability of improvement
    of every pair, and the per-task scores. With `plot_dir`, also writes
    performance_profile.png and probability_of_improvement.png there.

    Returns {"score", "score_kind", "tasks", "algorithms": {algo: aggregates}, "pairs":
    [...], "per_task": {task: {algo: {"scores", "seeds", "runs", "kind"}}}, "runs_used",
    "bootstrap": {"reps", "seed", "confidence", "method"}, "warnings"}. Raises
    ConfigError for a missing or unreadable summary.json or a bad `reps`."""
    _check_reps(reps)
    if not run_dirs:
        raise ConfigError("no run directories given")
    scores = collect_scores(run_dirs, return_ranges)
    built = score_matrices(scores)
    matrices, kind = built["matrices"], built["score_kind"]
    warnings = scores["warnings"] + built["warnings"]
    algorithms = aggregate_scores(matrices, reps, seed, optimality_gap=kind != "return") if matrices else {}
    pairs = probability_of_improvement(matrices, reps, seed) if len(matrices) > 1 else []
    if plot_dir is not None:
        title = f"{', '.join(built['tasks'])}" if built["tasks"] else "no aggregate"
        if matrices:
            plot_performance_profile(matrices, Path(plot_dir) / "performance_profile.png", reps, seed,
                                     normalised=kind != "return", title=title)
        else:
            from offmarl.utils.plotting import save_message_figure

            save_message_figure("no finished runs to aggregate", Path(plot_dir) / "performance_profile.png", title)
        plot_probability_of_improvement(pairs, Path(plot_dir) / "probability_of_improvement.png", title=title)
    per_task = {
        task: {algo: {"kind": scores["kinds"][task],
                      "scores": [e["score"] for e in scores["cells"][algo][task]],
                      "seeds": [e["seed"] for e in scores["cells"][algo][task]],
                      "runs": [e["run"] for e in scores["cells"][algo][task]]}
               for algo in scores["algos"] if task in scores["cells"].get(algo, {})}
        for task in scores["tasks"]}
    return {
        "score": SCORE_TEXT.get(kind, "none"),
        "score_kind": kind,
        "tasks": built["tasks"],
        "algorithms": algorithms,
        "pairs": pairs,
        "per_task": per_task,
        "runs_used": built["runs"],
        "bootstrap": {"method": "stratified bootstrap (rliable), percentile intervals", "reps": reps,
                      "seed": seed, "confidence": CONFIDENCE},
        "warnings": warnings,
    }


def format_aggregate(stats: dict | None) -> list[str]:
    """`rliable_report`'s aggregates and probabilities of improvement as Markdown lines
    (tables read as well in a terminal), then its warnings."""
    lines: list[str] = []
    if not stats or not stats["algorithms"]:
        lines.append("No aggregate yet (no finished runs on tasks every algorithm has).")
    else:
        boot = stats["bootstrap"]
        lines += [f"Score: {stats['score']}; tasks: {', '.join(stats['tasks'])}. Point estimate "
                  f"[95% CI], stratified bootstrap over runs within each task, {boot['reps']:,} "
                  f"replications, seed {boot['seed']}.", "",
                  "| algorithm | runs x tasks | IQM | mean | median | optimality gap |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for algo, agg in stats["algorithms"].items():
            cells = [("n/a" if agg[k] is None else f"{agg[k]['value']:.3f} [{agg[k]['ci95'][0]:.3f}, "
                      f"{agg[k]['ci95'][1]:.3f}]") for k in AGGREGATES]
            lines.append(f"| {algo} | {agg['runs']} x {agg['tasks']} | {' | '.join(cells)} |")
        if stats["pairs"]:
            lines += ["", "| X | Y | P(X > Y) [95% CI] |", "| --- | --- | --- |"]
            for p in stats["pairs"]:
                lines.append(f"| {p['x']} | {p['y']} | {p['probability']:.3f} [{p['ci95'][0]:.3f}, "
                             f"{p['ci95'][1]:.3f}] |")
    warnings = (stats or {}).get("warnings", [])
    if warnings:
        lines += ["", "Warnings:", ""] + [f"* {w}" for w in warnings]
    return lines


SCORE_TEXT = {
    "win_rate": "final greedy win rate",
    "normalised": "final greedy win rate, or final greedy return mapped to [0, 1] by its return range",
    "return": "final greedy return (raw, one task)",
}


# -- marl-eval's JSON ------------------------------------------------------------------
def split_env(env: str) -> tuple[str, str]:
    """marl-eval's (env_name, task_name): 'smax:3m' -> ('smax', '3m'); 'bridge' ->
    ('bridge', 'bridge'); 'matrix:/a/game.json' -> ('matrix', 'game')."""
    family, sep, scenario = env.partition(":")
    if not sep:
        return env, env
    if scenario.endswith(".json"):
        scenario = Path(scenario).stem
    return family, scenario


def marl_eval_task(summary: dict) -> tuple[str, str]:
    """marl-eval's (env_name, task_name) of a run: `split_env` of its environment, with
    the dataset's name appended for an offline run ('smax', '3m/mixed')."""
    env_name, task = split_env(str(summary.get("env")))
    return env_name, f"{task}/{dataset_name(summary['dataset'])}" if summary.get("dataset") else task


def _episode_values(record: dict, prefix: str, quantity: str) -> list[float] | None:
    """The per-episode list of `quantity` (win_rate -> `<prefix>wins`, return ->
    `<prefix>returns`) if the record holds it, else a one-element list of the mean."""
    per_episode = record.get(f"{prefix}{'wins' if quantity == 'win_rate' else 'returns'}")
    if isinstance(per_episode, list) and per_episode and all(_is_number(v) for v in per_episode):
        return [float(v) for v in per_episode]
    mean = record.get(f"{prefix}{quantity}")
    return [float(mean)] if _is_number(mean) else None


def _metrics_of(record: dict, prefix: str) -> dict[str, list[float]]:
    out = {}
    for quantity in ("win_rate", "return"):
        values = _episode_values(record, prefix, quantity)
        if values is not None:
            out[quantity] = values
    return out


def marl_eval_results(run_dirs: list[str | Path]) -> dict:
    """marl-eval's raw-results JSON of the completed runs:
    {env_name: {task_name: {algo: {run_id: {"step_<i>": {"step_count": int, "win_rate":
    [...], "return": [...]}, ..., "absolute_metrics": {"win_rate": [...], "return": [...]}}}}}}.

    step_<i> is the i-th periodic evaluation in metrics.jsonl (step_count: its env steps
    online, its training iterations offline); absolute_metrics is the final evaluation
    of summary.json. An offline run's task_name carries its dataset (`3m/mixed`). Values
    are the greedy evaluation's per-episode returns and wins (0 or 1) where the records
    hold them (`eval_greedy_returns`, `eval_greedy_wins`), else a one-element list
    holding the evaluation's mean. win_rate is absent for environments without a win
    condition. run_id is seed_<s>, or the run directory's
    name where one algorithm has two runs of the same seed on a task."""
    from offmarl.utils.files import read_jsonl

    loaded = [(Path(run), read_summary(run)) for run in run_dirs]
    done = [(run, s) for run, s in loaded if s.get("status") == "completed"]
    seen: dict[tuple, list[Any]] = {}
    for _, s in done:
        seen.setdefault((marl_eval_task(s), s.get("algo")), []).append(s.get("seed"))
    out: dict[str, dict] = {}
    for run, summary in done:
        env_name, task = marl_eval_task(summary)
        algo, seed = str(summary.get("algo")), summary.get("seed")
        run_id = f"seed_{seed}" if seen[((env_name, task), summary.get("algo"))].count(seed) == 1 else run.name
        step_key = "env_steps" if "env_steps" in summary else "steps"
        entry: dict[str, Any] = {}
        for i, record in enumerate(r for r in read_jsonl(run / "metrics.jsonl") if step_key in r):
            entry[f"step_{i}"] = {"step_count": int(record[step_key]), **_metrics_of(record, "eval_greedy_")}
        entry["absolute_metrics"] = _metrics_of(summary, "final_eval_greedy_")
        out.setdefault(env_name, {}).setdefault(task, {}).setdefault(algo, {})[run_id] = entry
    return out


def write_marl_eval_json(run_dirs: list[str | Path], path: str | Path) -> dict:
    """Write `marl_eval_results(run_dirs)` atomically to `path`; returns it."""
    from offmarl.utils.files import atomic_write_json

    results = marl_eval_results(run_dirs)
    atomic_write_json(path, results)
    return results
