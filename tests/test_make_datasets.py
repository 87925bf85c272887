"""make-datasets' scoring and level selection, with a fake run and collector (no JAX work).

The fake collector's mean return is linear in epsilon: (1 - eps) * R_policy + eps * R_random,
so every score below can be worked out by hand.
"""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from offmarl.errors import ConfigError
from offmarl.pipelines.make_datasets import (
    EVAL_SEED,
    EVALUATIONS_FILE,
    MAMUJOCO_LEVELS,
    OG_MARL_LEVELS,
    RANDOM_SEED,
    SEARCH_SEED,
    _Evaluator,
    _level_metadata,
    check_run_matches,
    check_same_settings,
    choose_behaviour,
    collect_transitions,
    dataset_settings,
    dense_checkpoint_experiment,
    level_scheme,
    make_datasets,
    vault_path,
    write_missing_cards,
)
from offmarl.runners.common import RunLock
from offmarl.utils.files import JsonlMemo, read_jsonl

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
        return SimpleNamespace(win_rate=win_rate, returns=np.full(episodes, mean), mean_length=10.0)


def make_evaluator(returns, win_rates, has_win: bool = True, random_return: float = 0.2,
                   levels=OG_MARL_LEVELS, memos=None) -> _Evaluator:
    steps = sorted({s for s, _ in returns})
    spec = SimpleNamespace(has_win=has_win)
    run = SimpleNamespace(steps=steps, params=lambda s: s, env=SimpleNamespace(spec=spec))
    return _Evaluator([run], [FakeCollector(returns, win_rates, random_return)], episodes=16, seed=7,
                      levels=levels, memos=memos)


# Two checkpoints that never win; greedy and sampled returns 0.8 / 1.0 and 0.7 / 0.9.
RETURNS = {(100, True): 0.8, (100, False): 0.7, (200, True): 1.0, (200, False): 0.9}
NO_WINS = dict.fromkeys(RETURNS, 0.0)


def test_no_wins_scores_by_return_between_random_and_best_checkpoint() -> None:
    evaluator = make_evaluator(RETURNS, NO_WINS)
    candidates = evaluator.checkpoints(lambda: None)
    assert evaluator.scoring == "return"
    # The random policy: epsilon 1 on the evaluator's own seed, after the 4 checkpoint runs.
    assert evaluator.collectors[0].calls[-1][1:3] == (7 + RANDOM_SEED, 1.0)
    assert [c[1] for c in evaluator.collectors[0].calls[:4]] == [7 + EVAL_SEED] * 4
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
    assert evaluator.band_in_returns(OG_MARL_LEVELS.bands["medium"]) == pytest.approx([0.44, 0.68])


def test_an_interrupted_scoring_repeats_no_measurement(tmp_path) -> None:
    """A second evaluator on the same memo file (a rerun after a kill) measures nothing
    again and scores exactly as the first; a torn last line costs only that measurement."""
    memo_file = tmp_path / "run" / "dataset_measurements.jsonl"
    first = make_evaluator(RETURNS, NO_WINS, memos=[JsonlMemo(memo_file)])
    expected = first.checkpoints(lambda: None)
    assert len(first.collectors[0].calls) == 5  # 4 checkpoint arms + the random policy

    rerun = make_evaluator(RETURNS, NO_WINS, memos=[JsonlMemo(memo_file)])
    assert rerun.checkpoints(lambda: None) == expected
    assert rerun.collectors[0].calls == []

    lines = memo_file.read_text().splitlines()
    memo_file.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    torn = make_evaluator(RETURNS, NO_WINS, memos=[JsonlMemo(memo_file)])
    assert torn.checkpoints(lambda: None) == expected
    assert torn.collectors[0].calls == [(200, 7 + RANDOM_SEED, 1.0, True)]  # the torn one only
    assert len(read_jsonl(memo_file)) == 5  # the re-measured line was not glued to the torn one


