"""Every registered online algorithm, through the same checks: its config and run
defaults, an update, acting under action masks, determinism per seed, and resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from offmarl.algos import ALGORITHMS
from offmarl.cli import main
from offmarl.config import FLOAT32_MAX
from offmarl.runners.experiment import resolve_experiment, resolve_offline_experiment
from offmarl.runners.config import OfflineConfig, OnlineConfig
from offmarl.runners.fused import FusedTrainer
from offmarl.runners.online import OnlineRun
from offmarl.runners.saved import SavedRun
from offmarl.utils.files import read_jsonl

ONLINE = sorted(name for name, entry in ALGORITHMS.items() if entry.kind == "online")
RUNNER_KEYS = {f.name for f in dataclasses.fields(OnlineConfig)}
TINY = {"num_envs": 8, "unroll_length": 8, "num_minibatches": 2, "num_epochs": 2, "env_steps": 10_000}


def test_the_registry_has_the_online_algorithms_users_compare() -> None:
    assert {"matrace", "mappo", "ippo"} <= set(ONLINE)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_algorithm_keys_never_shadow_runner_keys(name: str) -> None:
    entry = ALGORITHMS[name]
    runner = OnlineConfig if entry.kind == "online" else OfflineConfig
    algo_keys = {f.name for f in dataclasses.fields(entry.config_class)}
    assert not algo_keys & {f.name for f in dataclasses.fields(runner)}


@pytest.mark.parametrize("name", ONLINE)
def test_run_defaults_are_valid_runner_settings_and_apply_only_to_their_algorithm(name: str) -> None:
    defaults = ALGORITHMS[name].run_defaults
    assert set(defaults) <= RUNNER_KEYS, set(defaults) - RUNNER_KEYS
    resolved = resolve_experiment(name, "smax:3m", 0).run_config
    assert resolved == dataclasses.replace(OnlineConfig(), **defaults)
    for other in ONLINE:
        for key, value in ALGORITHMS[other].run_defaults.items():
            if key not in defaults:
                assert getattr(resolved, key) == getattr(OnlineConfig(), key), (name, other, key)


def test_ppo_and_matrace_keep_their_own_settings() -> None:
    matrace = resolve_experiment("matrace", "smax:3m", 0).run_config
    mappo = resolve_experiment("mappo", "smax:3m", 0).run_config
    assert (matrace.lr, matrace.num_epochs, matrace.unroll_length) == (1e-3, 2, 32)
    assert (mappo.lr, mappo.num_epochs, mappo.num_minibatches, mappo.unroll_length) == (2e-3, 4, 4, 128)
    assert resolve_experiment("mappo", "smax:3m", 0, {"lr": 3e-4}).run_config.lr == 3e-4


def _trainer(name: str, env, seed_layer: dict | None = None) -> FusedTrainer:
    experiment = resolve_experiment(name, "smax:3m", 0, TINY, seed_layer or {})
    algo = ALGORITHMS[name].build(experiment.algo_config, env.spec)
    return FusedTrainer(experiment.run_config, algo, env)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module", params=ONLINE)
def trained(request, smax_3m):
    """(name, trainer, initial state, state after 2 updates, metrics), and a rerun."""
    trainer = _trainer(request.param, smax_3m)
    start = trainer.init(jax.random.PRNGKey(5))
    runs = [trainer.train(start, 2) for _ in range(2)]
    return request.param, trainer, start, runs


def test_an_update_changes_every_network_and_reports_finite_metrics(trained) -> None:
    name, _, start, runs = trained
    state, episodes, metrics = runs[0]
    assert int(state.update) == 2
    for network in ("actor", "critic"):
        before, after = _leaves(start.params[network]), _leaves(state.params[network])
        assert any(not np.allclose(a, b) for a, b in zip(before, after)), (name, network)
    assert metrics and all(np.isfinite(float(v)) for v in metrics.values()), metrics
    assert float(metrics["grad_norm"]) > 0


def test_same_seed_same_params_and_another_seed_differs(trained, smax_3m) -> None:
    name, trainer, _, runs = trained
    (s1, e1, m1), (s2, e2, m2) = runs
    assert {k: float(v) for k, v in m1.items()} == {k: float(v) for k, v in m2.items()}
    for a, b in zip(_leaves(s1.params), _leaves(s2.params)):
        np.testing.assert_array_equal(a, b)
    other, _, m3 = trainer.train(trainer.init(jax.random.PRNGKey(6)), 2)
    assert float(m3["loss"]) != float(m1["loss"])


def test_acting_never_picks_an_unavailable_action(trained) -> None:
    _, trainer, start, _ = trained
    _, rollout, _, _ = jax.jit(trainer.act)(start)
    avail = np.asarray(rollout.avail[:-1])
    actions = np.asarray(rollout.actions)
    chosen = np.take_along_axis(avail, actions[..., None], axis=-1)[..., 0]
    assert chosen.all()
    assert (~avail).any()  # the masks really exclude actions in these rollouts
    assert np.isfinite(np.asarray(rollout.behaviour_log_probs)).all()
    assert (np.asarray(rollout.behaviour_log_probs) <= 0).all()


CLI_TINY = [
    "--env", "smax:3m", "--env-steps", "1024", "--num-envs", "16", "--quiet",
    "unroll_length=16", "num_minibatches=2", "num_epochs=2", "eval_interval=256",
    "eval_episodes=4", "final_eval_episodes=4", "checkpoint_interval=256",
]


@pytest.mark.parametrize("name", ONLINE)
def test_interrupted_run_resumes_to_the_same_parameters(name: str, tmp_path: Path, monkeypatch) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert main(["train", "--algo", name, "--out", str(straight), *CLI_TINY]) == 0
    calls = {"n": 0}
    original_chunk = OnlineRun.train_chunk

    def chunk_with_interrupt(self, state, done):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original_chunk(self, state, done)

    monkeypatch.setattr(OnlineRun, "train_chunk", chunk_with_interrupt)
    assert main(["train", "--algo", name, "--out", str(interrupted), *CLI_TINY]) == 130
    assert json.loads((interrupted / "summary.json").read_text())["env_steps"] == 512
    monkeypatch.setattr(OnlineRun, "train_chunk", original_chunk)
    assert main(["train", "--resume", str(interrupted), "--quiet"]) == 0
    assert [r["env_steps"] for r in read_jsonl(interrupted / "metrics.jsonl")] == [256, 512, 768, 1024]
    config = json.loads((interrupted / "config.json").read_text())
    assert config["algo"] == name and config["run_config"]["num_epochs"] == 2
    step_a, params_a = SavedRun.open(straight).newest_readable()
    step_b, params_b = SavedRun.open(interrupted).newest_readable()
    assert step_a == step_b == 1024
    for a, b in zip(_leaves(params_a), _leaves(params_b)):
        np.testing.assert_array_equal(a, b)


CONTINUOUS = sorted(name for name in ONLINE if ALGORITHMS[name].continuous)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_algorithms_learn_and_act_in_a_box(name: str) -> None:
    """mpe:simple_spread_continuous: two updates change every network with finite metrics,
    the rollout holds float actions [T, E, N, 5] scored by a Gaussian, and greedy
    evaluation (the mean, clipped by the environment) runs."""
    from offmarl.envs import make_env
    from offmarl.evaluation.evaluate import make_evaluator

    env = make_env("mpe:simple_spread_continuous")
    experiment = resolve_experiment(name, "mpe:simple_spread_continuous", 0, TINY)
    algo = ALGORITHMS[name].build(experiment.algo_config, env.spec)
    trainer = FusedTrainer(experiment.run_config, algo, env)
    start = trainer.init(jax.random.PRNGKey(1))
    _, rollout, _, _ = jax.eval_shape(trainer.act, start)  # shapes only: no extra compile
    assert rollout.actions.shape == (8, 8, 3, 5) and rollout.actions.dtype == np.float32
    assert rollout.behaviour_log_probs.shape == (8, 8, 3)
    end, _, metrics = trainer.train(start, 2)
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values()), metrics
    changed = [np.any(a != b) for a, b in zip(_leaves(start.params), _leaves(end.params))]
    assert all(changed)
    raw = make_evaluator(env, algo, 4)(end.params, jax.random.PRNGKey(2), True)
    assert np.isfinite(np.asarray(raw["return"])).all() and (np.asarray(raw["length"]) == 26).all()


def test_every_algorithm_but_iql_cql_declares_continuous_support() -> None:
    assert CONTINUOUS == ["ippo", "mappo", "matrace"]
    assert sorted(n for n, e in ALGORITHMS.items() if e.kind == "offline" and e.continuous) == [
        "bc", "inspo", "maicq", "omiga"]


def test_one_compiled_evaluation_serves_both_modes_and_any_episode_count() -> None:
    """Greedy and sampled acting share one program; 7 episodes in batches of 3 are the
    three batches seeded fold_in(rng, k), cut to 7; one batch uses rng itself."""
    from offmarl.envs import make_env
    from offmarl.evaluation.evaluate import make_evaluator

    env = make_env("mpe:simple_spread")
    experiment = resolve_experiment("matrace", "mpe:simple_spread", 0, TINY)
    algo = ALGORITHMS["matrace"].build(experiment.algo_config, env.spec)
    params = algo.init(jax.random.PRNGKey(0))
    evaluator = make_evaluator(env, algo, 3)
    rng = jax.random.PRNGKey(5)
    many = evaluator(params, rng, False, 7)
    batches = [evaluator(params, jax.random.fold_in(rng, k), False) for k in range(3)]
    np.testing.assert_array_equal(many["return"], np.concatenate([b["return"] for b in batches])[:7])
    greedy = evaluator(params, rng, True)
    sampled = evaluator(params, rng, False)
    assert many["return"].shape == (7,) and greedy["return"].shape == (3,)
    assert not np.array_equal(greedy["return"], sampled["return"])
    assert evaluator._batch._cache_size() == 1


def test_continuous_defaults_apply_on_box_tasks_only_and_yield_to_the_user() -> None:
    continuous = {"behaviour_kl_cost": 1.0, "behaviour_kl_target": 0.0, "normalize_observations": True}
    assert ALGORITHMS["matrace"].action_space_defaults(continuous=True) == continuous
    assert ALGORITHMS["mappo"].action_space_defaults(continuous=True) == {"normalize_observations": True}
    assert ALGORITHMS["matrace"].action_space_defaults(continuous=False) == {}
    discrete = resolve_experiment("matrace", "smax:3m", 0).algo_config
    assert (discrete.behaviour_kl_cost, discrete.behaviour_kl_target) == (0.1, 0.02)
    box = "mpe:simple_spread_continuous"
    boxed = resolve_experiment("matrace", box, 0).algo_config
    assert (boxed.behaviour_kl_cost, boxed.behaviour_kl_target) == (1.0, 0.0)
    assert resolve_experiment("matrace", box, 0, {"behaviour_kl_cost": 0.0}).algo_config.behaviour_kl_cost == 0.0
    assert resolve_experiment("mappo", box, 0).run_config == resolve_experiment("mappo", "smax:3m", 0).run_config
    assert resolve_experiment("ippo", box, 0, {"normalize_observations": False}).algo_config.normalize_observations is False
    # InSPO's temperature on box tasks (their values are in the hundreds; docs/inspo.md).
    assert resolve_offline_experiment("inspo", "matrix:xor", "d", 0).algo_config.alpha == 0.1
    assert resolve_offline_experiment("inspo", "mabrax:hopper_3x1", "d", 0).algo_config.alpha == 10.0
    assert resolve_offline_experiment("inspo", "mabrax:hopper_3x1", "d", 0, {"alpha": 1.0}).algo_config.alpha == 1.0


def test_family_defaults_apply_to_their_family_only_and_yield_to_the_user() -> None:
    smax = resolve_offline_experiment("omiga", "smax:3m", "d", 0).algo_config
    assert (smax.alpha, smax.max_td_target) == (0.1, 2.0)
    game = resolve_offline_experiment("omiga", "matrix:xor", "d", 0).algo_config
    assert (game.alpha, game.max_td_target) == (10.0, FLOAT32_MAX)  # the paper's elsewhere
    assert resolve_offline_experiment("omiga", "smax:3m", "d", 0, {"alpha": 10.0}).algo_config.alpha == 10.0
    assert ALGORITHMS["omiga"].family_defaults("smax:2s3z") == {"alpha": 0.1, "max_td_target": 2.0}
    assert ALGORITHMS["omiga"].family_defaults("mpe:simple_spread") == {}
    assert resolve_offline_experiment("inspo", "smax:5m_vs_6m", "d", 0).algo_config.alpha == 1.0
