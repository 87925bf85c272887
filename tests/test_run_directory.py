"""End to end through the CLI: the run directory, `offmarl eval`, interrupt and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offmarl.cli import main
from offmarl.runners.online import OnlineRun
from offmarl.utils.files import read_jsonl

# 4 updates of 16 envs x 16 steps; an evaluation after every update.
TINY = [
    "--env", "smax:3m", "--env-steps", "1024", "--num-envs", "16", "--quiet",
    "unroll_length=16", "num_minibatches=2", "eval_interval=256", "eval_episodes=8",
    "final_eval_episodes=16", "checkpoint_interval=512",
]
SUMMARY_KEYS = {"algo", "env", "seed", "num_envs", "env_steps", "wall_seconds",
                "env_steps_per_second", "eval_win_rate", "eval_return", "eval_episodes"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--out", str(out), "--seed", "3", *TINY]) == 0
    return out


def test_run_directory_holds_every_artifact(finished_run: Path) -> None:
    config = json.loads((finished_run / "config.json").read_text())
    assert config["algo"] == "matrace" and config["env"] == "smax:3m" and config["seed"] == 3
    assert config["env_settings"]["attack_mode"] == "closest"
    assert config["algo_config"]["rho_bar"] == 1.0 and config["run_config"]["num_envs"] == 16
    records = read_jsonl(finished_run / "metrics.jsonl")
    assert [r["env_steps"] for r in records] == [256, 512, 768, 1024]
    assert all(0.0 <= r["eval_greedy_win_rate"] <= 1.0 for r in records)
    assert list((finished_run / "tb").glob("events.out.tfevents.*"))
    assert (finished_run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == [
        "step_000000000512.json", "step_000000000512.msgpack",
        "step_000000001024.json", "step_000000001024.msgpack",
    ]
    summary = json.loads((finished_run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "completed" and summary["env_steps"] == 1024
    assert summary["eval_episodes"] == 16
    assert summary["eval_win_rate"] == summary["final_eval_greedy_win_rate"]


def test_eval_command_reports_greedy_and_sampled(finished_run: Path, capsys) -> None:
    assert main(["eval", "--run", str(finished_run), "--episodes", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint_env_steps"] == 1024
    assert result["eval_greedy_episodes"] == result["eval_sampled_episodes"] == 8
    assert 0.0 <= result["eval_sampled_win_rate"] <= 1.0


def test_eval_rejects_a_mismatched_checkpoint(finished_run: Path, tmp_path: Path, capsys) -> None:
    config = json.loads((finished_run / "config.json").read_text())
    config["algo_config"]["hidden_sizes"] = [32]
    clone = tmp_path / "clone"
    (clone / "checkpoints").mkdir(parents=True)
    (clone / "config.json").write_text(json.dumps(config))
    for f in (finished_run / "checkpoints").iterdir():
        (clone / "checkpoints" / f.name).write_bytes(f.read_bytes())
    assert main(["eval", "--run", str(clone)]) == 2
    assert "does not match this configuration" in capsys.readouterr().err


def test_interrupt_then_resume_continues_without_gap_or_duplicate(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "interrupted"
    calls = {"n": 0}
    original_chunk = OnlineRun.train_chunk

    def chunk_with_interrupt(self, state, done):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original_chunk(self, state, done)

    monkeypatch.setattr(OnlineRun, "train_chunk", chunk_with_interrupt)
    assert main(["train", "--out", str(out), *TINY]) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["env_steps"] == 512
    monkeypatch.setattr(OnlineRun, "train_chunk", original_chunk)
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    steps = [r["env_steps"] for r in read_jsonl(out / "metrics.jsonl")]
    assert steps == [256, 512, 768, 1024]
    assert json.loads((out / "summary.json").read_text())["env_steps"] == 1024


def test_mpe_run_reports_returns_and_no_win_rate(tmp_path: Path) -> None:
    out = tmp_path / "mpe"
    argv = ["train", "--env", "mpe:simple_spread", "--env-steps", "512", "--num-envs", "16",
            "--quiet", "--out", str(out), "unroll_length=16", "num_minibatches=2",
            "eval_interval=256", "eval_episodes=4", "final_eval_episodes=4"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_win_rate"] is None and summary["final_eval_greedy_win_rate"] is None
    assert summary["eval_return"] < 0  # distance penalties over a 26-step episode
    assert (out / "curve.png").exists()
