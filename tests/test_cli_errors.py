"""Bad input: one line on stderr naming the bad value and the valid choices, exit
code 2, and nothing written (the error comes before any compilation)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from offmarl.cli import main
from offmarl.utils.files import enclosing_run_directory

CASES = [
    (["--env", "smax:4m"], "unknown smax scenario '4m'", "valid: 3m"),
    (["--env", "starcraft:3m"], "unknown environment 'starcraft:3m'", "smax:<scenario>"),
    (["--env", "smax:3m", "--algo", "qmix"], "unknown algorithm 'qmix'", "valid choices: matrace"),
    (["--env", "smax:3m", "c_bar=2.0"], "c_bar=2.0 is invalid", "c_bar <= rho_bar=1.0"),
    (["--env", "smax:3m", "lr=0"], "lr=0.0 is invalid", "must be > 0"),
    (["--env", "smax:3m", "lr=-1e-3"], "lr=-0.001 is invalid", "must be > 0"),
    (["--env", "smax:3m", "--env-steps", "0"], "env_steps=0 is invalid", "positive integer"),
    (["--env", "smax:3m", "learning_rate=1e-3"], "unknown config key 'learning_rate'", "lr,"),
    (["--env", "smax:3m", "critic=joint"], "critic='joint' is invalid", "obs, state, decentralised"),
    (["--env", "smax:3m", "--policy-lag", "-1"], "policy_lag=-1 is invalid", ">= 0"),
    (["--env", "smax:3m", "num_minibatches=3"], "num_minibatches=3 must divide num_envs=128", ""),
    (["--env", "smax:3m", "lr"], "override 'lr' is not of the form key=value", ""),
    (["--env", "smax:3m", "gamma=0.9", "gamma=0.8"], "override 'gamma' is given twice", "give it once"),
    (["--env", "smax:3m", "hidden_sizes=64,,64"], "hidden_sizes='64,,64' must be", "e.g. 64,64"),
    (["--env", "smax:3m", "hidden_sizes=0,64"], "hidden_sizes=(0, 64) is invalid", "positive layer widths"),
    (["--env", "smax:3m", "--workers", "2", "pipeline=true"], "pipeline=true cannot be combined with workers=2",
     "choose one"),
]


@pytest.mark.parametrize("argv,problem,choices", CASES, ids=[c[1][:30] for c in CASES])
def test_bad_train_input_is_one_line_exit_2(argv, problem, choices, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("offmarl: error: ") and problem in err and choices in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["train", "--env", "smax:3m", "--out", ""], ["train", "--env", "smax:3m", "--config", " "],
                                  ["train", "--resume", ""],
                                  ["collect", "--run", "r", "--episodes", "3", "--out", "", "--uid", "x"],
                                  ["dataset-card", "v.vlt:good", "--out", ""]])
def test_an_empty_name_or_path_is_an_error_not_the_default(argv: list[str], tmp_path: Path, capsys,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    flag = next(word for word, value in zip(argv, argv[1:], strict=False) if not value.strip())
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"offmarl: error: argument {flag}: {argv[argv.index(flag) + 1]!r} is empty; give a value or leave the flag out"]
    assert list(tmp_path.iterdir()) == []


def test_existing_run_directory_is_not_overwritten(tmp_path: Path, capsys) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    assert main(["train", "--env", "smax:3m", "--out", str(tmp_path)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_eval_of_missing_run_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--run", str(tmp_path / "nope")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_argparse_errors_are_one_line_exit_2_in_a_real_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "offmarl", "train", "--env", "smax:3m", "--num-envs", "many"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "offmarl: error: argument --num-envs: invalid int value: 'many'"
    ]


def test_unwritable_out_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["train", "--env", "smax:3m", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"offmarl: error: cannot write the run directory '{blocker / 'run'}': Not a directory"]


def test_disk_full_is_one_line_exit_2(tmp_path: Path, capsys, monkeypatch) -> None:
    """A write that fails (ENOSPC) mid-run ends with one line naming the file, not a traceback."""
    import errno

    import offmarl.runners.loop as loop

    def full(path, _obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(loop, "atomic_write_json", full)
    out = tmp_path / "run"
    assert main(["offline", "--algo", "bc", "--env", "matrix:xor", "--dataset", "02_20", "--steps", "10",
                 "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"offmarl: error: cannot write '{out / 'config.json'}': No space left on device"]


def test_eval_refuses_a_negative_seed(capsys) -> None:
    assert main(["eval", "--run", "anything", "--seed", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "offmarl: error: --seed=-1 is invalid: must be >= 0"


def test_config_command_lists_every_key_with_default_and_docstring(capsys) -> None:
    assert main(["config", "--algo", "matrace"]) == 0
    out = capsys.readouterr().out
    assert "lr = 0.001  # matrace's own default\n    Adam learning rate.\n" in out and "rho_bar = 1.0\n" in out
    assert "# MATraceConfig" in out and "# OnlineConfig" in out


def test_version_and_help_with_defaults(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one help entry per line
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("offmarl 0.")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "default: the algorithm's, see `offmarl config --algo NAME`" in capsys.readouterr().out


def test_an_offline_algorithm_without_continuous_support_is_refused_on_a_box_task(tmp_path: Path, capsys) -> None:
    code = main(["offline", "--algo", "iql_cql", "--env", "mpe:simple_spread_continuous", "--dataset",
                 str(tmp_path / "none.vlt:good"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "algorithm 'iql_cql' supports discrete actions only, and 'mpe:simple_spread_continuous' has " \
           "continuous actions; offline algorithms with continuous support: bc, omiga, inspo, maicq" in err
    assert not (tmp_path / "run").exists()


def test_a_signal_outside_a_run_loop_is_one_line_with_the_signal_exit_code(monkeypatch, capsys) -> None:
    """A SIGTERM while a pipeline's run compiles (outside the loop that checkpoints) ends
    with 128 + 15 and one line, not a traceback."""
    import signal

    import offmarl.cli as cli
    from offmarl.runners.common import StopRequested

    def stopped(_args):
        raise StopRequested(signal.SIGTERM)

    monkeypatch.setitem(cli._COMMANDS, "make-datasets", stopped)
    assert main(["make-datasets", "--env", "smax:3m", "--out", "x"]) == 143
    err = capsys.readouterr().err.strip()
    assert err == ("offmarl: stopped by SIGTERM; finished runs and checkpoints are kept: run the same command "
                   "again to continue")
    monkeypatch.setitem(cli._COMMANDS, "eval", stopped)  # nothing of an evaluation is kept
    assert main(["eval", "--run", "x"]) == 143
    assert capsys.readouterr().err.strip() == "offmarl: stopped by SIGTERM; run the command again to start it over"


def test_a_real_sigterm_outside_a_run_loop_ends_with_the_one_line(monkeypatch, capsys) -> None:
    """SIGTERM's default action would end the process silently (as it did while make-datasets
    scored checkpoints); the CLI turns it into its one line and 143 wherever it arrives."""
    import os
    import signal
    import time

    import offmarl.cli as cli

    def signalled(_args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal interrupts this
        return 0

    monkeypatch.setitem(cli._COMMANDS, "envs", signalled)
    def guard(*_):  # without the CLI's handler the signal is ignored and the command returns 0
        pass

    previous = signal.signal(signal.SIGTERM, guard)
    try:
        assert main(["envs"]) == 143
        assert signal.getsignal(signal.SIGTERM) is guard  # the CLI restores the handler it found
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err.strip().startswith("offmarl: stopped by SIGTERM;")


@pytest.mark.parametrize("overrides,message", [
    (["target_baseline=behaviour"], "target_baseline='behaviour' is invalid; valid choices: policy, data"),
    (["target_baseline=data", "target_weights=q"],
     "target_baseline='data' needs target_weights='advantage' (with 'q' the target has no baseline)"),
])
def test_maicq_refuses_a_bad_critic_target_baseline(tmp_path: Path, capsys, overrides: list[str],
                                                     message: str) -> None:
    out = tmp_path / "run"
    assert main(["offline", "--algo", "maicq", "--env", "matrix:xor", "--dataset", "02_20", "--steps", "10",
                 "--quiet", "--out", str(out), *overrides]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"offmarl: error: {message}"]
    assert not out.exists()


def fake_run(run: Path, config: dict) -> Path:
    """A directory that looks like a run: its config.json and metrics.jsonl."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("")
    return run


