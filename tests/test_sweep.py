"""`offmarl sweep`: a grid of ordinary run directories made by subprocesses, resumable,
interruptible, on this machine or on a Ray cluster, and its aggregated outputs
(offmarl/pipelines/sweep.py). Cells are offline BC on the XOR game, which compiles in
seconds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from offmarl.cli import main
from offmarl.errors import ConfigError
from offmarl.pipelines.sweep import (
    Cell,
    _stop_reason,
    cell_command,
    cell_state,
    overrides_for,
    plan_sweep,
    suite_table_lines,
    summarise_sweep,
    time_left,
)
from offmarl.runners.common import RunLock
from offmarl.utils.files import read_jsonl

TINY = ["hidden_sizes=8,8", "eval_interval=20", "eval_episodes=4", "final_eval_episodes=4"]
GRID = ["--algos", "bc", "--envs", "matrix:xor", "--seeds", "0,1", "--dataset", "02_20"]
PNG = b"\x89PNG\r\n\x1a\n"
OUTPUTS = ("sweep.json", "marl_eval.json", "aggregate.json", "table.md", "curves.png", "performance_profile.png",
           "probability_of_improvement.png")


def sweep_argv(out: Path, *extra: str, steps: int = 40, grid: list[str] = GRID) -> list[str]:
    return [sys.executable, "-m", "offmarl.cli", "sweep", *grid, "--out", str(out), "--steps", str(steps),
            "--reps", "200", *extra, *TINY]


def run_sweep(out: Path, *extra: str, steps: int = 40, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_argv(out, *extra, steps=steps), capture_output=True, text=True, timeout=timeout)


def mtimes(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    return out, run_sweep(out, "--parallel", "2")


def test_a_tiny_sweep_completes_and_writes_every_output(tiny_sweep) -> None:
    out, result = tiny_sweep
    assert result.returncode == 0, result.stdout + result.stderr
    assert "os.fork()" not in result.stderr  # cells start without forking a copy of the JAX process
    lines = result.stdout.splitlines()
    assert "sweep" in lines[0] and "2 cells (2 new, 0 to resume, 0 done), 2 at a time" in lines[0]
    for seed in (0, 1):
        assert any(line.endswith(f"start bc matrix:xor s{seed} (new)") for line in lines)
        done = [line for line in lines if f"done  bc matrix:xor s{seed}: completed, final greedy return" in line]
        assert len(done) == 1
        run = out / "runs" / f"bc_matrix_xor_s{seed}"
        summary = json.loads((run / "summary.json").read_text())
        assert (summary["status"], summary["steps"], summary["seed"]) == ("completed", 40, seed)
        assert [r["steps"] for r in read_jsonl(run / "metrics.jsonl")] == [20, 40]
        assert (out / "logs" / f"bc_matrix_xor_s{seed}.log").stat().st_size > 0
    finished = [line for line in lines if " done  " in line]
    assert "; 1 to go, " in finished[0] and finished[1].endswith(" s")  # the first to finish estimates the other
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    for name in OUTPUTS[-3:]:
        assert (out / name).read_bytes()[:8] == PNG

    recorded = json.loads((out / "sweep.json").read_text())
    assert recorded["algos"] == ["bc"] and recorded["seeds"] == [0, 1] and recorded["overrides"] == TINY
    assert recorded["budget"] == {"env_steps": None, "steps": 40}
    assert [c["dir"] for c in recorded["cells"]] == ["runs/bc_matrix_xor_s0", "runs/bc_matrix_xor_s1"]

    marl = json.loads((out / "marl_eval.json").read_text())
    seeds = marl["matrix"]["xor/02_20"]["bc"]
    assert set(seeds) == {"seed_0", "seed_1"}
    for seed in (0, 1):
        run = out / "runs" / f"bc_matrix_xor_s{seed}"
        records = read_jsonl(run / "metrics.jsonl")
        entry = seeds[f"seed_{seed}"]
        assert list(entry) == ["step_0", "step_1", "absolute_metrics"]
        assert entry["step_1"]["step_count"] == 40
        assert entry["step_1"]["return"] == records[1]["eval_greedy_returns"]  # per-episode, 4 episodes
        summary = json.loads((run / "summary.json").read_text())
        assert entry["absolute_metrics"]["return"] == summary["final_eval_greedy_returns"]
        assert "win_rate" not in entry["absolute_metrics"]  # XOR has no win condition

    aggregate = json.loads((out / "aggregate.json").read_text())
    assert aggregate["partial"] is False
    assert aggregate["cells"] == {f"bc_matrix_xor_s{s}": {"dir": f"runs/bc_matrix_xor_s{s}", "status": "completed"}
                                  for s in (0, 1)}
    row = aggregate["per_env"]["matrix:xor"]["bc"]
    finals = [json.loads((out / "runs" / f"bc_matrix_xor_s{s}" / "summary.json").read_text())
              ["final_eval_greedy_return"] for s in (0, 1)]
    assert row["done"] == 2 and row["final_greedy_return"]["mean"] == pytest.approx(sum(finals) / 2)
    statistics = aggregate["statistics"]
    assert statistics["score_kind"] == "return" and statistics["tasks"] == ["matrix:xor/02_20"]
    assert statistics["algorithms"]["bc"]["mean"]["value"] == pytest.approx(sum(finals) / 2)
    assert statistics["bootstrap"]["reps"] == 200
    table = (out / "table.md").read_text()
    assert "## matrix:xor" in table and "| bc | 2/2 |" in table and "## Aggregate over tasks (rliable)" in table
    assert "## Suite table" not in table  # no published figure exists for matrix:xor


def test_a_rerun_skips_finished_cells_and_a_different_grid_is_refused(tiny_sweep) -> None:
    out, first = tiny_sweep
    assert first.returncode == 0
    before = {s: mtimes(out / "runs" / f"bc_matrix_xor_s{s}") for s in (0, 1)}
    again = run_sweep(out, "--parallel", "2")
    assert again.returncode == 0, again.stderr
    assert "2 cells (0 new, 0 to resume, 2 done)" in again.stdout
    assert again.stdout.count("skip  bc matrix:xor") == 2 and "start" not in again.stdout
    assert {s: mtimes(out / "runs" / f"bc_matrix_xor_s{s}") for s in (0, 1)} == before

    sweep_json = (out / "sweep.json").read_bytes()
    for argv, what in ((["--seeds", "0,1,2"], "different seeds (0,1, now 0,1,2)"),
                       (["--algos", "bc,omiga"], "different algos"),
                       (["lr=1e-3"], "different overrides")):
        grid = list(GRID)
        if argv[0].startswith("--"):
            grid[grid.index(argv[0]) + 1] = argv[1]
            extra: list[str] = []
        else:
            extra = argv
        result = subprocess.run(sweep_argv(out, *extra, grid=grid), capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and what in result.stderr and result.stdout == ""
    assert (out / "sweep.json").read_bytes() == sweep_json
    assert {s: mtimes(out / "runs" / f"bc_matrix_xor_s{s}") for s in (0, 1)} == before


def test_summarise_sweep_alone_is_deterministic(tiny_sweep) -> None:
    out, first = tiny_sweep
    assert first.returncode == 0
    one = summarise_sweep(out, reps=100, seed=3)
    two = summarise_sweep(out, reps=100, seed=3)
    assert one == two == json.loads((out / "aggregate.json").read_text())
    assert one["statistics"]["bootstrap"] == {"method": "stratified bootstrap (rliable), percentile intervals",
                                              "reps": 100, "seed": 3, "confidence": 0.95}


def test_a_new_budget_extends_the_finished_cells(tiny_sweep, tmp_path: Path) -> None:
    source, first = tiny_sweep
    assert first.returncode == 0
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    result = run_sweep(out, "--parallel", "2", steps=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 cells (0 new, 2 to resume, 0 done)" in result.stdout
    for seed in (0, 1):
        run = out / "runs" / f"bc_matrix_xor_s{seed}"
        assert [r["steps"] for r in read_jsonl(run / "metrics.jsonl")] == [20, 40, 60]
        assert json.loads((run / "config.json").read_text())["budget_history"] == [{"from": 40, "to": 60}]
    recorded = json.loads((out / "sweep.json").read_text())
    assert recorded["budget"]["steps"] == 60 and recorded["budget_history"] == [{"steps": {"from": 40, "to": 60}}]
    # Below what the cells trained: refused before anything runs.
    lower = run_sweep(out, steps=20)
    assert lower.returncode == 2 and "more than the budget 20" in lower.stderr


def test_an_interrupted_sweep_resumes_the_interrupted_cell_only(tmp_path: Path) -> None:
    out, steps = tmp_path / "sweep", 3000
    log = open(tmp_path / "first.out", "w")
    proc = subprocess.Popen(sweep_argv(out, "--parallel", "1", steps=steps), stdout=log, stderr=subprocess.STDOUT)
    first, second = out / "runs" / "bc_matrix_xor_s0", out / "runs" / "bc_matrix_xor_s1"
    deadline = time.monotonic() + 150
    while len(read_jsonl(second / "metrics.jsonl")) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.out").read_text()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    log.close()
    text = (tmp_path / "first.out").read_text()
    assert "stop  bc matrix:xor s1: interrupted" in text and "sweep stopped by SIGINT" in text
    # The cell had stopped (checkpointed, lock released) before the sweep exited.
    assert json.loads((second / "summary.json").read_text())["status"] == "interrupted"
    RunLock.acquire(second).release()
    assert json.loads((first / "summary.json").read_text())["status"] == "completed"
    interrupted_at = read_jsonl(second / "metrics.jsonl")[-1]["steps"]
    assert 0 < interrupted_at < steps
    assert json.loads((out / "aggregate.json").read_text())["partial"] is True
    finished = mtimes(first)

    result = run_sweep(out, "--parallel", "1", steps=steps)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skip  bc matrix:xor s0: completed" in result.stdout
    assert "start bc matrix:xor s1 (resume)" in result.stdout
    assert mtimes(first) == finished  # not rerun
    assert [r["steps"] for r in read_jsonl(second / "metrics.jsonl")] == list(range(20, steps + 1, 20))
    assert json.loads((second / "summary.json").read_text())["status"] == "completed"
    assert f"resuming {second.resolve()}" in (out / "logs" / "bc_matrix_xor_s1.log").read_text()
    assert json.loads((out / "aggregate.json").read_text())["partial"] is False


BAD = [
    (["--algos", "bc,nope"], "unknown algorithm 'nope'"),
    (["--envs", "matrix:xor,smax:99z"], "smax:99z"),
    (["--envs", "nowhere"], "unknown environment 'nowhere'"),
    (["--seeds", ""], "--seeds is empty"),
    (["--seeds", "0,-1"], "seed -1 is negative"),
    (["--seeds", "0,x"], "'x' is not an integer"),
    (["--seeds", "0,0"], "names '0' more than once"),
    (["--parallel", "0"], "--parallel=0 is invalid"),
    (["hidden_sizes"], "'hidden_sizes' is not of the form key=value"),
    (["no_such_key=1"], "no_such_key"),
    (["eval_interval=-5"], "eval_interval"),
    (["--dataset", None], "offline algorithm bc needs --dataset"),
    (["--algos", "matrace,bc", "--dataset", None], "(mixed with the online matrace) needs --dataset"),
    (["--dataset", "nosuch"], "neither a built-in dataset of matrix:xor"),
    (["--env-steps", "512"], "--env-steps is the budget of online algorithms"),
    (["--ray-address", "headnode"], "--ray-address 'headnode' is invalid"),
    (["mappo.lr=1e-3"], "names algorithm 'mappo', which is not in --algos (valid prefixes: bc)"),
    (["bc.no_such_key=1"], "no_such_key"),
    (["lr=0.1", "lr=0.2"], "override 'lr' is given twice"),
    (["bc.lr=0.1", "bc.lr=0.2"], "override 'bc.lr' is given twice"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_exits_2_with_one_line_and_creates_nothing(tmp_path: Path, capsys, change, message) -> None:
    argv = ["sweep", "--algos", "bc", "--envs", "matrix:xor", "--seeds", "0", "--dataset", "02_20",
            "--out", str(tmp_path / "sweep"), "--steps", "40"]
    extra, words = [], iter(change)
    for flag in words:
        if not flag.startswith("--"):
            extra.append(flag)
            continue
        value = next(words, None)
        if flag in argv:
            at = argv.index(flag)
            if value is None:
                del argv[at:at + 2]
            else:
                argv[at + 1] = value
        else:
            argv += [flag, value]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("offmarl: error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_directory_in_use_is_refused_naming_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    lock = RunLock.acquire(out)
    try:
        assert main(["sweep", *GRID, "--out", str(out), "--steps", "40", *TINY]) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"sweep directory '{out}' is in use by another offmarl process" in err, err
    assert [p.name for p in out.iterdir()] == [".lock"]


def test_time_left_takes_each_pairs_mean_time_and_the_cells_run_at_once() -> None:
    def cell(algo: str, seed: int) -> Cell:
        return Cell(algo, "matrix:xor", seed, "offline", 40, 40)

    assert time_left({}, [cell("bc", 0)], [], 1) is None
    seconds = {("bc", "matrix:xor"): [10.0, 20.0], ("omiga", "matrix:xor"): [60.0]}
    waiting = [cell("bc", 2), cell("omiga", 2)]  # 15 + 60
    running = [(cell("omiga", 1), 45.0), (cell("bc", 1), 30.0)]  # 60 - 45, and bc past its mean: 0
    assert time_left(seconds, waiting, running, 1) == pytest.approx(15 + 60 + 15 + 0)
    more = waiting + [cell("bc", 3), cell("bc", 4), cell("bc", 5)]
    assert time_left(seconds, more, running, 2) == pytest.approx((15 + 60 + 15 + 0 + 3 * 15) / 2)
    assert time_left(seconds, waiting, running, 2) == pytest.approx(60.0)  # not before the longest cell ends
    assert time_left(seconds, [cell("maicq", 0)], [], 1) == pytest.approx(30.0)  # no maicq yet: every cell's mean
    assert time_left(seconds, [], [(cell("omiga", 1), 10.0)], 4) == pytest.approx(50.0)  # one cell: its own time
    assert time_left(seconds, [cell("omiga", 2), cell("bc", 2)], [], 4) == pytest.approx(60.0)  # the longest
    assert time_left(seconds, [], [], 2) is None


def test_cell_commands_and_states(tmp_path: Path) -> None:
    plan = plan_sweep(tmp_path / "s", ["matrace"], ["smax:3m"], [0, 2], env_steps=1000,
                      overrides=["num_envs=16", "unroll_length=16"])
    assert [c.name for c in plan.cells] == ["matrace_smax_3m_s0", "matrace_smax_3m_s2"]
    cell = plan.cells[1]
    assert cell.budget == 768  # rounded down to whole updates of 16 x 16
    assert cell_state(plan, cell) == "new"
    run = str((tmp_path / "s" / "runs" / "matrace_smax_3m_s2").resolve())
    assert cell_command(plan, cell, "new") == ["train", "--algo", "matrace", "--env", "smax:3m", "--seed", "2",
                                               "--out", run, "--env-steps", "1000", "num_envs=16",
                                               "unroll_length=16"]
    # A resume names the cell's configured budget (1000, which rounds to the cell's 768 as the
    # run did), so it ends where the cell counts as done and records no change of budget.
    assert cell_command(plan, cell, "resume") == ["train", "--resume", run, "--env-steps", "1000"]
    assert not (tmp_path / "s").exists()  # planning creates nothing
    offline = plan_sweep(tmp_path / "o", ["bc"], ["matrix:xor"], [0], steps=100, dataset="02_20",
                         overrides=["bc.steps=200"])
    assert offline.cells[0].budget == 200
    assert cell_command(offline, offline.cells[0], "resume")[-2:] == ["--steps", "200"]


def test_a_diverged_cell_is_final_and_its_run_is_reused(tmp_path: Path) -> None:
    """A run stopped on NaN or inf would diverge again from its last good checkpoint: the
    sweep skips it (counting it as not completed) and train_or_resume returns it untouched."""
    from offmarl.runners.online import train_or_resume

    plan = plan_sweep(tmp_path / "s", ["matrace"], ["smax:3m"], [0], env_steps=1000,
                      overrides=["num_envs=16", "unroll_length=16"])
    cell = plan.cells[0]
    run = plan.run_dir(cell)
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    assert cell_state(plan, cell) == "resume"
    diverged = {"status": "diverged", "env_steps": 512, "eval_win_rate": 0.0}
    (run / "summary.json").write_text(json.dumps(diverged))
    assert cell_state(plan, cell) == "diverged"
    assert train_or_resume(None, run) == (diverged, True)  # no experiment needed: nothing trains


def test_a_stopped_cell_is_explained_by_its_own_message_not_the_summary_printed_after(tmp_path: Path) -> None:
    """A diverged cell prints its one-line reason and then its summary as JSON: the sweep's
    report quotes the reason, not the JSON's closing brace; a crash quotes its error line."""
    log = tmp_path / "cell.log"
    log.write_text("step 60000\noffmarl: training stopped (exit 3): the critic diverged\n{\n  \"status\": \"diverged\"\n}\n")
    assert _stop_reason(log) == "offmarl: training stopped (exit 3): the critic diverged"
    log.write_text("offmarl: note: resuming\nTraceback (most recent call last):\n  File x\nValueError: bad shape\n")
    assert _stop_reason(log) == "ValueError: bad shape"
    log.write_text("compiling\nkilled\n")
    assert _stop_reason(log) == "killed"
    assert _stop_reason(tmp_path / "missing.log") == ""


