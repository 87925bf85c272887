"""Offline training end to end, kept small: coordination on the XOR game, the run
directory, interrupt and resume, bad input to `offmarl offline`, and BC and OMIGA on a
tiny continuous-action dataset collected on mpe:simple_spread_continuous."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import serialization

import offmarl.runners.offline as offline_runner
from offmarl.algos.bc import BC, BCConfig
from offmarl.algos.inspo import InSPO, InSPOConfig
from offmarl.algos.maicq import MAICQ, MAICQConfig
from offmarl.cli import main
from offmarl.data.builtin import load_builtin_dataset
from offmarl.data.collect import collect_episodes
from offmarl.data.dataset import OfflineDataset
from offmarl.data.source import load_dataset
from offmarl.data.vault import write_vault
from offmarl.envs import make_env
from offmarl.evaluation.matrix_games import matrix_game_report
from offmarl.utils.files import read_jsonl

# BC on XOR "02_20": 4 chunks of 100 iterations, checkpoints at 200 and 400.
BC_XOR = [
    "offline", "--algo", "bc", "--env", "matrix:xor", "--dataset", "02_20", "--steps", "400",
    "--seed", "1", "--quiet", "hidden_sizes=32,32", "batch_size=64", "eval_interval=100",
    "eval_episodes=4", "final_eval_episodes=8", "checkpoint_interval=200",
]
SUMMARY_KEYS = {"algo", "env", "dataset", "seed", "steps", "updates_per_second", "eval_return",
                "eval_episodes", "joint_action_distribution"}
TIMING_KEYS = {"wall_seconds", "updates_per_second"}
XOR_JOINT_ACTIONS = {"0,0", "0,1", "1,0", "1,1"}


@pytest.fixture(scope="module")
def bc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("offline") / "bc_xor"
    assert main([*BC_XOR, "--out", str(out)]) == 0
    return out


def checkpoint_leaves(run_dir: Path, steps: int) -> list[np.ndarray]:
    raw = serialization.msgpack_restore((run_dir / "checkpoints" / f"step_{steps:012d}.msgpack").read_bytes())
    return [raw["leaves"][str(i)] for i in range(len(raw["leaves"]))]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_inspo_coordinates_on_xor() -> None:
    """XOR "02_20", 3 seeds: InSPO's greedy joint action is (0,1) or (1,0) with expected
    return above 0.9. Trained with the runner's own jitted chunk (compiled once)."""
    env = make_env("matrix:xor")
    algo = InSPO(InSPOConfig(hidden_sizes=(32, 32), behaviour_warmup=200), env.spec)
    data = offline_runner.to_device(load_dataset("matrix:xor", "02_20")[0])
    train = offline_runner.make_train_chunk(algo, batch_size=128)
    init = jax.jit(algo.init)
    for seed in range(3):
        init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
        state, _, metrics = train(init(init_rng), rng, 1500, data)
        assert all(np.isfinite(float(v)) for v in metrics.values())
        report = matrix_game_report(algo, algo.acting_params(state), env)
        assert report["greedy_joint_action"] in ("0,1", "1,0"), (seed, report)
        assert report["expected_return"] > 0.9, (seed, report)


@pytest.mark.parametrize(("game", "dataset", "predicted"), [
    ("matrix:xor", "02_20", {"0,0", "1,1"}),  # both agents prefer the same action index
    ("matrix:mne", "balanced", {"0,1", "1,0"}),  # opposite preferences: the -20 cells
])
def test_maicq_miscoordinates_as_linear_decomposition_predicts(game: str, dataset: str, predicted: set) -> None:
    """docs/maicq.md: a critic Q_tot = sum_i k_i Q_i + b fitted to the two optimal joint
    actions in the data forces the agents' advantage weights into a miscoordinated joint
    action; 2 seeds, the games' default 64-64 networks and 2,000 iterations."""
    env = make_env(game)
    algo = MAICQ(MAICQConfig(hidden_sizes=(64, 64)), env.spec)
    data = offline_runner.to_device(load_dataset(game, dataset)[0])
    train = offline_runner.make_train_chunk(algo, batch_size=128)
    init = jax.jit(algo.init)
    for seed in range(2):
        init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
        state, _, _ = train(init(init_rng), rng, 2000, data)
        report = matrix_game_report(algo, algo.acting_params(state), env)
        assert report["greedy_joint_action"] in predicted, (seed, report)


