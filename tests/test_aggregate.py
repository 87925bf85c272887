"""Seed aggregation: Student-t 95% intervals and the `offmarl report` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offmarl.cli import main
from offmarl.evaluation.aggregate import mean_ci


def test_mean_ci_matches_the_t_table() -> None:
    mean, half = mean_ci([0.8, 0.9, 1.0])
    # t_{0.975, 2} = 4.302653; sample std = 0.1; n = 3.
    assert mean == pytest.approx(0.9)
    assert half == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-5)
    assert mean_ci([0.5]) == (0.5, 0.0)


def test_report_aggregates_summaries(tmp_path: Path, capsys) -> None:
    for seed, win in enumerate([0.8, 0.9, 1.0]):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"algo": "matrace", "env": "smax:3m", "seed": seed,
                                                      "status": "completed", "final_eval_greedy_win_rate": win}))
    assert main(["report", "--json", *(str(tmp_path / f"s{i}") for i in range(3))]) == 0
    group = json.loads(capsys.readouterr().out)["groups"][0]
    assert group["seeds"] == [0, 1, 2]
    assert group["metrics"]["final_eval_greedy_win_rate"]["mean"] == pytest.approx(0.9)
    assert main(["report", str(tmp_path)]) == 2
    assert "has no summary.json" in capsys.readouterr().err
