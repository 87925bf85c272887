"""`report_runs` / `format_report`: grouping, unfinished runs, Student-t intervals, text table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offmarl.errors import ConfigError
from offmarl.evaluation.aggregate import format_report, report_runs

T_975_2 = 4.302653  # Student t, 97.5th percentile, 2 degrees of freedom (from a t table)


def online(seed: int, env: str = "smax:3m", status: str = "completed", win: float = 0.9,
           wall: float = 400.0, algo: str = "matrace") -> dict:
    summary = {"algo": algo, "env": env, "seed": seed, "status": status, "num_envs": 128,
               "env_steps": 1_000_000, "wall_seconds": wall,
               "env_steps_per_second": round(1_000_000 / wall, 1), "eval_mode": "greedy"}
    if status == "completed":
        summary.update(final_eval_greedy_win_rate=win, final_eval_sampled_win_rate=win - 0.05,
                       final_eval_greedy_return=2 * win, final_eval_sampled_return=2 * win - 0.1)
    return summary


def write_runs(root: Path, summaries: dict[str, dict]) -> list[str]:
    runs = []
    for name, summary in summaries.items():
        run = root / name
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps(summary))
        runs.append(str(run))
    return runs


def test_two_maps_are_two_groups_never_averaged(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, {"a0": online(0, "smax:3m", win=0.9),
                                 "b0": online(0, "smax:2s3z", win=0.5),
                                 "a1": online(1, "smax:3m", win=0.8),
                                 "b1": online(1, "smax:2s3z", win=0.3)})
    report = report_runs(runs)
    groups = {g["env"]: g for g in report["groups"]}
    assert list(groups) == ["smax:3m", "smax:2s3z"]
    three_m, two_s = groups["smax:3m"], groups["smax:2s3z"]
    assert three_m["runs"] == [runs[0], runs[2]] and three_m["seeds"] == [0, 1]
    assert three_m["metrics"]["final_eval_greedy_win_rate"]["mean"] == pytest.approx(0.85)
    assert two_s["metrics"]["final_eval_greedy_win_rate"]["mean"] == pytest.approx(0.4)
    assert all(g["metrics"]["final_eval_greedy_win_rate"]["n"] == 2 for g in report["groups"])
    assert any(w.startswith("2 groups:") and "separately" in w for w in report["warnings"])
    text = format_report(report)
    assert "matrace on smax:3m" in text and "matrace on smax:2s3z" in text


def test_offline_runs_group_by_dataset(tmp_path: Path) -> None:
    def offline(seed: int, dataset: str, win: float) -> dict:
        return {"algo": "bc", "env": "smax:3m", "dataset": dataset, "seed": seed, "status": "completed",
                "steps": 20_000, "wall_seconds": 60.0, "updates_per_second": 1500.0 + seed,
                "final_eval_greedy_win_rate": win, "final_eval_greedy_return": 1.5,
                "final_eval_sampled_return": 1.4}
    runs = write_runs(tmp_path, {"g0": offline(0, "good", 0.7), "m0": offline(0, "medium", 0.5),
                                 "g1": offline(1, "good", 0.8), "o0": online(0)})
    report = report_runs(runs)
    labels = [g["label"] for g in report["groups"]]
    assert labels == ["bc on smax:3m [good]", "bc on smax:3m [medium]", "matrace on smax:3m"]
    good = report["groups"][0]
    assert good["dataset"] == "good" and report["groups"][2]["dataset"] is None
    assert good["metrics"]["updates_per_second"]["values"] == [1500.0, 1501.0]
    assert "env_steps_per_second" not in good["metrics"]          # offline runs lack it
    assert "updates_per_second" not in report["groups"][2]["metrics"]
    assert report["warnings"][0].startswith("3 groups:")
    assert "bc on smax:3m [good]" in format_report(report)


def test_interrupted_run_is_flagged_and_left_out(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, {"s0": online(0, win=0.9, wall=400.0),
                                 "s1": online(1, win=0.7, wall=420.0),
                                 "s2": online(2, status="interrupted", wall=100.0),
                                 "s3": online(3, status="diverged", wall=50.0)})
    report = report_runs(runs)
    [group] = report["groups"]
    assert group["runs"] == runs[:2] and group["seeds"] == [0, 1]
    assert group["unfinished"] == [{"run": runs[2], "seed": 2, "status": "interrupted"},
                                   {"run": runs[3], "seed": 3, "status": "diverged"}]
    # Every metric counts the same two completed runs, also those the unfinished runs do have.
    assert {name: m["n"] for name, m in group["metrics"].items()} == {
        name: 2 for name in ("final_eval_greedy_win_rate", "final_eval_sampled_win_rate",
                             "final_eval_greedy_return", "final_eval_sampled_return",
                             "wall_seconds", "env_steps_per_second")}
    assert group["metrics"]["wall_seconds"]["values"] == [400.0, 420.0]
    assert group["metrics"]["wall_seconds"]["mean"] == pytest.approx(410.0)
    assert f"{runs[2]} is interrupted: left out of the statistics" in report["warnings"]
    assert any(w.startswith(runs[3]) and "left out" in w for w in report["warnings"])
    text = format_report(report)
    assert runs[2] in text and "interrupted" in text and "diverged" in text


def test_one_run_has_no_interval(tmp_path: Path) -> None:
    report = report_runs(write_runs(tmp_path, {"s0": online(0, win=0.75)}))
    win = report["groups"][0]["metrics"]["final_eval_greedy_win_rate"]
    assert win["n"] == 1 and win["mean"] == pytest.approx(0.75)
    assert win["ci95"] is None
    json.dumps(report)  # JSON-ready: the missing interval is null, not 0.0
    row = next(line for line in format_report(report).splitlines()
               if line.strip().startswith("final_eval_greedy_win_rate"))
    assert "0.750 ± n/a" in row and "s0 0.750" in row
    assert "0.000" not in row


def test_t_interval_matches_a_hand_computation(tmp_path: Path) -> None:
    runs = write_runs(tmp_path, {f"s{i}": online(i, win=w) for i, w in enumerate([0.9, 0.8, 1.0])})
    win = report_runs(runs)["groups"][0]["metrics"]["final_eval_greedy_win_rate"]
    assert win["values"] == [0.9, 0.8, 1.0] and win["seeds"] == [0, 1, 2] and win["n"] == 3
    assert win["mean"] == pytest.approx(0.9)
    assert win["ci95"] == pytest.approx(T_975_2 * 0.1 / 3**0.5, rel=1e-5)  # sample std 0.1


def test_table_layout(tmp_path: Path) -> None:
    wins = [0.9, 0.8, 1.0]
    runs = write_runs(tmp_path, {f"s{i}": online(i, win=w, wall=400.0 + i) for i, w in enumerate(wins)})
    runs += write_runs(tmp_path, {"x": online(7, status="interrupted")})
    text = format_report(report_runs(runs))
    lines = text.splitlines()
    assert lines[0] == "matrace on smax:3m: 3 completed runs (seeds 0, 1, 2)"
    row = next(line for line in lines if line.strip().startswith("final_eval_greedy_win_rate"))
    assert row.split()[1:] == ["0.900", "±", "0.248", "3", "s0", "0.900", "s1", "0.800", "s2", "1.000"]
    assert "warnings:" in lines
    assert any("is interrupted: left out of the statistics" in line for line in lines)
    # The table wraps; the lines that name a run directory are as long as its path.
    assert max(len(line) for line in lines if str(tmp_path) not in line) < 100


def test_many_seeds_wrap_under_100_columns(tmp_path: Path) -> None:
    summaries = {f"s{i}": online(i, win=0.5 + i / 100, wall=12345.6 + i) for i in range(20)}
    runs = write_runs(tmp_path, summaries)
    lines = format_report(report_runs(runs)).splitlines()
    assert max(map(len, lines)) < 100
    assert sum(f"s{i} " in " ".join(lines) for i in range(20)) == 20


def test_missing_or_bad_summary_is_a_config_error(tmp_path: Path) -> None:
    good = write_runs(tmp_path, {"s0": online(0)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty.*has no summary.json") as err:
        report_runs(good + [str(tmp_path / "empty")])
    assert "\n" not in str(err.value)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text('{"algo": "matrace",\n "env": ')
    with pytest.raises(ConfigError, match="broken") as err:
        report_runs(good + [str(tmp_path / "broken")])
    assert "\n" not in str(err.value)


def test_inconsistent_groups_are_warned_about(tmp_path: Path) -> None:
    short = {**online(1), "env_steps": 500_000}
    no_win = {k: v for k, v in online(2).items() if k != "final_eval_greedy_win_rate"}
    runs = write_runs(tmp_path, {"s0": online(0), "s1": short, "s2": no_win, "again": online(0)})
    report = report_runs(runs + [runs[0]])
    group = report["groups"][0]
    assert group["metrics"]["final_eval_greedy_win_rate"]["n"] == 3
    assert group["metrics"]["final_eval_greedy_win_rate"]["seeds"] == [0, 1, 0]
    warnings = " | ".join(report["warnings"])
    assert "given more than once" in warnings
    assert "differ in env_steps" in warnings
    assert "seed 0 appears more than once" in warnings
    assert "final_eval_greedy_win_rate is missing from 1 of 4 completed runs" in warnings


def test_report_command_gives_the_sweeps_rliable_aggregate(tmp_path: Path, capsys) -> None:
    from offmarl.cli import main
    from offmarl.evaluation.statistics import rliable_report

    wins = {("matrace", "smax:3m"): [0.9, 0.8, 1.0], ("mappo", "smax:3m"): [0.7, 0.6, 0.9],
            ("matrace", "smax:2s3z"): [1.0, 0.9, 0.95], ("mappo", "smax:2s3z"): [0.2, 0.95, 0.5]}
    runs = write_runs(tmp_path, {f"{a}_{e[5:]}_{s}": online(s, e, win=w, algo=a)
                                 for (a, e), ws in wins.items() for s, w in enumerate(ws)})
    assert main(["report", "--json", "--reps", "300", *runs]) == 0
    aggregate = json.loads(capsys.readouterr().out)["aggregate"]
    direct = rliable_report(runs, reps=300)
    assert aggregate["algorithms"] == direct["algorithms"] and aggregate["pairs"] == direct["pairs"]
    # 6 scores per algorithm: the IQM (a 25% trimmed mean) drops the lowest and the highest.
    matrace = sorted(w for (a, _), ws in wins.items() if a == "matrace" for w in ws)
    assert aggregate["algorithms"]["matrace"]["iqm"]["value"] == pytest.approx(sum(matrace[1:5]) / 4)
    assert aggregate["pairs"][0]["x"] == "matrace" and aggregate["pairs"][0]["probability"] > 0.5
    assert main(["report", "--reps", "300", *runs]) == 0
    text = capsys.readouterr().out
    assert "aggregate over tasks (rliable" in text and "| matrace | 3 x 2 |" in text
    # The sweep's suite table, over runs of any sweeps: ours beside the published figures.
    assert "| map | matrace | mappo | JaxMARL IPPO |" in text
    assert "| smax:2s3z | 0.950 ± 0.124 (3) | 0.550 ± 0.938 (3) | 0.90 | 1.00 | 0.89 | 0.95 | 99/94/98 |" in text
    assert main(["report", "--reps", "0", *runs]) == 2
