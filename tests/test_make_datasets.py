"""make-datasets' scoring and level selection, with a fake run and collector (no JAX work).

The fake collector's mean return is linear in epsilon: (1 - eps) * R_policy + eps * R_random,
so every score below can be worked out by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from offmarl.pipelines.make_datasets import (
    EVAL_SEED,
    QUALITY_BANDS,
    RANDOM_SEED,
    SEARCH_SEED,
    _Evaluator,
    _level_metadata,
    choose_behaviour,
)

class FakeCollector:
    """Returns `episodes` copies of a fixed return per (checkpoint, greedy), mixed with
    the random policy's return by epsilon; records every call."""

    def __init__(self, returns: dict[tuple[int, bool], float],
                 win_rates: dict[tuple[int, bool], float] | None, random_return: float) -> None:
        self.returns, self.win_rates, self.random_return = returns, win_rates, random_return
        self.calls: list[tuple[int, int, float, bool]] = []

    def collect(self, params: int, episodes: int, seed: int, epsilon: float, greedy: bool):
        self.calls.append((params, seed, epsilon, greedy))
        mean = (1 - epsilon) * self.returns[params, greedy] + epsilon * self.random_return
        win_rate = None if self.win_rates is None else (1 - epsilon) * self.win_rates[params, greedy]
        return SimpleNamespace(win_rate=win_rate, returns=np.full(episodes, mean))


def make_evaluator(returns, win_rates, has_win: bool = True, random_return: float = 0.2) -> _Evaluator:
    steps = sorted({s for s, _ in returns})
    spec = SimpleNamespace(has_win=has_win)
    run = SimpleNamespace(steps=steps, params=lambda s: s, env=SimpleNamespace(spec=spec))
    return _Evaluator(run, FakeCollector(returns, win_rates, random_return), episodes=16, seed=7)


# Two checkpoints that never win; greedy and sampled returns 0.8 / 1.0 and 0.7 / 0.9.
RETURNS = {(100, True): 0.8, (100, False): 0.7, (200, True): 1.0, (200, False): 0.9}
NO_WINS = dict.fromkeys(RETURNS, 0.0)


def test_no_wins_scores_by_return_between_random_and_best_checkpoint() -> None:
    evaluator = make_evaluator(RETURNS, NO_WINS)
    candidates = evaluator.checkpoints(lambda: None)
    assert evaluator.scoring == "return"
    # The random policy: epsilon 1 on the evaluator's own seed, after the 4 checkpoint runs.
    assert evaluator.collector.calls[-1][1:3] == (7 + RANDOM_SEED, 1.0)
    assert [c[1] for c in evaluator.collector.calls[:4]] == [7 + EVAL_SEED] * 4
    assert evaluator.random_return == pytest.approx(0.2) and evaluator.best_return == pytest.approx(1.0)
    scores = {(b.env_steps, b.greedy): b.score for b in candidates}
    # (R - 0.2) / (1.0 - 0.2)
    assert scores == pytest.approx(
        {(100, True): 0.75, (100, False): 0.625, (200, True): 1.0, (200, False): 0.875})
    assert all(b.win_rate == 0.0 and b.epsilon == 0.0 for b in candidates)
    assert evaluator.scoring_metadata() == {
        "scoring": "return", "score_0_return": pytest.approx(0.2), "score_1_return": pytest.approx(1.0),
        "random_policy_win_rate": 0.0, "random_policy_seed": 7 + RANDOM_SEED,
    }
    assert evaluator.band_in_returns(QUALITY_BANDS["medium"]) == pytest.approx([0.44, 0.68])


