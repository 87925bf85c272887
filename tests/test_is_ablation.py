"""The ablation script's table: a diverged run is an outcome of its arm, scored by its last evaluation."""

from __future__ import annotations

import json

import pytest
from conftest import import_script


@pytest.fixture(scope="module")
def is_ablation():
    yield from import_script("benchmarks", "is_ablation")


def summary(win_rate: float, status: str = "completed", lag: float = 1.0) -> dict:
    return {"eval_win_rate": win_rate, "status": status, "lag_mean": lag}


def test_a_diverged_run_counts_with_its_last_evaluation(is_ablation, tmp_path):
    with_is = is_ablation.describe("simulated workers 1", "with IS", [summary(1.0), summary(0.9), summary(0.8)], None)
    without = is_ablation.describe("simulated workers 1", "without IS",
                                   [summary(0.0, "diverged"), summary(0.0, "diverged"), summary(0.96)], None)
    assert without["diverged"] == 2 and with_is["diverged"] == 0
    assert without["win_rate_mean"] == pytest.approx(0.32)
    assert with_is["measured_lag_mean"] == pytest.approx(1.0)
    is_ablation.write_outputs([with_is, without], tmp_path,
                              {"env": "smax:2s3z", "env_steps": 5_000_000, "overrides": {}})
    row = (tmp_path / "is_ablation.md").read_text().splitlines()[2]
    assert row == ("| simulated workers 1 | 1.0 | 0.90 ± 0.10 (n=3) | 0.32 ± 0.55 (n=3, 2 diverged) | +0.58 |")
    assert json.loads((tmp_path / "is_ablation.json").read_text())["rows"][1]["diverged"] == 2
    assert (tmp_path / "is_ablation.png").stat().st_size > 0


def test_merged_rows_join_in_worker_order_and_a_different_design_is_refused(is_ablation, tmp_path, capsys):
    info = {"env": "smax:3m", "env_steps": 8_000_000, "seeds": 3, "overrides": {}}
    old = [is_ablation.describe(f"simulated workers {n}", "with IS", [summary(w, lag=n)], None)
           for n, w in ((32, 0.92), (1, 0.91))]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "is_ablation.json").write_text(json.dumps({**info, "rows": old}))
    rows = is_ablation.merged_rows([str(tmp_path / "old")], info)
    new = is_ablation.describe("simulated workers 8", "with IS", [summary(0.86, lag=8)], None)
    ordered = sorted(rows + [new], key=is_ablation.setting_order)
    assert [r["setting"] for r in ordered] == [f"simulated workers {n}" for n in (1, 8, 32)]
    for key, value, problem in (("env_steps", 2_000_000, "its env_steps is 8000000, this run's 2000000"),
                                ("overrides", {"lr": 5e-4}, "its overrides is {}, this run's {'lr': 0.0005}"),
                                (None, None, "no is_ablation.json there")):
        source = str(tmp_path / ("old" if key else "missing"))
        with pytest.raises(SystemExit) as stop:
            is_ablation.merged_rows([source], {**info, key: value} if key else info)
        assert stop.value.code == 2
        assert capsys.readouterr().err.splitlines() == [f"error: --merge {source!r}: {problem}"]
