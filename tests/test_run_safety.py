"""Runs never lose or mix data: one writer per run directory, SIGINT and SIGTERM at any
moment, a NaN stop, a death before the first checkpoint, corrupt checkpoints, and resume
with a new budget or changed data. Every case goes through the one run loop
(offmarl/runners/loop.py); most use offline BC on the XOR game, which compiles in seconds,
and the online runner where its own parts are involved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax import serialization

import offmarl.runners.offline as offline_runner
from offmarl.cli import main
from offmarl.data.builtin import load_builtin_dataset
from offmarl.data.vault import write_vault
import offmarl.runners.online as online_runner
from offmarl.utils.files import atomic_write_json, read_jsonl

# BC on XOR: 4 chunks of 100 iterations, checkpoints every 200.
XOR = ["--algo", "bc", "--env", "matrix:xor", "--dataset", "02_20", "--seed", "1",
       "hidden_sizes=16,16", "batch_size=32", "eval_interval=100", "eval_episodes=4",
       "final_eval_episodes=4", "checkpoint_interval=200"]


def xor_with(*overrides: str) -> list[str]:
    """XOR with `key=value` overrides replacing (or adding to) its own (a key may be given once)."""
    keys = {word.split("=")[0] for word in overrides}
    return [word for word in XOR if word.split("=")[0] not in keys] + list(overrides)


# MA-Trace on 3m: 4 updates of 16 envs x 16 steps, an evaluation after each.
SMAX = ["--env", "smax:3m", "--env-steps", "1024", "--num-envs", "16", "unroll_length=16",
        "num_minibatches=2", "eval_interval=256", "eval_episodes=4", "final_eval_episodes=4",
        "checkpoint_interval=512"]


def offline(out: Path, steps: int = 400, *extra: str) -> int:
    return main(["offline", *XOR, "--steps", str(steps), "--quiet", "--out", str(out), *extra])


def steps_of(run: Path, key: str = "steps") -> list[int]:
    return [r[key] for r in read_jsonl(run / "metrics.jsonl")]


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("*.msgpack"))


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "xor"
    assert offline(out) == 0
    return out


def copy_run(run: Path, to: Path) -> Path:
    for path in run.rglob("*"):
        if path.is_file() and path.name != ".lock":
            target = to / path.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return to


# -- finding 1: one writer per run directory ----------------------------------------------
def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "offmarl.cli", *args]


def test_second_writer_is_refused_and_sigterm_checkpoints_then_resumes(tmp_path: Path) -> None:
    """A second run or resume on a directory in use exits 2 at once and changes nothing;
    SIGTERM then stops the first with exit 143, a checkpoint at its last record and a
    summary saying so; the run resumes to the end."""
    out = tmp_path / "busy"
    env = {**os.environ, "OFFMARL_COMPILE_CACHE": str(tmp_path / "cache")}
    first = subprocess.Popen(cli("offline", *XOR, "--steps", "1000000", "--quiet", "--out", str(out)),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(steps_of(out)) >= 2, 180, "the first run's records")
        config_before = (out / "config.json").read_bytes()
        for argv in (cli("offline", *XOR, "--seed", "2", "--steps", "400", "--quiet", "--out", str(out)),
                     cli("offline", "--resume", str(out), "--quiet")):
            second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert second.stderr.count("\n") == 1 and "is in use by another offmarl process" in second.stderr
            assert f"pid {first.pid}" in second.stderr
        assert (out / "config.json").read_bytes() == config_before
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143, first.stderr.read()
    finally:
        first.kill()
    assert "SIGTERM received" in first.stderr.read()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stop_signal"] == "SIGTERM"
    recorded = steps_of(out)
    assert recorded == list(range(100, summary["steps"] + 1, 100))
    assert checkpoints(out)[-1] == f"step_{summary['steps']:012d}.msgpack"
    done = summary["steps"]
    assert main(["offline", "--resume", str(out), "--steps", str(done + 200), "--quiet"]) == 0
    assert steps_of(out) == list(range(100, done + 201, 100))


def test_lock_refuses_in_process_too(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from offmarl.runners.common import RunLock

    lock = RunLock.acquire(tmp_path / "held")
    try:
        assert offline(tmp_path / "held") == 2
        assert "in use by another offmarl process" in capsys.readouterr().err
    finally:
        lock.release()
    assert offline(tmp_path / "held", 100) == 0  # released: the directory is usable


# -- finding 2: a stop during an evaluation leaves no gap ---------------------------------
def sigint_during_evaluation(monkeypatch: pytest.MonkeyPatch, runner_module, nth: int) -> None:
    """Send SIGINT to this process from inside the `nth` periodic evaluation."""
    original = runner_module.evaluate_both
    calls = {"n": 0}

    def evaluate_both(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(runner_module, "evaluate_both", evaluate_both)


def test_sigint_during_offline_evaluation_leaves_no_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "gap"
    sigint_during_evaluation(monkeypatch, offline_runner, 3)
    assert offline(out) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 200
    assert steps_of(out) == [100, 200]
    assert checkpoints(out)[-1] == "step_000000000200.msgpack"
    monkeypatch.undo()
    assert main(["offline", "--resume", str(out), "--quiet"]) == 0
    assert steps_of(out) == [100, 200, 300, 400]


def test_sigint_during_online_evaluation_leaves_no_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "gap"
    sigint_during_evaluation(monkeypatch, online_runner, 2)
    assert main(["train", *SMAX, "--quiet", "--out", str(out)]) == 130
    assert steps_of(out, "env_steps") == [256]
    assert json.loads((out / "summary.json").read_text())["env_steps"] == 256
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert steps_of(out, "env_steps") == [256, 512, 768, 1024]


# -- finding 3: the checkpoint after a NaN stop is finite -----------------------------------
def test_diverged_run_keeps_a_finite_checkpoint_and_says_why_when_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second update overflows the parameters while its losses, computed before the
    step, are still finite: the run must stop there and keep the first update's state."""
    import jax
    import jax.numpy as jnp

    from offmarl.runners.fused import FusedTrainer

    original = FusedTrainer.train

    def overflowing(self, state, num_updates):
        state, episodes, metrics = original(self, state, num_updates)
        params = jax.tree.map(lambda p: jnp.where(state.update >= 2, jnp.inf, p), state.params)
        return state._replace(params=params), episodes, metrics

    monkeypatch.setattr(FusedTrainer, "train", overflowing)
    out = tmp_path / "nan"
    assert main(["train", "--quiet", "--out", str(out), *SMAX]) == 3
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    for path in (out / "checkpoints").glob("*.msgpack"):
        raw = serialization.msgpack_restore(path.read_bytes())
        leaves = (raw["leaves"] if "leaves" in raw else raw).values()
        assert all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.floating)), path.name
    assert steps_of(out, "env_steps") == [256]
    err = capsys.readouterr().err
    assert "training stopped (exit 3): the parameters became non-finite between env steps 256 and 512" in err
    monkeypatch.undo()
    assert main(["eval", "--run", str(out), "--episodes", "4"]) == 0


