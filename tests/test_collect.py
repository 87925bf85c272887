"""Collecting whole episodes on smax:3m, and datasets from a run's checkpoint (CLI included),
also from a continuous-action run on mpe:simple_spread_continuous."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offmarl.algos import get_algorithm
from offmarl.cli import main
from offmarl.data.card import episode_wins
from offmarl.data.collect import EpisodeCollector, collect_episodes
from offmarl.data.vault import list_uids, load_vault, vault_metadata, write_vault
from offmarl.errors import ConfigError
from offmarl.pipelines.collect import resolve_run_checkpoint
from offmarl.runners.experiment import resolve_experiment

ATTACK_ACTIONS = slice(5, None)  # SMAX: 5 + enemy index; none is available at reset


@pytest.fixture(scope="module")
def policy(smax_3m):
    entry = get_algorithm("matrace")
    algo = entry.build(entry.config_class(), smax_3m.spec)
    return algo, algo.init(jax.random.PRNGKey(3))


def episode_slices(ends: np.ndarray) -> list[slice]:
    rows = np.flatnonzero(ends)
    return [slice(start, end + 1) for start, end in zip(np.r_[0, rows[:-1] + 1], rows, strict=True)]


def test_whole_episodes_with_independently_matching_returns(smax_3m, policy) -> None:
    algo, params = policy
    collected = EpisodeCollector(smax_3m, algo, num_envs=8).collect(params, 16, seed=0, epsilon=0.3)
    data = collected.dataset
    assert data.num_episodes == 16 and data.episode_ends[-1]
    # Per-episode sums over the recorded rows, against the returns summed while acting.
    by_rows = [float(data.rewards[s, 0].sum()) for s in episode_slices(data.episode_ends)]
    np.testing.assert_allclose(by_rows, collected.returns, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.episode_returns(), collected.returns, rtol=1e-5, atol=1e-6)
    for part in episode_slices(data.episode_ends):
        flags = data.terminals[part] + data.truncations[part]
        assert (flags[:-1] == 0).all() and (flags[-1] == 1).all()  # ends only at its last row
        assert (data.legals[part.start, :, ATTACK_ACTIONS] == 0).all()  # starts at a reset
    taken = np.take_along_axis(data.legals, data.actions[..., None], axis=-1)
    assert (taken == 1).all()  # every action (policy or random) was available
    np.testing.assert_array_equal(episode_wins(data, "smax:3m"), collected.wins)
    assert (data.rewards == data.rewards[:, :1]).all()


def test_same_seed_same_data_and_greedy_acts_on_the_recorded_observation(smax_3m, policy) -> None:
    algo, params = policy
    first = collect_episodes(smax_3m, algo, params, 6, seed=5, greedy=True, num_envs=8)
    again = collect_episodes(smax_3m, algo, params, 6, seed=5, greedy=True, num_envs=8)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    starts = jnp.asarray(np.r_[True, first.episode_ends[:-1]])
    logits, _ = algo.policy_step(params, algo.initial_policy_state((first.num_transitions,)),
                                 jnp.asarray(first.observations), jnp.asarray(first.legals > 0), starts)
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), axis=-1), first.actions)
    other = collect_episodes(smax_3m, algo, params, 6, seed=6, greedy=True, num_envs=8)
    assert not np.array_equal(other.observations[:5], first.observations[:5])


def test_bad_epsilon_and_episode_count(smax_3m, policy) -> None:
    algo, params = policy
    with pytest.raises(ConfigError, match=r"epsilon=1.5 is invalid: must be in \[0, 1\]"):
        collect_episodes(smax_3m, algo, params, 4, seed=0, epsilon=1.5)
    with pytest.raises(ConfigError, match="episodes=0 is invalid"):
        collect_episodes(smax_3m, algo, params, 0, seed=0)


def write_saved_run(run: Path, algo_name: str, env, algo, params, metrics: list[dict], env_steps: int = 512) -> Path:
    """A run directory with checkpoints (only the parameters set: the rest of the training
    state can stay zero) at the env steps of `metrics`, which go to metrics.jsonl."""
    from offmarl.runners.fused import FusedTrainer
    from offmarl.utils.checkpoint import save_checkpoint
    from offmarl.utils.files import atomic_write_json, atomic_write_jsonl

    experiment = resolve_experiment(algo_name, env.spec.name, 0, {"num_envs": 8, "env_steps": env_steps})
    atomic_write_json(run / "config.json", experiment.to_dict(env.settings))
    shapes = jax.eval_shape(FusedTrainer(experiment.run_config, algo, env).init, jax.random.PRNGKey(0))
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)._replace(params=params)
    for record in metrics:
        save_checkpoint(run / "checkpoints", record["env_steps"], state, {"algo": algo_name}, keep=5)
    atomic_write_jsonl(run / "metrics.jsonl", metrics)
    return run


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, smax_3m, policy) -> Path:
    """A run directory with two checkpoints of an untrained MA-Trace and their evaluations."""
    algo, params = policy
    return write_saved_run(tmp_path_factory.mktemp("run"), "matrace", smax_3m, algo, params, [
        {"env_steps": 256, "eval_win_rate": 0.5}, {"env_steps": 512, "eval_win_rate": 0.25},
    ])


def test_best_checkpoint_is_the_best_saved_periodic_evaluation(saved_run: Path) -> None:
    assert resolve_run_checkpoint(saved_run, "best") == 256
    assert resolve_run_checkpoint(saved_run, "latest") == 512
    assert resolve_run_checkpoint(saved_run, 256) == 256


def test_cli_collect_writes_a_loadable_vault_with_provenance(saved_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "smax_3m.vlt"
    argv = ["collect", "--run", str(saved_run), "--checkpoint", "best", "--episodes", "5",
            "--out", str(out), "--uid", "poor", "--epsilon", "0.2", "--seed", "1", "--quiet"]
    assert main(argv) == 0
    data = load_vault(out, "poor")
    assert data.num_episodes == 5
    meta = vault_metadata(out, "poor")
    assert meta["env"] == "smax:3m" and meta["checkpoint_env_steps"] == 256
    assert meta["checkpoint"] == "best" and meta["epsilon"] == 0.2 and meta["acting"] == "sampled"
    assert meta["episodes"] == 5 and meta["transitions"] == data.num_transitions
    assert meta["source_run"] == str(saved_run.resolve())
    assert meta["win_rate"] == float(episode_wins(data, "smax:3m").mean())


def test_cli_collect_from_a_continuous_run_writes_a_box_vault(tmp_path: Path) -> None:
    """IPPO's unsquashed Gaussian samples fall outside [0, 1]; the vault records the actions
    the environment applied (clipped to the box), in OG-MARL's continuous layout."""
    from offmarl.envs import make_env

    env = make_env("mpe:simple_spread_continuous")
    config = resolve_experiment("ippo", "mpe:simple_spread_continuous", 0).algo_config  # box-action defaults
    algo = get_algorithm("ippo").build(config, env.spec)
    run = write_saved_run(tmp_path / "run", "ippo", env, algo, algo.init(jax.random.PRNGKey(0)),
                          [{"env_steps": 1024, "eval_return": -30.0}], env_steps=1024)
    out = tmp_path / "spread.vlt"
    argv = ["collect", "--run", str(run), "--checkpoint", "latest", "--episodes", "4", "--out", str(out),
            "--uid", "x", "--epsilon", "0.5", "--quiet"]
    assert main(argv) == 0
    data = load_vault(out, "x")
    assert data.continuous and data.num_episodes == 4 and len(set(data.episode_lengths())) == 1
    assert data.truncations[data.episode_ends].all()  # MPE episodes end at the time limit
    assert data.actions.shape[1:] == (3, 5) and data.actions.dtype == np.float32 and data.legals.shape[2] == 0
    assert data.actions.min() == 0.0 and data.actions.max() == 1.0  # clipped samples sit on the edges
    assert ((data.actions > 0) & (data.actions < 1)).mean() > 0.2  # and many lie inside
    meta = vault_metadata(out, "x")
    assert meta["env"] == "mpe:simple_spread_continuous" and meta["win_rate"] is None and meta["epsilon"] == 0.5


