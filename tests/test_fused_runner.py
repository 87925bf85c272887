"""Fused runner: determinism per seed, the policy-lag ring buffer, off-policy plumbing."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from offmarl.algos import MATrace, MATraceConfig
from offmarl.errors import ConfigError
from offmarl.runners.config import OnlineConfig
from offmarl.runners.fused import FusedTrainer

TINY = OnlineConfig(env_steps=100_000, num_envs=8, unroll_length=8, num_minibatches=2)


def _trainer(env, **changes) -> FusedTrainer:
    cfg = dataclasses.replace(TINY, **changes)
    return FusedTrainer(cfg, MATrace(MATraceConfig(), env.spec), env)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_same_seed_same_metrics_and_params(smax_3m) -> None:
    trainer = _trainer(smax_3m)
    runs = []
    for _ in range(2):
        state, episodes, metrics = trainer.train(trainer.init(jax.random.PRNGKey(7)), 3)
        runs.append((state, episodes, metrics))
    (s1, e1, m1), (s2, e2, m2) = runs
    assert {k: float(v) for k, v in m1.items()} == {k: float(v) for k, v in m2.items()}
    assert tuple(map(float, e1)) == tuple(map(float, e2))
    for a, b in zip(_leaves(s1.params), _leaves(s2.params)):
        np.testing.assert_array_equal(a, b)
    other, _, m3 = trainer.train(trainer.init(jax.random.PRNGKey(8)), 3)
    assert float(m3["loss"]) != float(m1["loss"])


@pytest.mark.parametrize("lag", [0, 2])
def test_behaviour_params_are_policy_lag_updates_old(smax_3m, lag: int) -> None:
    trainer = _trainer(smax_3m, policy_lag=lag)
    state = trainer.init(jax.random.PRNGKey(0))
    history = [state.params]
    update = jax.jit(trainer.update)
    for u in range(5):
        expected = history[max(u - lag, 0)]
        for a, b in zip(_leaves(trainer.behaviour_params(state)), _leaves(expected)):
            np.testing.assert_array_equal(a, b)
        state, _, _ = update(state)
        history.append(state.params)
    assert int(state.update) == 5
    # Params really change, so the check above can tell the slots apart.
    assert not np.allclose(_leaves(history[0].get("actor"))[0], _leaves(history[3].get("actor"))[0])


def test_importance_ratios_are_one_on_policy_and_not_with_lag(smax_3m) -> None:
    on_policy = _trainer(smax_3m, num_minibatches=1, num_epochs=1)  # a second pass is off-policy
    _, _, metrics = on_policy.train(on_policy.init(jax.random.PRNGKey(1)), 1)
    assert float(metrics["rho_mean"]) == pytest.approx(1.0, abs=1e-5)
    lagged = _trainer(smax_3m, num_minibatches=1, policy_lag=3, lr=1e-2)
    _, _, metrics = lagged.train(lagged.init(jax.random.PRNGKey(1)), 6)
    assert abs(float(metrics["rho_mean"]) - 1.0) > 1e-3


def test_training_episode_stats_count_finished_episodes(smax_3m) -> None:
    trainer = _trainer(smax_3m, num_envs=16, unroll_length=32, num_minibatches=2)
    _, episodes, _ = trainer.train(trainer.init(jax.random.PRNGKey(2)), 4)
    # 3m episodes last well under 100 steps: 16 envs x 128 steps finish many.
    assert 16 <= float(episodes.episodes) <= 16 * 128
    assert 0 <= float(episodes.wins) <= float(episodes.episodes)


def test_simulated_workers_take_turns_and_act_with_parameters_n_updates_old(smax_3m) -> None:
    workers = 3
    trainer = _trainer(smax_3m, simulated_workers=workers, actor_threads=1)  # one group per worker
    state = trainer.init(jax.random.PRNGKey(0))
    assert jax.tree.leaves(state.env_state)[0].shape[:2] == (workers, 8)
    history = [state.params]
    update = jax.jit(trainer.update)
    lags = []
    for u in range(8):
        # The behaviour parameters are those of max(u - N, 0) updates ago ...
        for a, b in zip(_leaves(trainer.behaviour_params(state)), _leaves(history[max(u - workers, 0)])):
            np.testing.assert_array_equal(a, b)
        before = state
        state, _, metrics = update(state)
        lags.append(int(metrics["lag"]))
        history.append(state.params)
        # ... and only the worker whose turn it is steps its environments.
        moved = [not np.array_equal(np.asarray(before.episode_return[w]), np.asarray(state.episode_return[w]))
                 or not np.array_equal(np.asarray(before.starts[w]), np.asarray(state.starts[w]))
                 or not all(np.array_equal(x[w], y[w]) for x, y in
                            zip(_leaves(before.env_state), _leaves(state.env_state)))
                 for w in range(workers)]
        assert moved == [w == u % workers for w in range(workers)], (u, moved)
    assert lags == [0, 1, 2, 3, 3, 3, 3, 3]


def test_the_lag_histogram_is_measured_and_rolls_back_with_an_aborted_chunk(smax_3m) -> None:
    trainer = _trainer(smax_3m, simulated_workers=2, policy_lag=1)
    state = trainer.init(jax.random.PRNGKey(0))
    state, _, metrics = trainer.train(state, 10)
    # Total lag N + K = 3: updates 0, 1, 2 see lags 0, 1, 2, the next seven lag 3.
    assert trainer.summary()["lag_histogram"] == {"0": 1, "1": 1, "2": 1, "3": 7}
    assert metrics["lag_mean"] == pytest.approx(24 / 10) and metrics["lag_max"] == 3.0
    assert "lag" not in metrics and "lag_counts" not in metrics
    trainer.commit()
    trainer.train(state, 5)
    trainer.abort()
    assert trainer.summary()["lag_histogram"] == {"0": 1, "1": 1, "2": 1, "3": 7}
    resumed = _trainer(smax_3m, simulated_workers=2, policy_lag=1)
    resumed.restore(trainer.checkpoint_meta())
    assert resumed.summary() == trainer.summary()
    assert _trainer(smax_3m).summary() == {}  # no lag, nothing to report


@pytest.mark.parametrize("setting", [{"pipeline": True, "simulated_workers": 2}, {"actor_threads": 2},
                                     {"pipeline": True, "actor_threads": 1}])
def test_threaded_schedule_computes_what_the_single_jitted_loop_computes(smax_3m, setting) -> None:
    """actor_threads and pipeline run the environment groups' acting and the learning on
    separate threads; that must give the parameters, environments, episodes and lags of the
    same trainer's single jitted loop, which runs the same steps one after another."""
    trainer = _trainer(smax_3m, **setting)
    assert trainer.threaded and trainer.groups == setting.get("actor_threads", TINY.actor_threads)
    assert trainer.lag == max(setting.get("simulated_workers", 0), int(setting.get("pipeline", False)))
    start = trainer.init(jax.random.PRNGKey(3))
    looped, looped_episodes, looped_metrics = trainer._train_jit(start, 5)
    trainer.compile(start, 5)  # ahead of time, as the run loop does
    threaded, threaded_episodes, threaded_metrics = trainer.train(start, 5)
    for a, b in zip(_leaves(looped), _leaves(threaded)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(threaded.update) == 5 and float(threaded_episodes.episodes) > 0
    np.testing.assert_allclose(np.asarray(looped_episodes, float), np.asarray(threaded_episodes, float))
    np.testing.assert_allclose(float(looped_metrics["loss"]), float(threaded_metrics["loss"]), rtol=1e-5)
    counts = np.asarray(looped_metrics["lag_counts"])
    expected = {k: int(c) for k, c in enumerate(counts) if c} if trainer.lag else {}  # kept only with lag
    assert trainer.lag_histogram == expected
    # A second chunk carries on from the first as one longer chunk would.
    later, _, _ = trainer.train(threaded, 2)
    reference, _, _ = trainer._train_jit(looped, 2)
    for a, b in zip(_leaves(reference.params), _leaves(later.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_actor_threads_have_no_effect_with_ray_workers_and_pipeline_is_refused(smax_3m) -> None:
    trainer = _trainer(smax_3m, actor_threads=2, workers=2)
    assert not trainer.threaded and trainer.groups == 1 and trainer.lag == 0
    with pytest.raises(ConfigError, match="pipeline=true cannot be combined with workers=2"):
        _trainer(smax_3m, pipeline=True, workers=2)
