"""`offmarl offline` on vaults a user brings: one written with flashbax in OG-MARL's
layout trains; a corrupted one fails with one line and exit code 2, untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_vault import flashbax_vault, og_marl_experience, tree_hashes

from offmarl.cli import main
from offmarl.data.builtin import load_builtin_dataset

TINY = ["--env", "matrix:xor", "--steps", "40", "--quiet", "hidden_sizes=8,8", "eval_interval=20",
        "eval_episodes=4", "final_eval_episodes=4"]


def test_og_marl_layout_vault_trains(tmp_path: Path) -> None:
    data = load_builtin_dataset("matrix:xor", "02_20", num_episodes=64)
    flashbax_vault(tmp_path / "xor.vlt", "Good", og_marl_experience(data))
    out = tmp_path / "run"
    assert main(["offline", "--algo", "bc", "--dataset", f"{tmp_path / 'xor.vlt'}:Good",
                 "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset_episodes"] == 64 and summary["steps"] == 40
    assert sum(summary["joint_action_distribution"].values()) == pytest.approx(1.0, abs=1e-5)


def test_corrupted_vault_is_one_line_exit_2_and_untouched(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = load_builtin_dataset("matrix:xor", "02_20", num_episodes=64)
    experience = og_marl_experience(data)
    experience["rewards"] = experience["rewards"].copy()
    experience["rewards"][0, 3, 0] = np.nan
    flashbax_vault(tmp_path / "bad.vlt", "good", experience)
    before = tree_hashes(tmp_path / "bad.vlt")
    capsys.readouterr()
    code = main(["offline", "--algo", "omiga", "--dataset", f"{tmp_path / 'bad.vlt'}:good",
                 "--out", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'rewards' holds NaN" in err
    assert tree_hashes(tmp_path / "bad.vlt") == before
    assert not (tmp_path / "run").exists()
