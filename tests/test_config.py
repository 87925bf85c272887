"""Config layering: defaults < file < flags < key=value, typed coercion, the paper preset."""

from __future__ import annotations

from pathlib import Path

import pytest

from offmarl.algos import ALGORITHMS
from offmarl.config import load_config_file
from offmarl.errors import ConfigError
from offmarl.runners.experiment import resolve_experiment, resolve_offline_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_layers_apply_in_order_and_coerce_types(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[algo]\ncritic = "state"\nhidden_sizes = [32, 16]\n[run]\nlr = 1e-3\n')
    exp = resolve_experiment("matrace", "smax:3m", 1, load_config_file(path),
                             {"lr": "2e-4", "agent_id": "true", "num_envs": "64"})
    assert exp.algo_config.critic == "state"
    assert exp.algo_config.hidden_sizes == (32, 16)
    assert exp.algo_config.agent_id is True
    assert exp.run_config.lr == pytest.approx(2e-4)
    assert exp.run_config.num_envs == 64 and isinstance(exp.run_config.num_envs, int)


def test_paper_preset_is_valid_and_matches_released_code() -> None:
    exp = resolve_experiment("matrace", "smax:3m", 0, load_config_file(ROOT / "configs/paper.toml"))
    assert exp.algo_config.entropy_mode == "adaptive" and exp.algo_config.target_entropy == 1e-5
    assert (exp.run_config.num_envs, exp.run_config.unroll_length, exp.run_config.lr) == (32, 100, 1e-3)
    assert exp.run_config.num_minibatches == 1 and exp.run_config.max_grad_norm == 0.0
    assert not exp.algo_config.normalize_observations and exp.algo_config.behaviour_kl_cost == 0.0


@pytest.mark.parametrize("text,message", [
    ("lr = 'fast'", "lr='fast' must be a float"),
    ("num_envs = 1.5", "num_envs=1.5 must be a whole number, e.g. 1000000 or 1e6"),
    ("agent_id = 'maybe'", "agent_id='maybe' is invalid; valid choices: true, false"),
    ("lr = [", "is not valid"),
])
def test_bad_config_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        resolve_experiment("matrace", "smax:3m", 0, load_config_file(path))


def test_missing_or_unknown_config_file_types(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.toml")
    (tmp_path / "c.yaml").write_text("lr: 1\n")
    with pytest.raises(ConfigError, match="must end in .json or .toml"):
        load_config_file(tmp_path / "c.yaml")


OFFLINE_ALGOS = [name for name, entry in ALGORITHMS.items() if entry.kind == "offline"]


@pytest.mark.parametrize("algo", OFFLINE_ALGOS)
def test_env_families_get_their_offline_defaults_that_the_user_overrides(algo: str) -> None:
    game = resolve_offline_experiment(algo, "matrix:xor", "02_20", 0)
    assert game.algo_config.hidden_sizes == (64, 64)
    assert (game.run_config.steps, game.run_config.eval_interval) == (2_000, 1_000)
    assert resolve_offline_experiment(algo, "bridge", "mix", 0).run_config.steps == 10_000
    mine = resolve_offline_experiment(algo, "matrix:xor", "02_20", 0, {"steps": 500, "hidden_sizes": "32"})
    assert (mine.run_config.steps, mine.algo_config.hidden_sizes) == (500, (32,))
    smax = resolve_offline_experiment(algo, "smax:3m", "x.vlt:good", 0)
    assert smax.algo_config.hidden_sizes == (256, 256) and smax.run_config.steps == 20_000
    if ALGORITHMS[algo].continuous:
        hopper = resolve_offline_experiment(algo, "mabrax:hopper_3x1", "x.vlt:medium", 0)
        assert hopper.algo_config.hidden_sizes == (64, 64)
        assert (hopper.run_config.steps, hopper.run_config.final_eval_episodes) == (100_000, 128)
