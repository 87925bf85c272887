"""Learning on a tiny budget, fixed seed, generous thresholds (slow: about a minute)."""

from __future__ import annotations

import jax
import pytest

from offmarl.algos import MATrace
from offmarl.evaluation.evaluate import make_evaluator, summarise
from offmarl.runners.experiment import resolve_experiment
from offmarl.runners.fused import FusedTrainer


@pytest.mark.slow
def test_matrace_learns_to_win_3m_on_a_tiny_budget(smax_3m) -> None:
    experiment = resolve_experiment("matrace", "smax:3m", 0, {"env_steps": 1_000_000})
    algo = MATrace(experiment.algo_config, smax_3m.spec)
    trainer = FusedTrainer(experiment.run_config, algo, smax_3m)
    evaluate = make_evaluator(smax_3m, algo, 128)
    eval_key = jax.random.PRNGKey(123)
    state = trainer.init(jax.random.PRNGKey(0))
    before = summarise(evaluate(state.params, eval_key, False))
    state, episodes, metrics = trainer.train(state, experiment.run_config.num_updates)
    after = summarise(evaluate(state.params, eval_key, True))
    assert before["win_rate"] <= 0.15, before
    assert after["win_rate"] >= 0.45, after
    assert after["return"] > before["return"] + 0.5
    assert float(episodes.wins) / float(episodes.episodes) > before["win_rate"]