def test_a_scoped_override_beats_a_plain_one_in_any_order_and_reorderings_rerun(tmp_path: Path) -> None:
    out = tmp_path / "s"
    plan = plan_sweep(out, ["bc"], ["matrix:xor"], [0], steps=40, dataset="02_20", overrides=["lr=1e-3", "bc.lr=5e-4"])
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps(plan.to_json()))
    reordered = plan_sweep(out, ["bc"], ["matrix:xor"], [0], steps=40, dataset="02_20",
                           overrides=["bc.lr=5e-4", "lr=1e-3"])
    assert overrides_for("bc", reordered.overrides) == overrides_for("bc", plan.overrides) == ["lr=5e-4"]
    cell_args = cell_command(plan, plan.cells[0], "new")  # what the cell's own process parses
    assert [word for word in cell_args if "lr=" in word] == ["lr=5e-4"]
    assert main([*cell_args, *TINY, "--quiet"]) == 0
    assert json.loads((plan.run_dir(plan.cells[0]) / "config.json").read_text())["algo_config"]["lr"] == 5e-4
    with pytest.raises(ConfigError, match="different overrides"):
        plan_sweep(out, ["bc"], ["matrix:xor"], [0], steps=40, dataset="02_20", overrides=["bc.lr=1e-3"])
    # A sweep recorded by older offmarl, where a later plain word beat an earlier scoped one:
    # its started cells have lr=1e-3, new ones would get 5e-4. Refused.
    old = out.parent / "old"
    old.mkdir()
    recorded = plan_sweep(old, ["bc"], ["matrix:xor"], [0], steps=40, dataset="02_20",
                          overrides=["bc.lr=5e-4", "lr=1e-3"]).to_json()
    (old / "sweep.json").write_text(json.dumps(recorded))
    with pytest.raises(ConfigError, match="older offmarl let it win, today the scoped one does"):
        plan_sweep(old, ["bc"], ["matrix:xor"], [0], steps=40, dataset="02_20", overrides=["bc.lr=5e-4", "lr=1e-3"])