def test_a_critic_beyond_every_return_the_data_allows_stops_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finite but runaway critic (OMIGA's Q_tot at 1e6 on XOR, whose rewards are at most
    1 in 02_20: bound 1 / (1 - 0.99) = 100, limit 10 x 100) stops like a NaN does."""
    import jax.numpy as jnp

    original = offline_runner.OfflineRun.compile

    def second_chunk_diverges(self, state):
        seconds, train, calls = original(self, state), self.train, []

        def train_chunk(*args):
            learner_state, rng, metrics = train(*args)
            calls.append(None)
            return learner_state, rng, {**metrics, "q_tot": jnp.float32(1e6 if len(calls) >= 2 else metrics["q_tot"])}

        self.train = train_chunk
        return seconds

    monkeypatch.setattr(offline_runner.OfflineRun, "compile", second_chunk_diverges)
    out = tmp_path / "runaway"
    omiga = ["offline", *XOR, "--algo", "omiga", "--steps", "300", "--quiet", "--out", str(out)]
    assert main(omiga) == 3
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    assert steps_of(out) == [100]
    assert ("training stopped (exit 3): the critic diverged: q_tot = 1e+06 between iterations 100 and 200, "
            "beyond +-1,000") in capsys.readouterr().err


def test_the_discounted_return_bound_is_the_largest_reward_over_one_minus_gamma() -> None:
    data = load_builtin_dataset("matrix:xor", "random", seed=0)
    assert set(np.unique(data.rewards)) == {-2.0, 0.0, 1.0}
    assert data.discounted_return_bound(0.9) == pytest.approx(2.0 / 0.1)
    assert data.discounted_return_bound(1.0) == float("inf")


# -- finding 4: preemption and early death -------------------------------------------------
def test_death_before_the_first_checkpoint_restarts_cleanly(xor_run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """What kill -9 leaves before any checkpoint: config.json, perhaps records and a
    partial temp file. --resume (what `make run` calls) starts over from scratch."""
    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "config.json").write_bytes((xor_run / "config.json").read_bytes())
    (dead / "metrics.jsonl").write_text(json.dumps({"steps": 100}) + "\n")
    (dead / "checkpoints").mkdir()
    (dead / "checkpoints" / ".step_000000000200.msgpack.abc.tmp").write_bytes(b"partial")
    assert main(["offline", "--resume", str(dead), "--quiet"]) == 0
    assert "has no checkpoint yet" in capsys.readouterr().err
    assert steps_of(dead) == [100, 200, 300, 400]
    assert not list((dead / "checkpoints").glob("*.tmp"))


def test_checkpoint_without_its_sidecar_is_found(xor_run: Path, tmp_path: Path) -> None:
    """A kill between the payload's rename and the sidecar's leaves a complete checkpoint."""
    run = copy_run(xor_run, tmp_path / "no_sidecar")
    (run / "checkpoints" / "step_000000000400.json").unlink()
    (run / "summary.json").unlink()
    assert main(["offline", "--resume", str(run), "--steps", "500", "--quiet"]) == 0
    assert steps_of(run) == [100, 200, 300, 400, 500]


# -- finding 5: corrupt checkpoints -----------------------------------------------------------
def test_truncated_newest_checkpoint_falls_back_with_a_warning(xor_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    run = copy_run(xor_run, tmp_path / "truncated")
    newest = run / "checkpoints" / "step_000000000400.msgpack"
    newest.write_bytes(newest.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--episodes", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint_steps"] == 200
    assert main(["offline", "--resume", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "is unreadable" in err and "using the checkpoint at step 200 instead" in err
    assert steps_of(run) == [100, 200, 300, 400]


def test_resume_sets_an_unreadable_newest_checkpoint_aside(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """Checkpoints at 100, 200 and 250 (keep 3), the newest truncated. The resume falls
    back to 200 and renames 250 to *.corrupt (kept), so pruning keeps three readable
    checkpoints and a second resume does not warn again."""
    from offmarl.utils.checkpoint import list_checkpoints

    run = tmp_path / "set_aside"
    assert main(["offline", *xor_with("eval_interval=50", "checkpoint_interval=100", "keep_checkpoints=3"),
                 "--steps", "250", "--quiet", "--out", str(run)]) == 0
    ckpts = run / "checkpoints"
    assert list_checkpoints(ckpts) == [100, 200, 250]
    newest = ckpts / "step_000000000250.msgpack"
    newest.write_bytes(newest.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["offline", "--resume", str(run), "--steps", "400", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "is unreadable" in err and "using the checkpoint at step 200 instead" in err
    assert "renamed it to step_000000000250.msgpack.corrupt" in err
    assert (ckpts / "step_000000000250.msgpack.corrupt").is_file()  # kept for inspection
    assert (ckpts / "step_000000000250.json.corrupt").is_file()
    assert not (ckpts / "step_000000000250.msgpack").exists()
    assert list_checkpoints(ckpts) == [200, 300, 400]  # keep=3 readable, the corrupt one unlisted
    assert steps_of(run) == [50, 100, 150, 200, 250, 300, 350, 400]
    assert main(["offline", "--resume", str(run), "--quiet"]) == 0
    assert "unreadable" not in capsys.readouterr().err
    assert list_checkpoints(ckpts) == [200, 300, 400]


def test_explicitly_chosen_corrupt_checkpoint_is_one_line_exit_2(xor_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    run = copy_run(xor_run, tmp_path / "corrupt")
    (run / "checkpoints" / "step_000000000200.msgpack").write_bytes(b"\x00garbage")
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--checkpoint", "200"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "step_000000000200.msgpack" in err and "unreadable" in err


# -- finding 6: resume honours a new budget and refuses what it would ignore -----------------
def test_resume_extends_a_finished_run(xor_run: Path, tmp_path: Path) -> None:
    run = copy_run(xor_run, tmp_path / "longer")
    assert main(["offline", "--resume", str(run), "--steps", "6e2", "--quiet"]) == 0
    assert steps_of(run) == [100, 200, 300, 400, 500, 600]
    config = json.loads((run / "config.json").read_text())
    assert config["run_config"]["steps"] == 600 and config["budget_history"] == [{"from": 400, "to": 600}]
    assert json.loads((run / "summary.json").read_text())["steps"] == 600


def test_resume_cannot_shrink_below_what_was_trained(xor_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["offline", "--resume", str(xor_run), "--steps", "300"]) == 2
    assert "below the 400 iterations" in capsys.readouterr().err


RESUME_IGNORED = [
    (["train", "--env", "smax:2s3z"], "--env cannot be changed when resuming"),
    (["train", "--seed", "4"], "--seed cannot be changed"),
    (["train", "lr=5"], "'lr=5' cannot be changed"),
    (["train", "--workers", "2"], "--workers cannot be changed"),
    (["offline", "--dataset", "other"], "--dataset cannot be changed"),
    (["offline", "temperature=1"], "'temperature=1' cannot be changed"),
]


@pytest.mark.parametrize("argv,message", RESUME_IGNORED, ids=[c[1][:28] for c in RESUME_IGNORED])
def test_resume_refuses_flags_it_would_ignore(argv, message, xor_run: Path, capsys: pytest.CaptureFixture) -> None:
    before = {p: p.read_bytes() for p in xor_run.rglob("*") if p.is_file()}
    assert main([argv[0], "--resume", str(xor_run), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert {p: p.read_bytes() for p in xor_run.rglob("*") if p.is_file()} == before


def test_online_resume_with_env_steps_extends_and_replans_the_schedule(tmp_path: Path) -> None:
    out = tmp_path / "online"
    assert main(["train", *SMAX, "--quiet", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--env-steps", "1536", "--quiet"]) == 0
    assert steps_of(out, "env_steps") == [256, 512, 768, 1024, 1280, 1536]
    config = json.loads((out / "config.json").read_text())
    assert config["run_config"]["env_steps"] == 1536
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["env_steps"] == 1536


def test_resume_refuses_a_replaced_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    vault = tmp_path / "xor.vlt"
    write_vault(load_builtin_dataset("matrix:xor", "02_20", num_episodes=64), vault, "good", {"env": "matrix:xor"})
    run = tmp_path / "run"
    argv = ["offline", "--algo", "bc", "--dataset", f"{vault}:good", "--steps", "100", "--quiet",
            "--out", str(run), "hidden_sizes=8,8", "eval_interval=100", "eval_episodes=4",
            "final_eval_episodes=4"]
    assert main(argv) == 0  # --env comes from the vault's metadata
    assert json.loads((run / "config.json").read_text())["env"] == "matrix:xor"
    import shutil

    shutil.rmtree(vault)
    write_vault(load_builtin_dataset("matrix:xor", "02_20", seed=5, num_episodes=64), vault, "good",
                {"env": "matrix:xor"})
    capsys.readouterr()
    assert main(["offline", "--resume", str(run), "--steps", "200"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has changed since" in err


# -- the rest of the run directory's hygiene ------------------------------------------------
def test_files_honour_the_umask(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_offline_runs_are_first_class(xor_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """eval and collect take offline runs; the default run name is flat and names the dataset."""
    capsys.readouterr()
    assert main(["eval", "--run", str(xor_run), "--episodes", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["algo"] == "bc" and result["checkpoint_steps"] == 400
    assert main(["collect", "--run", str(xor_run), "--episodes", "8", "--out", str(tmp_path / "c.vlt"),
                 "--uid", "bc", "--quiet"]) == 0
    assert (tmp_path / "c.vlt" / "bc").is_dir()
    game = tmp_path / "g.json"
    game.write_text((Path(offline_runner.__file__).parent.parent / "envs" / "games" / "xor.json").read_text())
    monkeypatch.chdir(tmp_path)
    assert main(["offline", "--algo", "bc", "--env", f"matrix:{game}", "--dataset", "02_20", "--steps", "10",
                 "--quiet", "hidden_sizes=8,8", "eval_interval=10", "eval_episodes=2",
                 "final_eval_episodes=2"]) == 0
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["offline_bc_matrix_g_02_20_s0"]


def test_report_is_a_table_or_json_and_survives_a_closed_pipe(xor_run: Path) -> None:
    table = subprocess.run(cli("report", str(xor_run)), capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "bc on matrix:xor [02_20]" in table.stdout
    as_json = subprocess.run(cli("report", "--json", str(xor_run)), capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout)["groups"][0]["algo"] == "bc"
    closed = subprocess.Popen(cli("report", str(xor_run)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    closed.stdout.close()  # the reader is gone before anything is written, as with `| head`
    assert closed.wait(timeout=60) == 0
    assert b"Traceback" not in closed.stderr.read()


def test_a_new_run_that_fails_before_training_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """Out of memory at the first step: one line, exit 1, and the same command can run again;
    a resumed run that fails keeps everything it had."""
    def exhausted(*_args, **_kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 354800040584 bytes")

    out = tmp_path / "oom"
    monkeypatch.setattr(offline_runner, "make_train_chunk", exhausted)
    assert offline(out) == 1
    assert not out.exists()
    assert capsys.readouterr().err.strip().startswith("offmarl: error: out of memory (RESOURCE_EXHAUSTED")
    monkeypatch.undo()
    assert offline(out, 100) == 0
    monkeypatch.setattr(offline_runner, "make_train_chunk", exhausted)
    assert main(["offline", "--resume", str(out), "--steps", "200", "--quiet"]) == 1
    assert steps_of(out) == [100] and (out / "summary.json").is_file()


def test_cli_eval_runs_many_episodes_in_bounded_batches(xor_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """More episodes than one batch holds run as several batches of the same compiled size,
    so memory stays bounded; a count within one batch evaluates as before."""
    import offmarl.runners.saved as saved

    sizes: list[int] = []
    original = saved.make_evaluator

    def recording(env, policy, batch_episodes):
        sizes.append(batch_episodes)
        return original(env, policy, batch_episodes)

    monkeypatch.setattr(saved, "make_evaluator", recording)
    monkeypatch.setattr(saved, "CLI_EVAL_BATCH", 64)
    capsys.readouterr()
    assert main(["eval", "--run", str(xor_run), "--episodes", "150"]) == 0
    many = json.loads(capsys.readouterr().out)
    assert main(["eval", "--run", str(xor_run), "--episodes", "40"]) == 0
    assert sizes == [64, 40]
    assert many["eval_greedy_episodes"] == many["eval_sampled_episodes"] == 150
    assert json.loads(capsys.readouterr().out)["eval_greedy_episodes"] == 40