@pytest.mark.parametrize("extra,problem", [
    (["--episodes", "0"], "episodes=0 is invalid"),
    (["--episodes", "3", "--epsilon", "1.5"], "epsilon=1.5 is invalid"),
    (["--episodes", "3", "--epsilon", "-0.1"], "epsilon=-0.1 is invalid"),
    (["--episodes", "3", "--checkpoint", "999"], "checkpoint '999' not found"),
    (["--episodes", "3", "--uid", "../up"], "uid '../up' is invalid"),
])
def test_cli_collect_bad_input_is_one_line_exit_2(
    saved_run: Path, tmp_path: Path, capsys, extra: list[str], problem: str
) -> None:
    argv = ["collect", "--run", str(saved_run), "--out", str(tmp_path / "v.vlt"), "--uid", "x", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err, err
    assert not (tmp_path / "v.vlt").exists()


def test_cli_collect_missing_run_and_existing_uid(saved_run: Path, tmp_path: Path, capsys) -> None:
    common = ["--episodes", "3", "--out", str(tmp_path / "v.vlt"), "--uid", "x"]
    assert main(["collect", "--run", str(tmp_path / "nope"), *common]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    (tmp_path / "v.vlt" / "x").mkdir(parents=True)
    assert main(["collect", "--run", str(saved_run), *common]) == 2
    assert "already holds dataset 'x'" in capsys.readouterr().err


def test_cli_collect_checks_where_the_vault_goes_before_collecting(saved_run: Path, tmp_path: Path, capsys) -> None:
    from offmarl.data.builtin import load_builtin_dataset

    def refused(out: Path) -> str:
        assert main(["collect", "--run", str(saved_run), "--episodes", "3", "--out", str(out), "--uid", "x"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err  # no progress bar: nothing was collected
        return err

    assert "would lie in the run directory" in refused(saved_run)
    assert "would lie in the run directory" in refused(saved_run / "checkpoints" / "v.vlt")
    (tmp_path / "file").write_text("")
    assert "exists and is not a directory" in refused(tmp_path / "file")
    other = tmp_path / "xor.vlt"
    write_vault(load_builtin_dataset("matrix:xor", "02_20", 0), other, "a", {"env": "matrix:xor"})
    assert "holds datasets of matrix:xor; put the smax:3m dataset in a vault of its own" in refused(other)
    assert list_uids(other) == ["a"] and not (saved_run / "x").exists()


def test_make_datasets_refuses_a_run_that_did_not_finish(saved_run: Path, tmp_path: Path, capsys) -> None:
    import shutil

    interrupted = shutil.copytree(saved_run, tmp_path / "interrupted")
    (interrupted / "summary.json").write_text('{"status": "interrupted"}')
    for run, status in ((saved_run, "no summary.json"), (interrupted, "interrupted")):
        assert main(["make-datasets", "--env", "smax:3m", "--out", str(tmp_path / "d"), "--runs", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"is not finished (status: {status})" in err, err
        assert f"offmarl train --resume {run}" in err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("argv,problem", [
    (["--env", "smax:4m"], "unknown smax scenario '4m'"),
    (["--env", "smax:3m", "--transitions", "0"], "transitions=0 is invalid"),
    (["--env", "smax:3m", "--env-steps", "0"], "env_steps=0 is invalid"),
    (["--env", "smax:3m", "--runs", "/nonexistent/run"], "is not a run directory"),
    (["--env", "smax:3m", "--seeds", ""], "--seeds is empty"),
    (["--env", "smax:3m", "--seeds", "0,0"], "--seeds names '0' more than once"),
    (["--env", "smax:3m", "--epsilon", "1.5"], "epsilon=1.5 is invalid"),
    (["--env", "smax:3m", "--runs", "a,b", "--seeds", "0"], "--runs and --seeds exclude each other"),
    (["--env", "mpe:simple_spread_continuous", "--epsilon", "-0.1"], "epsilon=-0.1 is invalid"),
])
def test_cli_make_datasets_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys, argv: list[str], problem: str
) -> None:
    assert main(["make-datasets", "--out", str(tmp_path / "ds"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err, err
    assert not (tmp_path / "ds").exists()


def test_pipeline_progress_sent_to_a_file_prints_a_line_per_unfinished_task_while_it_works() -> None:
    """rich draws no live bar into a file or a pipe; make-datasets' checkpoint scoring
    (tens of minutes on MABrax) then printed nothing. The heartbeat names each unfinished
    task with its counts, and nothing once every task is done."""
    import io
    import time

    from rich.console import Console

    from offmarl.utils.progress import HeartbeatProgress, progress_display

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with progress_display(console, "episodes", heartbeat_s=0.05) as progress:
        assert isinstance(progress, HeartbeatProgress)
        scoring = progress.add_task("evaluate checkpoints", total=256, stats="")
        done = progress.add_task("collect poor", total=10, stats="")
        progress.update(done, completed=10)
        progress.advance(scoring, 64)
        time.sleep(0.5)
        beats = [line for line in out.getvalue().splitlines() if "] evaluate checkpoints: 64/256 episodes" in line]
        assert len(beats) >= 2, out.getvalue()
        assert "] collect poor:" not in out.getvalue()
        progress.update(scoring, completed=256)
        time.sleep(0.2)
        after = out.getvalue()
        time.sleep(0.2)
        assert out.getvalue() == after  # every task finished: no more lines
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert not isinstance(progress_display(terminal, "episodes"), HeartbeatProgress)