def test_a_cell_trained_on_other_data_is_refused_before_anything_runs(tiny_sweep, tmp_path: Path) -> None:
    """A regenerated vault under the same name (here: the recorded SHA-256 of one cell's
    data changed) must not let a rerun mix old and new data in one table."""
    source, first = tiny_sweep
    assert first.returncode == 0
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    grid = dict(algos=["bc"], envs=["matrix:xor"], seeds=[0, 1], steps=40, dataset="02_20", overrides=TINY)
    plan = plan_sweep(out, **grid)
    recorded = json.loads((out / "runs" / "bc_matrix_xor_s1" / "config.json").read_text())["dataset_info"]["sha256"]
    assert dict(plan.dataset_sha256) == {"matrix:xor": recorded}
    config = out / "runs" / "bc_matrix_xor_s1" / "config.json"
    data = json.loads(config.read_text())
    data["dataset_info"]["sha256"] = "0" * 64
    config.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"bc_matrix_xor_s1 was trained on other data than '02_20' holds now"):
        plan_sweep(out, **grid)


def test_a_vault_that_does_not_fit_the_environment_is_refused_at_planning(tmp_path: Path) -> None:
    """A vault without a recorded env (as OG-MARL's) whose shapes do not fit: refused before
    sweep.json or any cell exists, not by every cell in turn."""
    from test_vault import make_dataset

    from offmarl.data.vault import write_vault

    write_vault(make_dataset(0), tmp_path / "og.vlt", "good")  # 3 agents; matrix:xor has 2
    with pytest.raises(ConfigError, match="og.vlt:good. does not fit matrix:xor: it has agents=3, the environment has 2"):
        plan_sweep(tmp_path / "s", ["bc"], ["matrix:xor"], [0], steps=40, dataset=f"{tmp_path / 'og.vlt'}:good")
    assert not (tmp_path / "s").exists()


