"""The Ray runner end to end, in real processes: a killed worker is replaced and the run
completes with consistent unroll counts; Ctrl-C checkpoints and `--resume` continues
without gap or duplicate; bad worker counts and addresses fail fast with one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offmarl.cli import main
from offmarl.errors import ConfigError
from offmarl.runners.distributed import UnrollCounts, check_ray_address
from offmarl.utils.files import read_jsonl

UPDATE_STEPS = 8 * 8  # num_envs x unroll_length below
CHUNK_STEPS = 20 * UPDATE_STEPS  # eval_interval: a metrics line every 20 updates
SMALL = ["--env", "smax:3m", "--workers", "2", "--num-envs", "8", "--quiet", "unroll_length=8",
         "num_minibatches=2", f"eval_interval={CHUNK_STEPS}", "eval_episodes=4", "final_eval_episodes=8",
         f"checkpoint_interval={4 * CHUNK_STEPS}"]


def offmarl(*args: str) -> subprocess.Popen:
    # No preexec_fn (it would fork this JAX process): a child that inherits an ignored
    # SIGINT from a backgrounded pytest still stops on it, since the run loop installs
    # its own SIGINT handler.
    return subprocess.Popen([sys.executable, "-m", "offmarl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_metrics(run_dir: Path, lines: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and len(read_jsonl(metrics)) >= lines:
            return
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no {lines} metrics lines in {timeout} s")


def assert_counts_add_up(summary: dict) -> None:
    u = summary["unrolls"]
    assert u["submitted"] == u["produced"] + u["lost"] + u["abandoned"], u
    assert u["produced"] == u["consumed"] + u["dropped"], u
    assert u["consumed"] == summary["env_steps"] // UPDATE_STEPS, u
    assert sum(summary["lag_histogram"].values()) == u["consumed"]


@pytest.mark.slow
def test_killed_worker_is_replaced_and_the_batching_run_completes(tmp_path: Path) -> None:
    """A worker killed mid-run is replaced; the learner batches 3 unrolls per update
    (unrolls_per_update=3), so a budget of B env steps is B / (3 x unroll) updates and
    B / unroll consumed unrolls."""
    out = tmp_path / "run"
    budget = 100 * CHUNK_STEPS
    batch = 3 * UPDATE_STEPS
    process = offmarl("train", "--out", str(out), "--env-steps", str(budget), *SMALL, "unrolls_per_update=3")
    wait_for_metrics(out, 2, process)
    first_pids = json.loads((out / "workers.json").read_text())["pids"]
    os.kill(first_pids[0], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "os.fork() was called" not in stderr  # Ray starts before JAX, so nothing forks after it
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["status"] == "completed" and summary["env_steps"] == budget // batch * batch
    assert summary["unrolls"]["worker_restarts"] == 1 and summary["unrolls"]["lost"] == 1
    assert_counts_add_up(summary)
    assert read_jsonl(out / "metrics.jsonl")[-1]["updates"] == budget // batch
    pids = json.loads((out / "workers.json").read_text())["pids"]
    assert pids[0] != first_pids[0] and pids[1] == first_pids[1]
    assert summary["lag_max"] >= 1 and (out / "lag_histogram.png").is_file()


@pytest.mark.slow
def test_sigint_checkpoints_and_resume_continues_without_gap(tmp_path: Path) -> None:
    out = tmp_path / "run"
    budget = 40 * CHUNK_STEPS
    process = offmarl("train", "--out", str(out), "--env-steps", str(budget), *SMALL)
    wait_for_metrics(out, 3, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    interrupted = json.loads(stdout[stdout.index("{"):])
    assert interrupted["status"] == "interrupted" and 0 < interrupted["env_steps"] < budget
    assert_counts_add_up(interrupted)

    resumed = offmarl("train", "--resume", str(out), "--quiet")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    summary = json.loads(stdout[stdout.index("{"):])
    steps = [r["env_steps"] for r in read_jsonl(out / "metrics.jsonl")]
    assert steps == list(range(CHUNK_STEPS, budget + 1, CHUNK_STEPS))
    assert summary["status"] == "completed" and summary["env_steps"] == budget
    assert_counts_add_up(summary)
    assert summary["unrolls"]["submitted"] > interrupted["unrolls"]["submitted"]


@pytest.mark.parametrize("argv,message", [
    (["--workers", "-1"], "workers=-1 is invalid: 0 (fused runner) or 1..1024 Ray workers"),
    (["--workers", "2", "--ray-address", "headnode"], "--ray-address 'headnode' is invalid: expected HOST:PORT"),
    (["--ray-address", "127.0.0.1:6379"], "--ray-address needs Ray workers: add --workers N"),
    (["--workers", "2", "--policy-lag", "-3"], "policy_lag=-3 is invalid"),
    (["unrolls_per_update=2"], "unrolls_per_update=2 needs Ray workers (workers > 0)"),
    (["--workers", "2", "unrolls_per_update=0"], "unrolls_per_update=0 is invalid: must be a positive integer"),
    (["--simulated-workers", "0"], "--simulated-workers=0 is invalid: must be a positive integer"),
    (["--simulated-workers", "-2"], "--simulated-workers=-2 is invalid: must be a positive integer"),
    (["--simulated-workers", "2", "--workers", "2"], "simulated_workers=2 cannot be combined with workers=2"),
])
def test_bad_worker_settings_are_one_line_exit_2(argv: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "offmarl", "train", "--env", "smax:3m",
                             "--out", str(tmp_path / "run"), *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"offmarl: error: {result.stderr.strip()[16:]}"]
    assert message in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.serial
def test_an_address_without_a_ray_cluster_fails_within_30_s(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections but never speaks Ray's protocol
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        for address, expected in ((f"127.0.0.1:{port}", "did not answer within"),
                                  ("127.0.0.1:1", "no Ray cluster answers")):
            start = time.monotonic()
            result = subprocess.run(
                [sys.executable, "-m", "offmarl", "train", "--env", "smax:3m", "--workers", "1",
                 "--ray-address", address, "--out", str(tmp_path / "run")],
                capture_output=True, text=True, timeout=60)
            assert time.monotonic() - start < 30
            assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert expected in result.stderr and address in result.stderr
    assert not (tmp_path / "run").exists()


def test_ray_addresses_are_parsed_or_rejected() -> None:
    assert check_ray_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert check_ray_address("ray://head:10001") == ("head", 10001)
    assert check_ray_address("auto") is None
    for bad in ("10.0.0.5", "head:port", ":6379", "head:70000"):
        with pytest.raises(ConfigError, match="expected HOST:PORT"):
            check_ray_address(bad)


def test_unroll_counts_survive_a_checkpoint_and_settle_unrolls_in_flight() -> None:
    counts = UnrollCounts(submitted=12, produced=9, consumed=8, dropped=1, lost=1, worker_restarts=1)
    counts.lag_histogram.update({1: 5, 2: 3})
    restored = UnrollCounts.from_dict(json.loads(json.dumps(counts.to_dict())))
    assert restored.lag_histogram == {1: 5, 2: 3} and restored.consumed == 8
    restored.settle_in_flight()
    assert restored.abandoned == 2  # 12 submitted = 9 produced + 1 lost + 2 never returned


@pytest.mark.slow
@pytest.mark.serial
def test_simulated_workers_lag_like_real_ray_workers(tmp_path: Path) -> None:
    """The fused runner's --simulated-workers 2 reproduces the lag two Ray workers measure."""
    budget = ["--env-steps", str(5 * CHUNK_STEPS)]
    ray_run = subprocess.run([sys.executable, "-m", "offmarl", "train", "--out", str(tmp_path / "ray"), *budget,
                              *SMALL], capture_output=True, text=True, timeout=300)
    simulated = SMALL[:SMALL.index("--workers")] + SMALL[SMALL.index("--workers") + 2:]
    assert ray_run.returncode == 0, ray_run.stderr
    # The fused half runs in this process: no Ray, so no fork hazard, and no second start-up.
    assert main(["train", "--out", str(tmp_path / "sim"), *budget, "--simulated-workers", "2", *simulated]) == 0
    ray_summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    sim_summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    updates = 5 * CHUNK_STEPS // UPDATE_STEPS
    assert sim_summary["lag_histogram"] == {"0": 1, "1": 1, "2": updates - 2}
    assert sum(ray_summary["lag_histogram"].values()) == updates
    assert abs(sim_summary["lag_mean"] - ray_summary["lag_mean"]) <= 0.5, (sim_summary["lag_mean"],
                                                                            ray_summary["lag_mean"])


