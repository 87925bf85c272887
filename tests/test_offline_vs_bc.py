"""experiments/offline_vs_bc.py: normalised scores from recorded anchors, Welch differences
against BC, and the return columns of the MaMuJoCo-style table (issue 14)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import import_script
from scipy import stats

ANCHORS = [-100.0, 1100.0]


@pytest.fixture(scope="module")
def offline_vs_bc():
    yield from import_script("experiments", "offline_vs_bc")


def write_run(root: Path, algo: str, seed: int, greedy: float, sampled: float, **algo_config: object) -> None:
    run = root / f"{algo}_s{seed}"
    run.mkdir(parents=True)
    dataset = "/gone/task.vlt:medium"
    (run / "summary.json").write_text(json.dumps({
        "algo": algo, "env": "mabrax:hopper_3x1", "dataset": dataset, "seed": seed, "status": "completed",
        "final_eval_greedy_return": greedy, "final_eval_sampled_return": sampled, "dataset_return_mean": 500.0,
    }))
    (run / "config.json").write_text(json.dumps({
        "algo_config": {"alpha": 10.0, **algo_config},
        "dataset_info": {"source": "vault", "path": "/gone/task.vlt", "uid": "medium", "return_anchors": ANCHORS},
    }))


def test_normalised_table_has_returns_and_welch_differences(offline_vs_bc, tmp_path, capsys, monkeypatch):
    bc_greedy, omiga_greedy = [200.0, 260.0, 320.0], [800.0, 860.0, 950.0]
    for seed in range(3):
        write_run(tmp_path, "bc", seed, bc_greedy[seed], 100.0 + seed)
        write_run(tmp_path, "omiga", seed, omiga_greedy[seed], 110.0 + seed)
    write_run(tmp_path, "omiga", 9, 0.0, 0.0)
    (tmp_path / "omiga_s9" / "summary.json").write_text(json.dumps({"status": "running"}))

    monkeypatch.setattr(sys, "argv", ["offline_vs_bc", str(tmp_path), "--metric", "normalised",
                                      "--out", str(tmp_path / "rows.json"), "--plot", str(tmp_path / "bars.png")])
    offline_vs_bc.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| env | dataset | data return | data | algo | seeds | greedy return | greedy | greedy - BC "
                        "| sampled | sampled - BC |")
    omiga = lines[3].split(" | ")
    assert omiga[2:6] == ["500.0", "0.500", "omiga", "3"]

    normalise = lambda values: (np.asarray(values) + 100.0) / 1200.0  # noqa: E731
    a, b = normalise(omiga_greedy), normalise(bc_greedy)
    diff = a.mean() - b.mean()
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = stats.t.ppf(0.975, dof) * np.sqrt(va + vb)
    assert omiga[8] == f"{diff:+.3f} ± {half:.3f} **beats BC**"
    assert omiga[6] == f"{np.mean(omiga_greedy):.1f} ± {stats.t.ppf(0.975, 2) * np.std(omiga_greedy, ddof=1) / np.sqrt(3):.1f}"

    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["seeds"] for r in rows] == [3, 3]
    assert rows[1]["greedy"][0] == pytest.approx(a.mean())
    assert rows[1]["greedy_minus_bc"][1] == pytest.approx(half)
    assert rows[1]["greedy_values"] == pytest.approx(list(a))
    assert (tmp_path / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bars_are_the_rows_means_grouped_by_dataset(tmp_path):
    from offmarl.evaluation.plots import plot_dataset_scores

    rows = [{"env": env, "dataset": dataset, "algo": algo, "greedy": (mean, 0.1), "greedy_values": [mean - 0.1, mean + 0.1],
             **({"dataset_score": score} if score is not None else {})}
            for env, dataset, algo, mean, score in [
                ("task_a", "medium", "bc", 0.5, 0.4), ("task_a", "medium", "omiga", 0.7, 0.4),
                ("task_a", "expert", "bc", 0.9, 1.0), ("task_b", "mixed", "omiga", -0.2, None)]]
    bars = plot_dataset_scores(rows, tmp_path / "bars.png", "score")
    assert {key: height for key, (_, height) in bars.items()} == {
        ("task_a", "medium", "bc"): 0.5, ("task_a", "medium", "omiga"): 0.7,
        ("task_a", "expert", "bc"): 0.9, ("task_b", "mixed", "omiga"): -0.2}
    x = {key: position for key, (position, _) in bars.items()}
    # groups ordered by the data's score (medium 0.4 before expert 1.0), BC left of OMIGA within a group
    assert -0.5 < x[("task_a", "medium", "bc")] < x[("task_a", "medium", "omiga")] < 0.5 < x[("task_a", "expert", "bc")]
    assert (tmp_path / "bars.png").stat().st_size > 1000


def test_runs_of_one_row_must_share_their_settings(offline_vs_bc, tmp_path, monkeypatch):
    """Seeds of one row with different settings would give a misleading interval: refused,
    naming the setting and both runs. A field a run predates counts at its default."""
    write_run(tmp_path / "a", "bc", 0, 200.0, 100.0)  # made before box_policy existed: tanh
    write_run(tmp_path / "a", "bc", 1, 210.0, 100.0, box_policy="tanh")
    monkeypatch.setattr(sys, "argv", ["offline_vs_bc", str(tmp_path / "a"), "--metric", "normalised"])
    offline_vs_bc.main()
    write_run(tmp_path / "a", "bc", 2, 900.0, 400.0, box_policy="censored")
    with pytest.raises(SystemExit, match=r"row mabrax:hopper_3x1 / medium / bc differ in algo_config.box_policy "
                                         r"\(tanh in .*bc_s0, censored in .*bc_s2\)"):
        offline_vs_bc.main()


def test_a_labelled_setting_compares_each_value_with_bc_of_the_same_value(offline_vs_bc, tmp_path, capsys, monkeypatch):
    for seed in range(2):
        write_run(tmp_path, "bc", seed, 200.0 + 10 * seed, 100.0)  # recorded before box_policy: tanh
        write_run(tmp_path / "c", "bc", seed, 900.0 + 10 * seed, 100.0, box_policy="censored")
        write_run(tmp_path, "omiga", seed, 300.0 + 10 * seed, 100.0, box_policy="tanh")
        write_run(tmp_path / "c", "omiga", seed, 880.0 + 10 * seed, 100.0, box_policy="censored")
    monkeypatch.setattr(sys, "argv", ["offline_vs_bc", str(tmp_path), "--metric", "return", "--label", "box_policy"])
    offline_vs_bc.main()
    rows = {line.split(" | ")[3]: line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]}
    assert sorted(rows) == ["bc box_policy=censored", "bc box_policy=tanh", "omiga box_policy=censored",
                            "omiga box_policy=tanh"]
    assert rows["omiga box_policy=tanh"][6].startswith("+100.0 ± ")  # against tanh BC
    assert rows["omiga box_policy=censored"][6].startswith("-20.0 ± ")  # against censored BC
    assert rows["bc box_policy=censored"][6] == "-"


def test_a_setting_bc_was_not_run_with_is_compared_with_bcs_only_row(offline_vs_bc, tmp_path, capsys, monkeypatch):
    for seed in range(2):
        write_run(tmp_path, "bc", seed, 200.0 + 10 * seed, 100.0, lr=3e-4)
        write_run(tmp_path, "omiga", seed, 300.0 + 10 * seed, 100.0, lr=1e-3)
    monkeypatch.setattr(sys, "argv", ["offline_vs_bc", str(tmp_path), "--metric", "return", "--label", "lr"])
    offline_vs_bc.main()
    rows = {line.split(" | ")[3]: line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["omiga lr=0.001"][6].startswith("+100.0 ± ")


def test_diverged_runs_are_counted_apart_and_not_scored(offline_vs_bc, tmp_path, capsys, monkeypatch):
    """A diverged run has no final evaluation: its row says how many diverged, scores only the
    completed seeds, and a row with none completed is shown with no scores (and no bar)."""
    for seed in range(3):
        write_run(tmp_path, "bc", seed, 200.0 + 10 * seed, 100.0)
        write_run(tmp_path, "maicq", seed, 0.0, 0.0)
        diverged = {"algo": "maicq", "env": "mabrax:hopper_3x1", "dataset": "/gone/task.vlt:medium", "seed": seed,
                    "status": "diverged", "steps": 90000, "eval_return": -127.0, "dataset_return_mean": 500.0}
        (tmp_path / f"maicq_s{seed}" / "summary.json").write_text(json.dumps(diverged))
    for seed, greedy in enumerate([300.0, 330.0, 0.0]):
        write_run(tmp_path, "omiga", seed, greedy, 100.0)
    (tmp_path / "omiga_s2" / "summary.json").write_text(json.dumps({**diverged, "algo": "omiga"}))

    monkeypatch.setattr(sys, "argv", ["offline_vs_bc", str(tmp_path), "--metric", "normalised",
                                      "--out", str(tmp_path / "rows.json"), "--plot", str(tmp_path / "bars.png")])
    offline_vs_bc.main()
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split(" | ")
    rows = {line.split(" | ")[4]: line.split(" | ") for line in lines[2:]}
    assert rows["maicq"] == ["| mabrax:hopper_3x1", "medium", "-", "-", "maicq", "0 (+3 diverged)", "-", "-", "-", "-",
                             "- |"]
    assert len(rows["maicq"]) == len(header)
    assert rows["omiga"][5] == "2 (+1 diverged)"
    standard_error = np.std([300.0, 330.0], ddof=1) / np.sqrt(2)  # 15: seeds 0 and 1 only
    assert rows["omiga"][7] == f"{(315.0 + 100.0) / 1200.0:.3f} ± {stats.t.ppf(0.975, 1) * standard_error / 1200.0:.3f}"
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["algo"], r["seeds"], r["diverged"]) for r in saved] == [("bc", 3, 0), ("maicq", 0, 3), ("omiga", 2, 1)]