def test_the_statistics_count_only_cells_completed_at_the_current_budget(tiny_sweep, tmp_path: Path) -> None:
    source, first = tiny_sweep
    assert first.returncode == 0
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    sweep_json = json.loads((out / "sweep.json").read_text())
    sweep_json["cells"][1]["steps"] = 60  # seed 1 now below the budget, as after a rerun with --steps 60
    (out / "sweep.json").write_text(json.dumps(sweep_json))
    result = summarise_sweep(out, reps=50, partial=True)
    assert result["per_env"]["matrix:xor"]["bc"]["done"] == 1
    assert set(json.loads((out / "marl_eval.json").read_text())["matrix"]["xor/02_20"]["bc"]) == {"seed_0"}
    seed0 = json.loads((out / "runs" / "bc_matrix_xor_s0" / "summary.json").read_text())["final_eval_greedy_return"]
    assert result["statistics"]["algorithms"]["bc"]["mean"]["value"] == pytest.approx(seed0)


def test_algorithm_scoped_overrides_reach_that_algorithms_cells_only(tmp_path: Path) -> None:
    """`ALGO.key=value` sets a field of ALGO's cells only, so a sweep can set a MA-Trace-only
    field beside MAPPO; a plain `key=value` still reaches every cell."""
    plan = plan_sweep(tmp_path / "s", ["matrace", "mappo"], ["smax:3m"], [0], env_steps=4096,
                      overrides=["num_envs=16", "matrace.behaviour_kl_cost=0.3", "mappo.clip_eps=0.1"])
    matrace, mappo = plan.cells
    assert cell_command(plan, matrace, "new")[-2:] == ["num_envs=16", "behaviour_kl_cost=0.3"]
    assert cell_command(plan, mappo, "new")[-2:] == ["num_envs=16", "clip_eps=0.1"]
    assert overrides_for("ippo", plan.overrides) == ["num_envs=16"]
    with pytest.raises(ConfigError, match="mappo on smax:3m.*behaviour_kl_cost"):
        plan_sweep(tmp_path / "s", ["matrace", "mappo"], ["smax:3m"], [0], overrides=["behaviour_kl_cost=0.3"])