@pytest.mark.parametrize("threads", [1, 3])
def test_scoring_threads_change_neither_the_scores_nor_their_order(monkeypatch, tmp_path, threads: int) -> None:
    """Checkpoints are evaluated SCORING_THREADS at a time; the candidates come back in
    (run, checkpoint, greedy-then-sampled) order, each measured once and memoised once."""
    import offmarl.pipelines.make_datasets as make_datasets_module

    monkeypatch.setattr(make_datasets_module, "SCORING_THREADS", threads)
    returns = {(step, greedy): step / 1000 + 0.01 * greedy for step in range(100, 1100, 100) for greedy in (True, False)}
    memo_file = tmp_path / "dataset_measurements.jsonl"
    evaluator = make_evaluator(returns, dict.fromkeys(returns, 0.0), memos=[JsonlMemo(memo_file)])
    done = []
    candidates = evaluator.checkpoints(lambda: done.append(1))
    assert [(b.env_steps, b.greedy) for b in candidates] == [
        (step, greedy) for step in range(100, 1100, 100) for greedy in (True, False)]
    assert [b.mean_return for b in candidates] == pytest.approx([returns[b.env_steps, b.greedy] for b in candidates])
    assert len(done) == 21 and len(evaluator.collectors[0].calls) == 21  # 20 arms + the random policy
    assert len(read_jsonl(memo_file)) == 21


def test_a_failed_measurement_stops_the_scoring_without_running_the_queue(monkeypatch) -> None:
    """An error (or a signal's exception) in one evaluation ends the scoring once the ones
    already running finish; the rest of the queue is not measured."""
    import offmarl.pipelines.make_datasets as make_datasets_module

    monkeypatch.setattr(make_datasets_module, "SCORING_THREADS", 2)
    returns = {(step, greedy): 0.5 for step in range(100, 2100, 100) for greedy in (True, False)}
    evaluator = make_evaluator(returns, dict.fromkeys(returns, 0.0))
    collector = evaluator.collectors[0]
    healthy = collector.collect

    def collect(params, *args):
        time.sleep(0.05)  # an evaluation takes time: the queue is still long when one fails
        if params == 300:
            raise KeyboardInterrupt
        return healthy(params, *args)

    collector.collect = collect
    with pytest.raises(KeyboardInterrupt):
        evaluator.checkpoints(lambda: None)
    assert len(collector.calls) <= 10  # of 40: the queue was cancelled


def test_levels_by_return_good_is_best_checkpoint_medium_and_poor_epsilon_mixed() -> None:
    evaluator = make_evaluator(RETURNS, NO_WINS)
    candidates = evaluator.checkpoints(lambda: None)

    good, note = choose_behaviour("good", candidates, evaluator)
    assert (good.env_steps, good.greedy, good.epsilon, good.score) == (200, True, 0.0, 1.0)
    assert note == "checkpoint in band"

    # No checkpoint scores in 0.3-0.6: the weakest above (100 sampled, score 0.625) is mixed.
    # eps 0.5: return 0.45, score 0.3125, in the band at the first bisection step.
    before = len(evaluator.collectors[0].calls)
    medium, note = choose_behaviour("medium", candidates, evaluator)
    assert (medium.env_steps, medium.greedy, medium.epsilon) == (100, False, 0.5)
    assert medium.mean_return == pytest.approx(0.45) and medium.score == pytest.approx(0.3125)
    assert note == "epsilon-mixed checkpoint 100 to reach the band"
    assert evaluator.collectors[0].calls[before:] == [(100, 7 + SEARCH_SEED, 0.5, False)]

    # eps 0.5 -> 0.3125, 0.75 -> 0.15625 (both above 0.15), 0.875 -> 0.078125.
    poor, note = choose_behaviour("poor", candidates, evaluator)
    assert (poor.env_steps, poor.epsilon) == (100, 0.875)
    assert poor.score == pytest.approx(0.078125) and poor.mean_return == pytest.approx(0.2625)
    assert note == "epsilon-mixed checkpoint 100 to reach the band"

    meta = _level_metadata("poor", evaluator)
    assert meta["scoring"] == "return" and meta["quality_band"] == [0.0, 0.15]
    assert meta["quality_band_return"] == pytest.approx([0.2, 0.32])
    assert meta["selection_eval_episodes"] == 16


