"""rliable statistics across algorithms and tasks, and marl-eval's JSON, on hand-made
score matrices and run directories (offmarl/evaluation/statistics.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from offmarl.errors import ConfigError
from offmarl.evaluation import statistics as st

# 4 runs x 3 tasks; one score above 1 (clipped by the optimality gap).
SCORES = np.array([[0.0, 0.1, 0.9],
                   [0.2, 0.3, 1.2],
                   [0.4, 0.0, 0.8],
                   [1.0, 0.6, 0.5]])


def test_aggregates_match_a_direct_computation_and_are_deterministic() -> None:
    result = st.aggregate_scores({"a": SCORES}, reps=300, seed=7)["a"]
    flat = np.sort(SCORES.ravel())
    # IQM: the mean of the middle half of the 12 pooled scores (drop 3 each side).
    assert result["iqm"]["value"] == pytest.approx(flat[3:9].mean())
    assert result["iqm"]["value"] == pytest.approx(scipy_stats.trim_mean(SCORES, 0.25, axis=None))
    assert result["mean"]["value"] == pytest.approx(SCORES.mean())
    assert result["median"]["value"] == pytest.approx(np.median(SCORES.mean(axis=0)))
    assert result["optimality_gap"]["value"] == pytest.approx(1 - np.minimum(SCORES, 1).mean())
    assert (result["runs"], result["tasks"]) == (4, 3)
    for name in st.AGGREGATES:
        low, high = result[name]["ci95"]
        assert low <= result[name]["value"] + 1e-12 and result[name]["value"] - 1e-12 <= high
        assert low < high  # 4 different runs per task: a real interval
    # The same seed gives the same intervals (rliable draws from NumPy's global
    # generator, which is seeded and then restored); another seed moves them.
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    assert st.aggregate_scores({"a": SCORES}, reps=300, seed=7)["a"] == result
    assert np.random.random() == before
    other = st.aggregate_scores({"a": SCORES}, reps=300, seed=8)["a"]
    assert other["iqm"]["ci95"] != result["iqm"]["ci95"]


def test_constant_scores_have_zero_width_intervals() -> None:
    result = st.aggregate_scores({"a": np.full((3, 2), 0.25)}, reps=50)["a"]
    assert result["iqm"] == {"value": 0.25, "ci95": [0.25, 0.25]}
    assert result["optimality_gap"]["value"] == pytest.approx(0.75)
    raw = st.aggregate_scores({"a": np.full((3, 2), 5.0)}, reps=50, optimality_gap=False)["a"]
    assert raw["optimality_gap"] is None and raw["mean"]["value"] == 5.0


def test_probability_of_improvement_of_separated_and_equal_algorithms() -> None:
    high = np.array([[0.9, 0.8], [0.95, 0.85], [1.0, 0.9]])
    low = np.array([[0.1, 0.2], [0.3, 0.1]])  # fewer runs: resampled independently
    pairs = st.probability_of_improvement({"high": high, "low": low, "same": high.copy()}, reps=300)
    by = {(p["x"], p["y"]): p for p in pairs}
    assert list(by) == [("high", "low"), ("high", "same"), ("low", "same")]
    assert by["high", "low"]["probability"] == 1.0 and by["high", "low"]["ci95"] == [1.0, 1.0]
    assert by["low", "same"]["probability"] == 0.0
    assert by["high", "same"]["probability"] == pytest.approx(0.5)
    low_ci, high_ci = by["high", "same"]["ci95"]
    assert low_ci < 0.5 < high_ci
    with pytest.raises(ConfigError, match="same tasks"):
        st.probability_of_improvement({"a": high, "b": low[:, :1]}, reps=10)


def test_improvement_probability_equals_rliables_metric() -> None:
    rly = st.rliable_modules()
    rng = np.random.default_rng(0)
    for _ in range(100):
        nx, ny, tasks = rng.integers(1, 6), rng.integers(1, 6), rng.integers(1, 4)
        x = rng.integers(0, 4, (nx, tasks)).astype(float)  # small integers: many ties
        y = rng.integers(0, 4, (ny, tasks)).astype(float)
        assert st.improvement_probability(x, y) == pytest.approx(rly.metrics.probability_of_improvement(x, y))


def test_bad_matrices_and_reps_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[runs, tasks\] matrix"):
        st.aggregate_scores({"a": np.ones(3)}, reps=10)
    with pytest.raises(ConfigError, match="finite"):
        st.aggregate_scores({"a": np.array([[np.nan]])}, reps=10)
    with pytest.raises(ConfigError, match="reps=0"):
        st.aggregate_scores({"a": np.ones((2, 2))}, reps=0)


# -- run directories ----------------------------------------------------------------------
def make_run(root: Path, algo: str, env: str, seed: int, win: float | None, ret: float = 1.0,
             status: str = "completed", records: list[dict] | None = None, dataset: str | None = None,
             episodes: bool = False, step_key: str = "env_steps") -> Path:
    run = root / f"{algo}_{env.replace(':', '_')}_s{seed}{'_' + dataset if dataset else ''}"
    run.mkdir(parents=True)
    summary = {"algo": algo, "env": env, "seed": seed, "status": status, step_key: 200,
               "final_eval_greedy_win_rate": win, "final_eval_greedy_return": ret}
    if dataset:
        summary["dataset"] = dataset
    if episodes:
        summary["final_eval_greedy_returns"] = [ret, ret]
        if win is not None:
            summary["final_eval_greedy_wins"] = [1, 0]
    (run / "summary.json").write_text(json.dumps(summary))
    lines = records if records is not None else [
        {"env_steps": 100, "eval_greedy_win_rate": win, "eval_greedy_return": ret / 2},
        {"env_steps": 200, "eval_greedy_win_rate": win, "eval_greedy_return": ret}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


def test_unequal_seeds_use_the_common_number_and_say_so(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "a", "smax:3m", s, w) for s, w in ((2, 0.9), (0, 0.5), (1, 0.7))]
    runs += [make_run(tmp_path, "a", "smax:8m", s, w) for s, w in ((0, 0.4), (1, 0.6))]
    runs += [make_run(tmp_path, "b", "smax:3m", 0, 0.1), make_run(tmp_path, "b", "smax:8m", 0, 0.2)]
    runs.append(make_run(tmp_path, "b", "smax:8m", 1, 0.3, status="interrupted"))
    built = st.score_matrices(st.collect_scores(runs))
    assert built["tasks"] == ["smax:3m", "smax:8m"] and built["score_kind"] == "win_rate"
    # a: 3 seeds on 3m, 2 on 8m -> 2 per task, the lowest seeds (0 and 1) of 3m.
    np.testing.assert_array_equal(built["matrices"]["a"], [[0.5, 0.4], [0.7, 0.6]])
    np.testing.assert_array_equal(built["matrices"]["b"], [[0.1, 0.2]])
    warnings = " | ".join(built["warnings"])
    assert "a: unequal finished seeds per task (smax:3m 3, smax:8m 2): using 2 per task" in warnings
    assert f"left out: {runs[0]}" in warnings
    assert "b: one run per task" in warnings
    report = st.rliable_report(runs, reps=100)
    assert any("status 'interrupted'" in w for w in report["warnings"])
    assert report["algorithms"]["a"]["mean"]["value"] == pytest.approx(0.55)
    assert report["pairs"][0]["x"] == "a" and report["pairs"][0]["probability"] == 1.0


def test_returns_are_not_mixed_with_win_rates_unless_normalised(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, algo, "smax:3m", 0, w) for algo, w in (("a", 0.8), ("b", 0.4))]
    runs += [make_run(tmp_path, algo, "mpe:simple_spread", 0, None, r) for algo, r in (("a", -20.0), ("b", -40.0))]
    report = st.rliable_report(runs, reps=50)
    assert report["tasks"] == ["smax:3m"] and report["score_kind"] == "win_rate"
    assert any("mpe:simple_spread: raw returns are not comparable" in w for w in report["warnings"])
    assert report["per_task"]["mpe:simple_spread"]["a"]["scores"] == [-20.0]
    normalised = st.rliable_report(runs, reps=50, return_ranges={"mpe:simple_spread": (-60.0, 0.0)})
    assert normalised["tasks"] == ["smax:3m", "mpe:simple_spread"] and normalised["score_kind"] == "normalised"
    assert normalised["algorithms"]["a"]["mean"]["value"] == pytest.approx((0.8 + 40 / 60) / 2)
    only_returns = st.rliable_report(runs[2:], reps=50)
    assert only_returns["score_kind"] == "return" and only_returns["algorithms"]["a"]["optimality_gap"] is None
    two_return_tasks = runs[2:] + [make_run(tmp_path, "a", "mpe:simple_reference", 0, None, -5.0),
                                   make_run(tmp_path, "b", "mpe:simple_reference", 0, None, -6.0)]
    none = st.rliable_report(two_return_tasks, reps=50)
    assert none["algorithms"] == {} and any("different scales" in w for w in none["warnings"])


def test_a_missing_summary_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no summary.json"):
        st.rliable_report([tmp_path], reps=10)
    with pytest.raises(ConfigError, match="no run directories"):
        st.rliable_report([], reps=10)


def test_marl_eval_json_from_run_directories(tmp_path: Path) -> None:
    per_episode = [{"env_steps": 128, "eval_greedy_win_rate": 0.5, "eval_greedy_return": 1.5,
                    "eval_greedy_wins": [1, 0], "eval_greedy_returns": [2.0, 1.0]},
                   {"env_steps": 256, "eval_greedy_win_rate": 1.0, "eval_greedy_return": 2.0,
                    "eval_greedy_wins": [1, 1], "eval_greedy_returns": [2.0, 2.0]}]
    runs = [make_run(tmp_path, "matrace", "smax:3m", 0, 1.0, 2.0, records=per_episode, episodes=True),
            make_run(tmp_path, "matrace", "smax:3m", 1, 0.5, 1.0),
            make_run(tmp_path, "bc", "matrix:xor", 3, None, 1.0,
                     records=[{"steps": 20, "eval_greedy_win_rate": None, "eval_greedy_return": -2.0}],
                     step_key="steps"),
            make_run(tmp_path, "matrace", "smax:3m", 2, 0.0, status="interrupted")]
    out = st.write_marl_eval_json(runs, tmp_path / "marl_eval.json")
    assert json.loads((tmp_path / "marl_eval.json").read_text()) == out
    assert set(out) == {"smax", "matrix"}
    seeds = out["smax"]["3m"]["matrace"]
    assert set(seeds) == {"seed_0", "seed_1"}  # the interrupted run is left out
    assert seeds["seed_0"] == {
        "step_0": {"step_count": 128, "win_rate": [1.0, 0.0], "return": [2.0, 1.0]},
        "step_1": {"step_count": 256, "win_rate": [1.0, 1.0], "return": [2.0, 2.0]},
        "absolute_metrics": {"win_rate": [1.0, 0.0], "return": [2.0, 2.0]}}
    # Without per-episode lists: one-element lists holding the evaluation's mean.
    assert seeds["seed_1"]["step_0"] == {"step_count": 100, "win_rate": [0.5], "return": [0.5]}
    assert seeds["seed_1"]["absolute_metrics"] == {"win_rate": [0.5], "return": [1.0]}
    # No win condition: no win_rate; offline runs count training iterations.
    assert out["matrix"]["xor"]["bc"]["seed_3"] == {"step_0": {"step_count": 20, "return": [-2.0]},
                                                    "absolute_metrics": {"return": [1.0]}}
    assert st.split_env("bridge") == ("bridge", "bridge")
    assert st.split_env("matrix:/tmp/games/g.json") == ("matrix", "g")


def test_an_offline_task_is_an_environment_and_a_dataset(tmp_path: Path) -> None:
    wins = {("bc", "good"): (0.9, 0.7), ("bc", "poor"): (0.2, 0.4),
            ("omiga", "good"): (0.8, 0.6), ("omiga", "poor"): (0.5, 0.3)}
    runs = [make_run(tmp_path, algo, "smax:3m", seed, w, dataset=f"/data/smax_3m.vlt:{data}")
            for (algo, data), ws in wins.items() for seed, w in enumerate(ws)]
    report = st.rliable_report(runs, reps=50)
    assert report["tasks"] == ["smax:3m/good", "smax:3m/poor"]
    assert list(report["algorithms"]) == ["bc", "omiga"]
    # One aggregate per algorithm over both datasets: IQM of [[0.9, 0.2], [0.7, 0.4]].
    assert report["algorithms"]["bc"]["iqm"]["value"] == pytest.approx(np.mean([0.4, 0.7]))
    assert report["per_task"]["smax:3m/poor"]["omiga"]["scores"] == [0.5, 0.3]
    tasks = st.marl_eval_results(runs)["smax"]
    assert set(tasks) == {"3m/good", "3m/poor"} and set(tasks["3m/good"]) == {"bc", "omiga"}
    assert tasks["3m/poor"]["bc"]["seed_1"]["absolute_metrics"]["win_rate"] == [0.4]
    assert st.dataset_name("02_20") == "02_20" and st.dataset_name("d/v.vlt:medium-replay") == "medium-replay"


def test_report_writes_both_plots(tmp_path: Path) -> None:
    runs = [make_run(tmp_path / "r", algo, "smax:3m", s, w) for algo, ws in (("a", (0.8, 0.9)), ("b", (0.1, 0.3)))
            for s, w in enumerate(ws)]
    report = st.rliable_report(runs, reps=50, plot_dir=tmp_path)
    for name in ("performance_profile.png", "probability_of_improvement.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["bootstrap"]["reps"] == 50 and report["pairs"][0]["probability"] == 1.0


def test_report_command_writes_the_sweeps_plots_and_marl_eval_json_into_plots_dir(tmp_path: Path, capsys) -> None:
    from offmarl.cli import main

    runs = [str(make_run(tmp_path / "r", algo, "smax:3m", s, w)) for algo, ws in (("a", (0.8, 0.9)), ("b", (0.1, 0.3)))
            for s, w in enumerate(ws)]
    plots = tmp_path / "new" / "plots"
    assert main(["report", "--reps", "50", "--plots", str(plots), *runs]) == 0
    for name in ("curves.png", "performance_profile.png", "probability_of_improvement.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((plots / "marl_eval.json").read_text()) == st.marl_eval_results(runs)

    capsys.readouterr()
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    (Path(runs[0]) / "config.json").write_text("{}")  # with metrics.jsonl: a run directory
    refused = {str(a_file): "is not a directory", runs[0] + "/plots": "is inside the run directory",
               str(tmp_path / "never") + "/p": None}
    for directory, problem in refused.items():
        bad_runs = [*runs, str(tmp_path / "not_a_run")] if problem is None else runs
        assert main(["report", "--plots", directory, *bad_runs]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and (problem is None or (problem in err and repr(directory) in err)), err
        assert not Path(directory).is_dir()  # bad input leaves nothing behind
    assert a_file.read_text() == "keep"


def test_mean_curves_average_the_seeds_at_their_common_evaluation_points(tmp_path: Path) -> None:
    from offmarl.evaluation.plots import mean_curves, plot_mean_curves

    def records(wins: list[float], steps: list[int]) -> list[dict]:
        return [{"steps": x, "eval_greedy_win_rate": w, "eval_greedy_return": 2 * w} for x, w in zip(steps, wins)]

    runs = [make_run(tmp_path, "omiga", "smax:3m", 0, 0.5, dataset="v.vlt:mixed", step_key="steps",
                     records=records([0.1, 0.3, 0.5], [10, 20, 30])),
            make_run(tmp_path, "omiga", "smax:3m", 1, 0.7, dataset="v.vlt:mixed", step_key="steps",
                     records=records([0.3, 0.7], [10, 20])),  # stopped early: only 10 and 20 are common
            make_run(tmp_path, "omiga", "smax:3m", 2, 0.0, dataset="v.vlt:mixed", status="interrupted",
                     step_key="steps", records=records([1.0], [10])),
            make_run(tmp_path, "bc", "mpe:simple_spread", 0, None, -3.0,
                     records=[{"env_steps": 5, "eval_greedy_win_rate": None, "eval_greedy_return": -4.0}]),
            make_run(tmp_path, "bc", "smax:8m", 0, 0.5, records=[])]  # finished, no periodic evaluation
    curves = mean_curves(runs)
    assert set(curves) == {"smax:3m/mixed", "mpe:simple_spread"}
    omiga = curves["smax:3m/mixed"]["omiga"]
    assert (omiga["x"], omiga["seeds"], omiga["quantity"], omiga["x_key"]) == ([10, 20], 2, "win_rate", "steps")
    np.testing.assert_allclose(omiga["mean"], [0.2, 0.5])
    # Two seeds: t(0.975, 1) x std / sqrt(2), with std = |a - b| / sqrt(2).
    np.testing.assert_allclose(omiga["ci95"], [scipy_stats.t.ppf(0.975, 1) * d / 2 for d in (0.2, 0.4)])
    bc = curves["mpe:simple_spread"]["bc"]
    assert (bc["x"], bc["mean"], bc["ci95"], bc["quantity"]) == ([5], [-4.0], [0.0], "return")
    assert plot_mean_curves(runs, tmp_path / "curves.png") == curves
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