def _start_ray_head(temp_dir: str) -> tuple[subprocess.Popen, str]:
    """A local Ray cluster (2 CPUs) owned by a helper process: it prints its address and
    shuts the cluster down when its stdin closes (no `ray stop`, which would stop every
    Ray instance on the machine)."""
    code = ("import sys, ray\n"
            "ray.init(num_cpus=2, include_dashboard=False, logging_level='ERROR', _temp_dir=sys.argv[1])\n"
            "print(ray.get_runtime_context().gcs_address, flush=True)\n"
            "sys.stdin.read()\n"
            "ray.shutdown()\n")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # the sweep's driver joins without a token
    head = subprocess.Popen([sys.executable, "-c", code, temp_dir], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    address = head.stdout.readline().strip()
    assert address, "the Ray head did not start"
    return head, address


def test_a_sweep_runs_its_cells_as_ray_tasks(tmp_path: Path) -> None:
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-limited
    head, address = _start_ray_head(temp_dir)
    try:
        out = tmp_path / "sweep"
        result = run_sweep(out, "--ray-address", address)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 cells (2 new, 0 to resume, 0 done), 2 at a time" in result.stdout
        for seed in (0, 1):
            assert "=== Ray task on " in (out / "logs" / f"bc_matrix_xor_s{seed}.log").read_text()
            summary = json.loads((out / "runs" / f"bc_matrix_xor_s{seed}" / "summary.json").read_text())
            assert summary["status"] == "completed" and summary["steps"] == 40
        assert json.loads((out / "aggregate.json").read_text())["statistics"]["algorithms"]["bc"]["runs"] == 2
    finally:
        head.stdin.close()
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_suite_table_puts_our_scores_beside_the_published_figures() -> None:
    def row(wins: list[float]) -> dict:
        if not wins:
            return {"done": 0}
        mean = sum(wins) / len(wins)
        return {"done": len(wins), "final_greedy_win_rate": {"mean": mean, "ci95": 0.05 if len(wins) > 1 else None}}

    table = {"smax:2s3z": {"matrace": row([1.0, 0.98, 0.99]), "mappo": row([0.9])},
             "smax:3m": {"matrace": row([0.95]), "mappo": row([])}}
    lines = suite_table_lines(["matrace", "mappo"], table)
    header = next(line for line in lines if line.startswith("| map |"))
    assert header.split(" | ")[1:3] == ["matrace", "mappo"] and "JaxMARL MAPPO" in header and "SMAC" in header
    two = next(line for line in lines if line.startswith("| smax:2s3z |"))
    assert two == "| smax:2s3z | 0.990 ± 0.050 (3) | 0.900 (1) | 0.90 | 1.00 | 0.89 | 0.95 | 99/94/98 |"
    three = next(line for line in lines if line.startswith("| smax:3m |"))
    assert three == "| smax:3m | 0.950 (1) | pending | – | – | – | – | – |"
    assert suite_table_lines(["bc"], {"matrix:xor": {"bc": row([1.0])}}) == []