def test_box_actions_get_mamujoco_levels_expert_best_medium_a_third_to_a_half() -> None:
    assert level_scheme("mpe:simple_spread_continuous") is MAMUJOCO_LEVELS
    assert level_scheme("mabrax:hopper_3x1") is MAMUJOCO_LEVELS
    assert level_scheme("smax:3m") is OG_MARL_LEVELS
    assert MAMUJOCO_LEVELS.uids == ["expert", "medium", "medium-replay", "medium-expert"]
    assert OG_MARL_LEVELS.uids == ["good", "medium", "poor", "replay", "mixed"]

    evaluator = make_evaluator(RETURNS, None, has_win=False, levels=MAMUJOCO_LEVELS)
    candidates = evaluator.checkpoints(lambda: None)  # scores 0.75, 0.625, 1.0, 0.875 (as above)
    expert, note = choose_behaviour("expert", candidates, evaluator)
    assert (expert.env_steps, expert.greedy, expert.score, note) == (200, True, 1.0, "checkpoint in band")
    # Weakest above 1/2 is 100 sampled (0.625). eps 0.5: return 0.45, score 0.3125 < 1/3;
    # eps 0.25: return 0.75 * 0.7 + 0.25 * 0.2 = 0.575, score 0.46875, in [1/3, 1/2].
    medium, note = choose_behaviour("medium", candidates, evaluator)
    assert (medium.env_steps, medium.greedy, medium.epsilon) == (100, False, 0.25)
    assert medium.score == pytest.approx(0.46875) and note == "epsilon-mixed checkpoint 100 to reach the band"
    assert _level_metadata("medium", evaluator)["quality_band_return"] == pytest.approx([0.4667, 0.6], abs=1e-4)


def test_win_rate_scoring_when_the_best_checkpoint_reaches_the_medium_band() -> None:
    win_rates = {(100, True): 0.5, (100, False): 0.3, (200, True): 0.9, (200, False): 0.7}
    evaluator = make_evaluator(RETURNS, win_rates)
    candidates = evaluator.checkpoints(lambda: None)
    assert evaluator.scoring == "win_rate" and evaluator.scoring_metadata() == {"scoring": "win_rate"}
    assert len(evaluator.collectors[0].calls) == 4  # no random-policy evaluation
    assert {(b.env_steps, b.greedy): b.score for b in candidates} == win_rates
    medium, note = choose_behaviour("medium", candidates, evaluator)
    assert (medium.env_steps, medium.greedy, medium.score, note) == (100, True, 0.5, "checkpoint in band")
    assert "quality_band_return" not in _level_metadata("medium", evaluator)


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


def test_runs_share_one_scale_and_each_level_is_chosen_within_each_run() -> None:
    """Two runs, no wins: the anchors are the random policy (measured once) and the best
    checkpoint of *either* run; every run contributes its own policy to each level."""
    weak = {(100, True): 0.4, (100, False): 0.3, (200, True): 0.6, (200, False): 0.5}
    spec = SimpleNamespace(has_win=True)
    runs = [SimpleNamespace(steps=[100, 200], params=lambda s: s, env=SimpleNamespace(spec=spec))] * 2
    collectors = [FakeCollector(RETURNS, NO_WINS, 0.2), FakeCollector(weak, dict.fromkeys(weak, 0.0), 0.2)]
    evaluator = _Evaluator(runs, collectors, episodes=16, seed=7, epsilon=0.05)
    candidates = evaluator.checkpoints(lambda: None)
    assert evaluator.scoring == "return" and evaluator.best_return == pytest.approx(0.95 * 1.0 + 0.05 * 0.2)
    assert len(collectors[0].calls) == 5 and len(collectors[1].calls) == 4  # the random policy once
    assert all(call[2] == 0.05 for c in collectors for call in c.calls[:4])  # rollout epsilon
    good = [choose_behaviour("good", [b for b in candidates if b.run == r], evaluator)[0] for r in (0, 1)]
    assert [(b.run, b.env_steps, b.greedy) for b in good] == [(0, 200, True), (1, 200, True)]
    assert good[0].score == pytest.approx(1.0) and good[1].score < 0.6


class LengthCollector:
    """Episodes of a fixed length, as real CollectedEpisodes: the n-th call's episodes have
    the n-th of `lengths` (the last one repeats)."""

    def __init__(self, *lengths: int) -> None:
        self.lengths, self.calls = lengths, []

    def collect(self, params, episodes: int, seed: int, epsilon: float, greedy: bool):
        from offmarl.data.collect import CollectedEpisodes
        from offmarl.data.dataset import OfflineDataset

        length = self.lengths[min(len(self.calls), len(self.lengths) - 1)]
        self.calls.append((episodes, seed))
        steps, n = episodes * length, 2
        ends = np.zeros((steps, n), np.float32)
        ends[length - 1 :: length] = 1
        dataset = OfflineDataset(
            observations=np.zeros((steps, n, 3), np.float32), actions=np.zeros((steps, n), np.int32),
            rewards=np.zeros((steps, n), np.float32), terminals=ends, truncations=np.zeros_like(ends),
            states=np.zeros((steps, 4), np.float32), legals=np.ones((steps, n, 2), np.float32))
        return CollectedEpisodes(dataset, np.zeros(episodes, np.float32), None)