def test_levels_by_return_good_is_best_checkpoint_medium_and_poor_epsilon_mixed() -> None:
    evaluator = make_evaluator(RETURNS, NO_WINS)
    candidates = evaluator.checkpoints(lambda: None)

    good, note = choose_behaviour("good", candidates, evaluator)
    assert (good.env_steps, good.greedy, good.epsilon, good.score) == (200, True, 0.0, 1.0)
    assert note == "checkpoint in band"

    # No checkpoint scores in 0.3-0.6: the weakest above (100 sampled, score 0.625) is mixed.
    # eps 0.5: return 0.45, score 0.3125, in the band at the first bisection step.
    before = len(evaluator.collector.calls)
    medium, note = choose_behaviour("medium", candidates, evaluator)
    assert (medium.env_steps, medium.greedy, medium.epsilon) == (100, False, 0.5)
    assert medium.mean_return == pytest.approx(0.45) and medium.score == pytest.approx(0.3125)
    assert note == "epsilon-mixed checkpoint 100 to reach the band"
    assert evaluator.collector.calls[before:] == [(100, 7 + SEARCH_SEED, 0.5, False)]

    # eps 0.5 -> 0.3125, 0.75 -> 0.15625 (both above 0.15), 0.875 -> 0.078125.
    poor, note = choose_behaviour("poor", candidates, evaluator)
    assert (poor.env_steps, poor.epsilon) == (100, 0.875)
    assert poor.score == pytest.approx(0.078125) and poor.mean_return == pytest.approx(0.2625)
    assert note == "epsilon-mixed checkpoint 100 to reach the band"

    meta = _level_metadata("poor", poor, note, evaluator)
    assert meta["scoring"] == "return" and meta["quality_band"] == [0.0, 0.15]
    assert meta["quality_band_return"] == pytest.approx([0.2, 0.32])
    assert meta["selection_eval_score"] == pytest.approx(0.078125)
    assert meta["selection_eval_win_rate"] == 0.0 and meta["selection_eval_episodes"] == 16


def test_win_rate_scoring_when_the_best_checkpoint_reaches_the_medium_band() -> None:
    win_rates = {(100, True): 0.5, (100, False): 0.3, (200, True): 0.9, (200, False): 0.7}
    evaluator = make_evaluator(RETURNS, win_rates)
    candidates = evaluator.checkpoints(lambda: None)
    assert evaluator.scoring == "win_rate" and evaluator.scoring_metadata() == {"scoring": "win_rate"}
    assert len(evaluator.collector.calls) == 4  # no random-policy evaluation
    assert {(b.env_steps, b.greedy): b.score for b in candidates} == win_rates
    medium, note = choose_behaviour("medium", candidates, evaluator)
    assert (medium.env_steps, medium.greedy, medium.score, note) == (100, True, 0.5, "checkpoint in band")
    assert "quality_band_return" not in _level_metadata("medium", medium, note, evaluator)


def test_best_win_rate_just_below_the_medium_edge_switches_to_return() -> None:
    win_rates = {(100, True): 0.1, (100, False): 0.0, (200, True): 0.29, (200, False): 0.2}
    evaluator = make_evaluator(RETURNS, win_rates)
    candidates = evaluator.checkpoints(lambda: None)
    assert evaluator.scoring == "return"
    assert max(b.score for b in candidates) == pytest.approx(1.0)
    assert [b.win_rate for b in candidates] == [0.1, 0.0, 0.29, 0.2]  # still recorded


def test_no_win_condition_scores_by_return_too() -> None:
    returns = {(100, True): -30.0, (100, False): -34.0, (200, True): -22.0, (200, False): -26.0}
    evaluator = make_evaluator(returns, None, has_win=False, random_return=-42.0)
    candidates = evaluator.checkpoints(lambda: None)
    assert evaluator.random_return == -42.0 and evaluator.best_return == -22.0
    # (R + 42) / 20, no longer rescaled over the checkpoints alone (that gave 0.333 for -30).
    assert [b.score for b in candidates] == pytest.approx([0.6, 0.4, 1.0, 0.8])
    medium, note = choose_behaviour("medium", candidates, evaluator)
    assert (medium.env_steps, medium.greedy, note) == (100, False, "checkpoint in band")
    assert evaluator.scoring_metadata()["random_policy_win_rate"] is None
