"""Observation normalisation of the online actor-critics: the running moments against NumPy,
the standardised inputs the networks see, and where the moments are updated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offmarl.algos import ALGORITHMS
from offmarl.networks.normalisation import STANDARDISED_CLIP, init_moments, standardise, update_moments
from offmarl.runners.experiment import experiment_from_dict, resolve_experiment
from offmarl.runners.fused import FusedTrainer

TINY = {"num_envs": 8, "unroll_length": 8, "num_minibatches": 2, "num_epochs": 2, "env_steps": 10_000}
BOX = "mpe:simple_spread_continuous"


@pytest.mark.parametrize("sizes", [(1,), (5, 1, 17), (64, 3, 200, 2)])
def test_running_moments_equal_numpy_over_every_row_seen(sizes: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=3.0, scale=[0.1, 2.0, 50.0], size=(n, 3)).astype(np.float32) for n in sizes]
    moments = init_moments(3)
    for batch in batches:
        moments = update_moments(moments, jnp.asarray(batch))
    rows = np.concatenate(batches)
    assert float(moments.count) == len(rows)
    np.testing.assert_allclose(moments.mean, rows.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(moments.var, rows.var(axis=0), rtol=1e-4, atol=1e-6)


def test_leading_axes_are_rows_and_standardising_clips_without_a_gradient() -> None:
    x = jnp.arange(24.0).reshape(2, 3, 4)
    moments = update_moments(init_moments(4), x)
    assert float(moments.count) == 6
    np.testing.assert_allclose(moments.mean, np.arange(24.0).reshape(6, 4).mean(axis=0))
    z = standardise(moments, x)
    np.testing.assert_allclose(np.asarray(z).reshape(6, 4).mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z).reshape(6, 4).std(axis=0), 1.0, atol=1e-5)
    far = standardise(moments, jnp.full((4,), 1e6))
    np.testing.assert_array_equal(far, STANDARDISED_CLIP)
    grads = jax.grad(lambda m: jnp.sum(standardise(m, x)))(moments)
    assert all(float(jnp.abs(g).sum()) == 0.0 for g in jax.tree.leaves(grads))
    # Nothing seen yet: the identity (within the clip).
    np.testing.assert_array_equal(standardise(init_moments(4), x[0, 0]), x[0, 0])


def _trainer(name: str, env, *layers: dict) -> FusedTrainer:
    experiment = resolve_experiment(name, BOX, 0, TINY, *layers)
    return FusedTrainer(experiment.run_config, ALGORITHMS[name].build(experiment.algo_config, env.spec), env)


@pytest.mark.parametrize("name", ["matrace", "mappo"])
def test_box_tasks_normalise_by_default_and_the_moments_count_what_was_acted_on(name: str) -> None:
    """On a box task the moments are in the parameters (the state's too for MAPPO's state
    critic), are updated once per batch with the T x B x N observations it acted on, and
    are what the actor sees: moving them moves the policy."""
    from offmarl.envs import make_env

    env = make_env(BOX)
    trainer = _trainer(name, env)
    assert trainer.algo.config.normalize_observations
    start = trainer.init(jax.random.PRNGKey(0))
    assert ("state_moments" in start.params) == (name == "mappo")
    end, _, _ = trainer.train(start, 2)
    n = env.spec.num_agents
    assert float(end.params["obs_moments"].count) == 2 * 8 * 8 * n
    if name == "mappo":
        assert float(end.params["state_moments"].count) == 2 * 8 * 8
    obs = jnp.ones((n, env.spec.obs_dim))
    policy = trainer.algo.policy_step
    no_avail, memory, starts = jnp.zeros((n, 0), bool), trainer.algo.initial_policy_state(()), jnp.zeros((), bool)
    moved = {**end.params, "obs_moments": end.params["obs_moments"]._replace(mean=end.params["obs_moments"].mean + 1.0)}
    assert not np.allclose(policy(end.params, memory, obs, no_avail, starts)[0],
                           policy(moved, memory, obs, no_avail, starts)[0])


def test_on_smax_only_matrace_normalises_and_old_runs_resume_without_it() -> None:
    assert resolve_experiment("matrace", "smax:3m", 0).algo_config.normalize_observations
    assert not resolve_experiment("mappo", "smax:3m", 0).algo_config.normalize_observations
    assert not resolve_experiment("ippo", "smax:3m", 0).algo_config.normalize_observations
    saved = resolve_experiment("matrace", BOX, 0)
    data = saved.to_dict()
    assert data["algo_config"]["normalize_observations"] is True
    del data["algo_config"]["normalize_observations"]  # a run saved before the setting existed
    assert not experiment_from_dict(data).algo_config.normalize_observations