def test_collect_transitions_tops_up_when_episodes_are_shorter_than_estimated() -> None:
    collector = LengthCollector(4)
    got = collect_transitions(collector, None, transitions=100, mean_length=10.0, seed=3, epsilon=0.05, greedy=False)
    assert got.dataset.num_transitions >= 100 and got.dataset.num_episodes == got.returns.shape[0]
    assert len(collector.calls) >= 2 and len({seed for _, seed in collector.calls}) == len(collector.calls)
    assert collector.calls[0][0] == 11  # ceil(1.05 * 100 / 10)
    exact = LengthCollector(10)
    assert collect_transitions(exact, None, 100, 10.0, 0, 0.0, True).dataset.num_transitions == 110
    assert len(exact.calls) == 1


def test_collect_transitions_top_up_is_not_sized_by_a_batch_of_short_episodes() -> None:
    """A first batch that happens to fall at once (length 1) must not size a top-up of a
    thousand 50-step episodes (52k transitions for a target of 1,000): top-ups grow at most
    TOP_UP_GROWTH-fold, so the result stays within a few times the target."""
    collector = LengthCollector(1, 50)
    got = collect_transitions(collector, None, transitions=1000, mean_length=100.0, seed=0, epsilon=0.0, greedy=False)
    assert [episodes for episodes, _ in collector.calls] == [11, 22]  # ceil(1.05 * 1000 / 100), then 2 x 11
    assert got.dataset.num_transitions == 11 * 1 + 22 * 50