def test_bc_on_xor_keeps_mass_on_the_unseen_joint_action(bc_run: Path) -> None:
    """Independent behaviour cloning of 50/50 marginals puts about 1/4 on (1,1), never in the data."""
    summary = json.loads((bc_run / "summary.json").read_text())
    assert 0.15 <= summary["joint_action_distribution"]["1,1"] <= 0.35, summary
    assert summary["expected_return"] < 0.5


def test_run_directory_holds_every_artifact(bc_run: Path) -> None:
    config = json.loads((bc_run / "config.json").read_text())
    identity = ("bc", "matrix:xor", "02_20", 1)
    assert (config["algo"], config["env"], config["dataset"], config["seed"]) == identity
    assert config["algo_config"]["hidden_sizes"] == [32, 32] and config["run_config"]["steps"] == 400
    info = config["dataset_info"]
    assert {k: info[k] for k in ("source", "name")} == {"source": "builtin", "name": "02_20"}
    assert len(info["sha256"]) == 64

    records = read_jsonl(bc_run / "metrics.jsonl")
    assert [r["steps"] for r in records] == [100, 200, 300, 400]
    for record in records:
        assert np.isfinite(record["policy_loss"]) and record["updates_per_second"] > 0
        assert set(record["joint_action_distribution"]) == XOR_JOINT_ACTIONS
        assert sum(record["joint_action_distribution"].values()) == pytest.approx(1.0, abs=1e-5)
    assert (bc_run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (bc_run / "checkpoints").iterdir()) == [
        "step_000000000200.json", "step_000000000200.msgpack",
        "step_000000000400.json", "step_000000000400.msgpack",
    ]

    summary = json.loads((bc_run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary), SUMMARY_KEYS - set(summary)
    assert (summary["algo"], summary["env"], summary["dataset"], summary["seed"]) == identity
    assert summary["status"] == "completed" and summary["steps"] == 400 and summary["eval_episodes"] == 8
    assert summary["updates_per_second"] > 0
    # A matrix game's headline is the expected payoff of the policies, not one greedy play.
    assert summary["eval_return"] == summary["expected_return"]
    assert summary["final_eval_greedy_return"] == summary["greedy_return"]
    distribution = summary["joint_action_distribution"]
    assert set(distribution) == XOR_JOINT_ACTIONS
    assert sum(distribution.values()) == pytest.approx(1.0, abs=1e-5)
    assert min(distribution.values()) >= 0.0


def test_interrupt_crash_and_resume_match_an_uninterrupted_run(
    bc_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during the 4th chunk, then the checkpoint at 300 is lost as in a crash (metrics
    of iteration 300 are on disk, the newest checkpoint is 200). Resuming drops the orphan
    record and retrains from 200: steps 100..400 once each, and the same records, final
    parameters and evaluation as the uninterrupted run with the same seed."""
    out = tmp_path / "resumed"
    original_chunk = offline_runner.OfflineRun.train_chunk
    calls = {"n": 0}

    def interrupting_chunk(self, state, done):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original_chunk(self, state, done)

    monkeypatch.setattr(offline_runner.OfflineRun, "train_chunk", interrupting_chunk)
    assert main([*BC_XOR, "--out", str(out)]) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 300
    assert [r["steps"] for r in read_jsonl(out / "metrics.jsonl")] == [100, 200, 300]
    for path in (out / "checkpoints").glob("step_000000000300.*"):
        path.unlink()
    (out / "summary.json").unlink()

    monkeypatch.setattr(offline_runner.OfflineRun, "train_chunk", original_chunk)
    assert main(["offline", "--resume", str(out), "--quiet"]) == 0
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["steps"] for r in records] == [100, 200, 300, 400]
    assert without_timing(records) == without_timing(read_jsonl(bc_run / "metrics.jsonl"))
    for got, want in zip(checkpoint_leaves(out, 400), checkpoint_leaves(bc_run, 400), strict=True):
        np.testing.assert_array_equal(got, want)
    resumed = json.loads((out / "summary.json").read_text())
    reference = json.loads((bc_run / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["steps"] == 400
    for key in ("eval_return", "final_eval_sampled_return", "joint_action_distribution"):
        assert resumed[key] == reference[key], key


OFFLINE_BAD_INPUT = [
    (["--algo", "qmix", "--env", "matrix:xor", "--dataset", "02_20"],
     "unknown algorithm 'qmix'", "valid choices: bc, omiga, inspo, iql_cql"),
    (["--algo", "matrace", "--env", "matrix:xor", "--dataset", "02_20"],
     "algorithm 'matrace' is online", "`offmarl train`"),
    (["--algo", "bc", "--env", "matrix:xor", "--dataset", "02_21"],
     "dataset '02_21' is neither a built-in dataset of matrix:xor", "02_20"),
    (["--algo", "bc", "--env", "matrix:xor", "--dataset", "02_20", "--steps", "0"],
     "steps=0 is invalid", "positive integer"),
    (["--algo", "bc", "--env", "matrix:xor", "--dataset", "02_20", "temperature=0.1"],
     "unknown config key 'temperature'", "lr"),
    (["--algo", "omiga", "--env", "matrix:xor", "--dataset", "02_20", "alpha=0"],
     "alpha=0.0 is invalid", "must be > 0"),
    (["--algo", "bc", "--env", "matrix:xor"], "--dataset required", ""),
]


@pytest.mark.parametrize("argv,problem,hint", OFFLINE_BAD_INPUT, ids=[c[1][:30] for c in OFFLINE_BAD_INPUT])
def test_bad_offline_input_is_one_line_exit_2(
    argv: list[str], problem: str, hint: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(["offline", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("offmarl: error: ") and problem in err and hint in err, err
    assert not out.exists()


def test_dataset_that_does_not_fit_the_env_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An XOR dataset (2 actions) for the M-NE game (3 actions) is refused before training."""
    vault = tmp_path / "xor.vlt"
    write_vault(load_builtin_dataset("matrix:xor", "02_20", num_episodes=10), vault, "tiny")
    out = tmp_path / "run"
    argv = ["offline", "--algo", "bc", "--env", "matrix:mne", "--dataset", f"{vault}:tiny", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        f"offmarl: error: dataset '{vault}:tiny' does not fit matrix:mne: it has num_actions=2, "
        "the environment has 3"
    ]
    assert not out.exists()


def test_a_run_records_the_return_anchors_of_a_vault_scored_by_return(tmp_path: Path) -> None:
    """make-datasets' normalisation (random policy 0, the expert dataset's mean return 1) is
    copied into the run's config.json, so its scores normalise after the vault is gone."""
    data = load_builtin_dataset("matrix:xor", "02_20", num_episodes=10)
    scored, unscored = tmp_path / "scored.vlt", tmp_path / "plain.vlt"
    write_vault(data, scored, "expert", {"scoring": "return", "score_0_return": -3.0, "mean_return": 12.5})
    write_vault(data, scored, "medium", {"scoring": "return", "score_0_return": -3.0, "mean_return": 4.0})
    write_vault(data, unscored, "medium", {"scoring": "win_rate"})
    assert load_dataset("matrix:xor", f"{scored}:medium")[1]["return_anchors"] == [-3.0, 12.5]
    assert "return_anchors" not in load_dataset("matrix:xor", f"{unscored}:medium")[1]
    out = tmp_path / "run"
    assert main(["offline", "--algo", "bc", "--env", "matrix:xor", "--dataset", f"{scored}:medium",
                 "--steps", "10", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["dataset_info"]["return_anchors"] == [-3.0, 12.5]


def test_resume_of_a_missing_run_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["offline", "--resume", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a run directory" in err


# -- continuous (box) actions -----------------------------------------------------------------

BOX_ENV = "mpe:simple_spread_continuous"


@pytest.fixture(scope="module")
def box_env():
    return make_env(BOX_ENV)


@pytest.fixture(scope="module")
def box_vault(tmp_path_factory: pytest.TempPathFactory, box_env) -> Path:
    """16 episodes (400 steps) of an observation-dependent deterministic policy (an untrained
    actor whose output layer is scaled up), epsilon-mixed with uniform actions in the box."""
    behaviour = BC(BCConfig(hidden_sizes=(16, 16)), box_env.spec)
    params = behaviour.init(jax.random.PRNGKey(7)).policy
    layers = params["params"]
    params = {"params": {**layers, "Dense_0": jax.tree.map(lambda x: 100.0 * x, layers["Dense_0"])}}
    data = collect_episodes(box_env, behaviour, params, num_episodes=16, seed=0, epsilon=0.2, greedy=True,
                            num_envs=8)
    vault = tmp_path_factory.mktemp("box") / "spread.vlt"
    write_vault(data, vault, "tiny", {"env": BOX_ENV})
    return vault


BOX_RUN = ["--env", BOX_ENV, "--seed", "0", "--quiet"]
BOX_CONFIG = ["hidden_sizes=32,32", "batch_size=64", "eval_interval=100", "eval_episodes=4", "final_eval_episodes=4"]


def test_bc_learns_a_continuous_dataset_and_evaluates(box_vault: Path, tmp_path: Path) -> None:
    out = tmp_path / "bc"
    assert main(["offline", "--algo", "bc", "--dataset", f"{box_vault}:tiny", "--steps", "300",
                 "--out", str(out), *BOX_RUN, "checkpoint_interval=300", *BOX_CONFIG]) == 0
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["steps"] for r in records] == [100, 200, 300]
    losses = [r["policy_loss"] for r in records]
    assert losses[2] < losses[1] < losses[0] and losses[0] - losses[2] > 1.0, losses
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["dataset_episodes"] == 16
    assert np.isfinite(summary["eval_return"]) and summary["eval_return"] < 0  # MPE: negative distances


def test_omiga_trains_on_a_continuous_dataset(box_vault: Path, tmp_path: Path) -> None:
    out = tmp_path / "omiga"
    assert main(["offline", "--algo", "omiga", "--dataset", f"{box_vault}:tiny", "--steps", "100",
                 "--out", str(out), *BOX_RUN, "checkpoint_interval=100", *BOX_CONFIG]) == 0
    (record,) = read_jsonl(out / "metrics.jsonl")
    for key in ("q_loss", "v_loss", "policy_loss", "weight_mean", "eval_return"):
        assert np.isfinite(record[key]), key


def box_dataset(spec, actions: np.ndarray) -> OfflineDataset:
    """One episode of the env's shapes with the given actions [T, N, ...]."""
    t, n = actions.shape[:2]
    flags = np.zeros((t, n), np.float32)
    flags[-1] = 1.0
    continuous = actions.ndim == 3
    return OfflineDataset(
        observations=np.zeros((t, n, spec.obs_dim), np.float32), actions=actions,
        rewards=np.zeros((t, n), np.float32), terminals=np.zeros((t, n), np.float32), truncations=flags,
        states=np.zeros((t, spec.state_dim), np.float32),
        legals=np.zeros((t, n, 0), np.float32) if continuous else np.ones((t, n, 5), np.float32),
    )


BOX_BAD_INPUT = {
    "continuous data, discrete env": (
        "mpe:simple_spread", np.full((4, 3, 5), 0.5, np.float32),
        "holds continuous actions (5 dimensions per agent), and mpe:simple_spread has discrete actions "
        "(5 per agent); use a dataset collected in mpe:simple_spread"),
    "discrete data, continuous env": (
        BOX_ENV, np.zeros((4, 3), np.int32),
        f"holds discrete actions (5 per agent), and {BOX_ENV} has continuous actions (5 dimensions per agent); "
        f"use a dataset collected in {BOX_ENV}"),
    "outside the box": (
        BOX_ENV, np.full((4, 3, 5), 0.5, np.float32),
        f"does not fit {BOX_ENV}: action 1.5 (time step 2, agent 1, dimension 3) lies outside the "
        "environment's box [0, 1]"),
    "action dimension": (
        BOX_ENV, np.full((4, 3, 4), 0.5, np.float32),
        f"does not fit {BOX_ENV}: it has action_dim=4, the environment has 5"),
}


@pytest.mark.parametrize("case", BOX_BAD_INPUT)
def test_continuous_dataset_mismatches_are_one_line_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture, box_env
) -> None:
    env, actions, problem = BOX_BAD_INPUT[case]
    if case == "outside the box":
        actions[2, 1, 3] = 1.5
    vault = tmp_path / "v.vlt"
    write_vault(box_dataset(box_env.spec, actions), vault, "x")
    out = tmp_path / "run"
    assert main(["offline", "--algo", "bc", "--env", env, "--dataset", f"{vault}:x", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"offmarl: error: dataset '{vault}:x' {problem}"], err
    assert not out.exists()


def test_discrete_only_offline_algorithms_refuse_a_continuous_env(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["offline", "--algo", "iql_cql", "--env", BOX_ENV, "--dataset", "x.vlt:y",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'iql_cql' supports discrete actions only" in err
    assert "offline algorithms with continuous support: bc, omiga, inspo, maicq" in err