def one_line_exit_2(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("offmarl: error: "), err
    return err


def test_a_run_is_resumed_by_its_own_command_and_a_file_is_not_a_run(tmp_path: Path, capsys) -> None:
    online = fake_run(tmp_path / "online", {"algo": "matrace", "env": "smax:3m"})
    offline = fake_run(tmp_path / "offline", {"algo": "bc", "env": "matrix:xor", "dataset": "x"})
    err = one_line_exit_2(["offline", "--resume", str(online)], capsys)
    assert "is an online run" in err and f"offmarl train --resume {online}" in err
    err = one_line_exit_2(["train", "--resume", str(offline)], capsys)
    assert "is an offline run" in err and f"offmarl offline --resume {offline}" in err
    err = one_line_exit_2(["train", "--resume", str(online / "config.json")], capsys)
    assert "is not a run directory (it is a file)" in err and "--out" not in err


def test_a_new_run_inside_a_run_directory_is_refused(tmp_path: Path, capsys) -> None:
    run = fake_run(tmp_path / "done", {"algo": "matrace", "env": "smax:3m"})
    err = one_line_exit_2(["train", "--env", "smax:3m", "--out", str(run / "sub")], capsys)
    assert "lies inside the run directory" in err and str(run) in err
    assert not (run / "sub").exists()
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl"]
    assert enclosing_run_directory(run / "checkpoints" / "x") == run
    assert enclosing_run_directory(run / ".." / "sibling") is None


def test_a_run_saved_with_pipeline_and_ray_workers_still_loads() -> None:
    from offmarl.runners.experiment import experiment_from_dict, resolve_experiment

    saved = resolve_experiment("matrace", "smax:3m", 0, {"workers": 2}).to_dict()
    saved["run_config"]["pipeline"] = True  # allowed (and without effect) before the pair was refused
    loaded = experiment_from_dict(saved).run_config
    assert loaded.workers == 2 and loaded.pipeline is False


def test_offline_dataset_without_env_names_what_is_wrong(tmp_path: Path, capsys) -> None:
    from offmarl.data.builtin import load_builtin_dataset
    from offmarl.data.vault import write_vault

    base = ["offline", "--algo", "bc", "--out", str(tmp_path / "run"), "--dataset"]
    err = one_line_exit_2([*base, str(tmp_path / "none.vlt")], capsys)
    assert "is not a vault" in err and "--env" in err
    vault = tmp_path / "two.vlt"
    write_vault(load_builtin_dataset("matrix:xor", "02_20", 0), vault, "a", {"env": "matrix:xor"})
    write_vault(load_builtin_dataset("matrix:mne", "balanced", 0), vault, "b", {"env": "matrix:mne"})
    err = one_line_exit_2([*base, f"{vault}:bad"], capsys)
    assert "holds no dataset 'bad'" in err and f"{vault}:a, {vault}:b" in err
    err = one_line_exit_2([*base, str(vault)], capsys)
    assert "several environments (matrix:mne, matrix:xor)" in err
    write_vault(load_builtin_dataset("matrix:xor", "02", 0), vault, "c", {})
    err = one_line_exit_2([*base, f"{vault}:c"], capsys)
    assert "--env required (the vault records no env)" in err
    shutil.rmtree(vault / "b")
    err = one_line_exit_2([*base, str(vault)], capsys)
    assert "several environments (matrix:xor, no env recorded)" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,problem", [
    (["eval", "--run", "RUN", "--episodes", "1e12"], "--episodes=1000000000000 is invalid: 1..1,000,000"),
    (["report", "RUN", "--reps", "0"], "--reps=0 is invalid: 1..1,000,000"),
    (["report", "RUN", "--reps", "1000000000000"], "--reps=1000000000000 is invalid"),
])
def test_counts_beyond_what_memory_allows_are_refused(argv, problem, tmp_path: Path, capsys) -> None:
    run = fake_run(tmp_path / "run", {"algo": "matrace", "env": "smax:3m"})
    err = one_line_exit_2([str(run) if word == "RUN" else word for word in argv], capsys)
    assert problem in err


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating "
                                                               "4000000000000000000 bytes.\nmore detail")])
def test_running_out_of_memory_is_one_line_without_a_traceback(error: Exception, monkeypatch, capsys) -> None:
    import offmarl.cli as cli

    def allocate(_args):
        raise error

    monkeypatch.setitem(cli._COMMANDS, "algos", allocate)
    assert main(["algos"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("offmarl: error: out of memory (") and "hidden_sizes" in err, err


def test_other_failures_keep_their_traceback(monkeypatch) -> None:
    import offmarl.cli as cli

    def fail(_args):
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli._COMMANDS, "algos", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["algos"])