def test_make_datasets_end_to_end_on_xor_writes_five_vaults_with_cards(tmp_path, capsys) -> None:
    """Two tiny MA-Trace runs on matrix:xor: every uid exists with its card, its sources
    name both runs, every dataset reaches its transition target, mixed is the union. A
    rerun writes a missing card and refuses other settings."""
    from offmarl.cli import main
    from offmarl.data.vault import list_uids, load_vault, vault_metadata

    out = tmp_path / "ds"
    argv = ["make-datasets", "--env", "matrix:xor", "--out", str(out), "--seeds", "0,1",
            "--env-steps", "8192", "--transitions", "120", "--quiet"]
    assert main(argv) == 0
    vault = out / "matrix_xor.vlt"
    assert sorted(list_uids(vault)) == sorted(["good", "medium", "poor", "replay", "mixed"])
    sizes = {}
    for uid in ("good", "medium", "poor", "replay"):
        meta = vault_metadata(vault, uid)
        assert [s["run_seed"] for s in meta["sources"]] == [0, 1], uid
        assert all(s["epsilon"] >= 0.05 for s in meta["sources"])
        sizes[uid] = load_vault(vault, uid).num_transitions
        assert sizes[uid] >= 120 and (vault / f"{uid}.md").exists() and (vault / f"{uid}_returns.png").exists()
    card = (vault / "medium.md").read_text()
    assert "## Sources" in card and card.count("/runs/matrace_matrix_xor_s") == 2
    assert load_vault(vault, "mixed").num_transitions == sizes["good"] + sizes["medium"] + sizes["poor"]
    assert len(vault_metadata(vault, "mixed")["sources"]) == 6
    # The replay starts where training started: the untrained policy, then checkpoints.
    for source in vault_metadata(vault, "replay")["sources"]:
        assert source["checkpoints"][0] == 0 and len(source["checkpoints"]) >= 2
    recorded = json.loads((vault / "checkpoint_evaluations.json").read_text())
    assert (recorded["rollout_epsilon"], recorded["transitions_per_dataset"], recorded["run_env_steps"]) == (
        0.05, 120, [8192, 8192])
    # A kill between a dataset and its card: the rerun writes the card.
    (vault / "medium.md").unlink()
    assert main(argv) == 0  # a rerun keeps every dataset and retrains nothing
    assert (vault / "medium.md").exists()
    # A rerun with another rollout epsilon would describe the datasets wrongly: refused.
    capsys.readouterr()
    assert main([*argv, "--epsilon", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rollout_epsilon (--epsilon) 0.05, now 0.1" in err, err


@pytest.mark.slow
def test_make_datasets_on_box_actions_writes_the_four_mamujoco_datasets(tmp_path) -> None:
    """One tiny MA-Trace run on continuous MPE: expert, medium, medium-replay and
    medium-expert exist as float-action vaults without masks, with cards, and
    medium-expert is the union of medium and expert."""
    from offmarl.cli import main
    from offmarl.data.vault import list_uids, load_vault, vault_metadata

    out = tmp_path / "ds"
    argv = ["make-datasets", "--env", "mpe:simple_spread_continuous", "--out", str(out), "--seeds", "0",
            "--env-steps", "4096", "--transitions", "100", "--quiet"]
    assert main(argv) == 0
    vault = out / "mpe_simple_spread_continuous.vlt"
    assert sorted(list_uids(vault)) == sorted(MAMUJOCO_LEVELS.uids)
    sizes = {}
    for uid in MAMUJOCO_LEVELS.uids:
        data = load_vault(vault, uid)
        assert data.continuous and data.actions.dtype == np.float32 and data.actions.shape[-1] == 5, uid
        assert float(data.actions.min()) >= 0.0 and float(data.actions.max()) <= 1.0, uid
        assert (vault / f"{uid}.md").exists(), uid
        sizes[uid] = data.num_transitions
    assert min(sizes.values()) >= 100
    assert sizes["medium-expert"] == sizes["medium"] + sizes["expert"]
    meta = vault_metadata(vault, "medium")
    assert meta["scoring"] == "return" and meta["quality_band"] == pytest.approx([1 / 3, 1 / 2])
    assert vault_metadata(vault, "medium-expert")["mixed_of"] == ["medium", "expert"]


@pytest.mark.parametrize("env_steps", [3_000_000, 1_000_000])
def test_dense_checkpoints_fall_on_every_training_chunk(env_steps: int) -> None:
    """The checkpoint interval is whole updates and equals the chunk (eval_interval), so a
    run keeps num_checkpoints checkpoints, not every second one (3M steps on 3m, 4,096-step
    updates: 20 at 147,456 steps, where 150,000 gave 10)."""
    run = dense_checkpoint_experiment("smax:3m", 0, env_steps, 20).run_config
    assert (run.eval_episodes, run.final_eval_episodes) == (16, 64)
    assert run.checkpoint_interval % run.steps_per_update == 0
    assert run.eval_interval == run.checkpoint_interval
    assert run.num_updates // (run.checkpoint_interval // run.steps_per_update) == 20


def test_the_runs_evaluations_do_not_change_what_they_train(tmp_path) -> None:
    """make-datasets' runs evaluate on fewer episodes than the defaults; the checkpoints
    (hence the datasets) must not depend on that: evaluations draw from their own seeds."""
    from offmarl.cli import main
    from offmarl.runners.saved import SavedRun

    checkpoints = []
    for episodes in (2, 8):
        out = tmp_path / f"eval{episodes}"
        argv = ["train", "--algo", "matrace", "--env", "matrix:xor", "--env-steps", "1024", "--out", str(out),
                "--quiet", "num_envs=8", "unroll_length=8", "eval_interval=256", "checkpoint_interval=256",
                f"eval_episodes={episodes}", f"final_eval_episodes={episodes}"]
        assert main(argv) == 0
        run = SavedRun.open(out)
        assert run.steps == [256, 512, 768, 1024][-len(run.steps):] and len(run.steps) >= 3
        checkpoints.append([jax.tree.leaves(run.params(step)) for step in run.steps])
    for few, many in zip(*checkpoints):
        for a, b in zip(few, many):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(checkpoints[0][0][0]), np.asarray(checkpoints[0][-1][0]))


def test_recorded_settings_that_differ_are_refused_naming_both_values(tmp_path) -> None:
    """A rerun with another epsilon, size, budget or set of runs would add datasets unlike
    the recorded ones; settings an older record lacks are accepted."""
    vault = tmp_path / "matrix_xor.vlt"
    vault.mkdir()
    runs = [tmp_path / "runs" / "a", tmp_path / "runs" / "b"]
    sources = [dense_checkpoint_experiment("matrix:xor", seed, 8192, 4) for seed in (0, 1)]
    settings = dataset_settings("matrix:xor", runs, sources, 0.05, 120, 128)
    assert settings["run_env_steps"] == [8192, 8192] and settings["run_checkpoint_intervals"] == [4096, 4096]
    check_same_settings(vault, settings)  # nothing recorded yet
    (vault / EVALUATIONS_FILE).write_text(json.dumps({**settings, "seed": 1000, "evaluations": []}))
    check_same_settings(vault, settings)
    for key, value, message in [
        ("rollout_epsilon", 0.1, "rollout_epsilon (--epsilon) 0.05, now 0.1"),
        ("transitions_per_dataset", 240, "transitions_per_dataset (--transitions) 120, now 240"),
        ("run_env_steps", [16384, 16384], "run_env_steps (--env-steps) 8192,8192, now 16384,16384"),
        ("run_checkpoint_intervals", [1024, 1024], "run_checkpoint_intervals (the runs' checkpoint spacing, "
                                                   "num_checkpoints) 4096,4096, now 1024,1024"),
        ("source_runs", settings["source_runs"][:1], f"(--seeds or --runs) {runs[0]},{runs[1]}, now {runs[0]}"),
    ]:
        with pytest.raises(ConfigError) as raised:
            check_same_settings(vault, {**settings, key: value})
        text = str(raised.value)
        assert message in text and "choose a new --out" in text and "\n" not in text, text

    older = {key: settings[key] for key in ("source_runs", "episodes_each", "rollout_epsilon")}
    (vault / EVALUATIONS_FILE).write_text(json.dumps(older))
    check_same_settings(vault, {**settings, "transitions_per_dataset": 240, "run_env_steps": [1, 1]})
    with pytest.raises(ConfigError, match="episodes_each"):
        check_same_settings(vault, {**settings, "episodes_each": 64})


def test_a_run_folder_trained_with_another_config_is_refused(tmp_path) -> None:
    """A run folder is reused (or resumed) only with the config planned for it; its own
    evaluation settings and settings its config.json lacks (added since) do not count."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    planned = dense_checkpoint_experiment("matrix:xor", 0, 8192, 20)
    check_run_matches(planned, run_dir)  # no run there yet
    saved = planned.to_dict()
    saved["run_config"].update(eval_episodes=64, final_eval_episodes=256)
    del saved["run_config"]["actor_threads"]  # older runs lack it (they resume with 1)
    (run_dir / "config.json").write_text(json.dumps(saved))
    check_run_matches(planned, run_dir)
    with pytest.raises(ConfigError, match=re.escape(f"run '{run_dir}' was trained with run_config.env_steps=8192, "
                                                    "not 16384 as planned now")):
        check_run_matches(dense_checkpoint_experiment("matrix:xor", 0, 16384, 20), run_dir)
    with pytest.raises(ConfigError, match="trained with seed=0, not 1 "):
        check_run_matches(dense_checkpoint_experiment("matrix:xor", 1, 8192, 20), run_dir)


def test_make_datasets_refuses_a_mismatched_run_before_training(tmp_path) -> None:
    """--env-steps other than the existing run's: refused before anything trains, and the
    vault folder made for the lock is removed again."""
    out = tmp_path / "ds"
    run_dir = out / "runs" / "matrace_matrix_xor_s0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(dense_checkpoint_experiment("matrix:xor", 0, 8192, 20).to_dict()))
    with pytest.raises(ConfigError, match="run_config.env_steps=8192, not 16384"):
        make_datasets("matrix:xor", out, seeds=[0], env_steps=16384, transitions=120, quiet=True)
    assert [p.name for p in run_dir.iterdir()] == ["config.json"]
    assert not vault_path(out, "matrix:xor").exists()


def test_a_vault_in_use_exits_2_before_any_work(tmp_path, capsys) -> None:
    """Two make-datasets on one vault would both score for hours: the second stops at once."""
    from offmarl.cli import main

    out = tmp_path / "ds"
    vault = vault_path(out, "matrix:xor")
    lock = RunLock.acquire(vault)
    try:
        argv = ["make-datasets", "--env", "matrix:xor", "--out", str(out), "--seeds", "0", "--env-steps", "8192",
                "--transitions", "120", "--quiet"]
        assert main(argv) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"vault '{vault}' is in use by another offmarl process" in err, err
    assert not (out / "runs").exists()


def test_write_missing_cards_writes_only_the_cards_that_are_missing(tmp_path) -> None:
    from offmarl.data.vault import write_vault

    vault = tmp_path / "matrix_xor.vlt"
    write_vault(LengthCollector(4).collect(None, 3, 0, 0.0, True).dataset, vault, "good", {})
    assert write_missing_cards(vault, ["good", "medium"]) == ["good"]  # medium is not in the vault
    assert (vault / "good.md").exists() and (vault / "good_returns.png").exists()
    assert write_missing_cards(vault, ["good", "medium"]) == []
