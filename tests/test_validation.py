"""Bad input is refused at the root, with one line naming the bad value and the valid
choices: numbers that are not finite in float32 or do not fit int64, counts written as
1e6, config-file sections, matrix-game files, vaults with no legal action, and the
policy-lag cap. Field docstrings are readable for help texts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_vault import flashbax_vault, make_dataset, og_marl_experience, tree_hashes

from offmarl import config
from offmarl.algos import ALGORITHMS
from offmarl.algos.matrace import MATraceConfig
from offmarl.cli import main
from offmarl.config import load_config_file
from offmarl.data.builtin import load_builtin_dataset
from offmarl.data.vault import load_vault, write_vault
from offmarl.envs import make_env
from offmarl.errors import ConfigError
from offmarl.runners.experiment import resolve_experiment
from offmarl.runners.config import OfflineConfig, OnlineConfig

FLOAT32_MAX = float(np.finfo(np.float32).max)


def _error(*layers: dict) -> str:
    with pytest.raises(ConfigError) as err:
        resolve_experiment("matrace", "smax:3m", 0, *layers)
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be refused before an online run starts; fail fast if it is not."""
    from offmarl.runners.online import OnlineRun

    def refuse(*args, **kwargs):
        raise AssertionError("the bad input was accepted: an online run was created")

    monkeypatch.setattr(OnlineRun, "create", refuse)


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("offmarl: error: ")
    return err


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- floats: finite in float32


@pytest.mark.parametrize("override,message", [
    ({"lr": "inf"}, "lr=inf is invalid: must be a finite number (float32)"),
    ({"lr": "1e39"}, "lr=1e39 is invalid: must be a finite number (float32)"),
    ({"lr": "-1e39"}, "lr=-1e39 is invalid: must be a finite number (float32)"),
    ({"gamma": "nan"}, "gamma=nan is invalid: must be a finite number (float32)"),
    ({"max_grad_norm": "-inf"}, "max_grad_norm=-inf is invalid: must be a finite number (float32)"),
    ({"lr": 1e39}, "lr=1e+39 is invalid: must be a finite number (float32)"),
    ({"lr": 10**400}, "lr=<a 1329-bit integer> is invalid: must be a finite number (float32)"),
])
def test_floats_not_finite_in_float32_are_refused(override: dict, message: str) -> None:
    got = _error(override)
    assert message in got
    assert f"at most {FLOAT32_MAX:.8g} in magnitude" in got


def test_float32_max_itself_is_accepted() -> None:
    assert config.FLOAT32_MAX == FLOAT32_MAX
    exp = resolve_experiment("matrace", "smax:3m", 0, {"target_entropy": repr(FLOAT32_MAX)})
    assert exp.algo_config.target_entropy == FLOAT32_MAX
    assert "target_entropy=3.5e38 is invalid" in _error({"target_entropy": "3.5e38"})


@pytest.mark.parametrize("text,message", [
    ("[run]\nlr = inf\n", "lr=inf is invalid: must be a finite number (float32)"),
    ("[algo]\ngamma = nan\n", "gamma=nan is invalid: must be a finite number (float32)"),
    ("[run]\nlr = 1e39\n", "lr=1e+39 is invalid: must be a finite number (float32)"),
])
def test_config_file_floats_not_finite_in_float32_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    assert message in _error(load_config_file(_write(tmp_path, "c.toml", text)))


def test_json_nan_and_infinity_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.json", '{"run": {"lr": Infinity}}')
    assert "lr=inf is invalid: must be a finite number (float32)" in _error(load_config_file(path))
    path = _write(tmp_path, "d.json", '{"algo": {"gamma": NaN}}')
    assert "gamma=nan is invalid: must be a finite number (float32)" in _error(load_config_file(path))


@pytest.mark.parametrize("word,message", [
    ("lr=inf", "lr=inf is invalid: must be a finite number (float32)"),
    ("lr=1e39", "lr=1e39 is invalid: must be a finite number (float32)"),
    ("gamma=nan", "gamma=nan is invalid: must be a finite number (float32)"),
])
def test_cli_refuses_non_float32_numbers_with_exit_2(
    word: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture, no_training: None
) -> None:
    out = tmp_path / "run"
    assert message in _cli_error(["train", "--env", "smax:3m", "--out", str(out), word], capsys)
    assert not out.exists()


def test_validate_refuses_non_finite_floats_set_in_python() -> None:
    with pytest.raises(ConfigError, match=r"^lr=inf is invalid: must be a finite number \(float32\)$"):
        OnlineConfig(lr=float("inf")).validate()
    with pytest.raises(ConfigError, match=r"^adam_eps=0.0 is invalid: must be > 0$"):
        OnlineConfig(adam_eps=0.0).validate()


# ---------------------------------------------------------------- ints: 1e6, int64


def test_int_fields_take_whole_numbers_in_scientific_notation_and_refuse_overflow(tmp_path: Path) -> None:
    for text, value in [("1e6", 1_000_000), ("2.5e6", 2_500_000), ("1_000_000", 1_000_000),
                        ("1E7", 10_000_000), (3e6, 3_000_000), ("9223372036854775807", 2**63 - 1)]:
        run = resolve_experiment("matrace", "smax:3m", 0, {"env_steps": text}).run_config
        assert run.env_steps == value and type(run.env_steps) is int, text
    path = _write(tmp_path, "c.toml", "[run]\nenv_steps = 2.5e6\neval_interval = 1e5\n")
    run = resolve_experiment("matrace", "smax:3m", 0, load_config_file(path)).run_config
    assert (run.env_steps, run.eval_interval) == (2_500_000, 100_000)
    assert type(run.env_steps) is int and type(run.eval_interval) is int
    # 1e999 is a whole number too, but no int64: one line, not an OverflowError traceback.
    assert "env_steps=1e999 is invalid" in _error({"env_steps": "1e999"})


@pytest.mark.parametrize("value,message", [
    ("1e999", "env_steps=1e999 is invalid: must be a finite whole number within int64"),
    ("inf", "env_steps=inf is invalid: must be a finite whole number within int64"),
    (float("inf"), "env_steps=inf is invalid: must be a finite whole number within int64"),
    ("9223372036854775808", "env_steps=9223372036854775808 is invalid: must be a finite whole number"),
    (10**30, f"env_steps={10**30} is invalid: must be a finite whole number within int64"),
    (1e20, "env_steps=1e+20 is invalid: must be a finite whole number within int64"),
    ("1.5", "env_steps='1.5' must be a whole number, e.g. 1000000 or 1e6"),
    ("2.5e-1", "env_steps='2.5e-1' must be a whole number, e.g. 1000000 or 1e6"),
    ("nan", "env_steps='nan' must be a whole number, e.g. 1000000 or 1e6"),
])
def test_int_fields_refuse_fractions_non_finite_and_beyond_int64(value, message: str) -> None:
    got = _error({"env_steps": value})
    assert message in got
    if "int64" in message:
        assert "(-9223372036854775808..9223372036854775807)" in got


def test_int_fields_refuse_infinity_from_files_without_a_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.toml", "[run]\nenv_steps = inf\n")
    assert "env_steps=inf is invalid: must be a finite whole number" in _error(load_config_file(path))
    path = _write(tmp_path, "h.toml", "[algo]\nhidden_sizes = [64, inf]\n")
    assert "hidden_sizes=[64, inf] must be comma-separated whole numbers (int64), e.g. 64,64" in _error(
        load_config_file(path)
    )
    path = _write(tmp_path, "j.json", '{"hidden_sizes": [64, 1e999]}')
    assert "hidden_sizes=[64, inf] must be comma-separated" in _error(load_config_file(path))


def test_tuple_fields_accept_whole_numbers_in_scientific_notation() -> None:
    exp = resolve_experiment("matrace", "smax:3m", 0, {"hidden_sizes": "1e2,32"})
    assert exp.algo_config.hidden_sizes == (100, 32)
    assert all(type(size) is int for size in exp.algo_config.hidden_sizes)


@pytest.mark.parametrize("word,message", [
    ("env_steps=1e999", "env_steps=1e999 is invalid: must be a finite whole number within int64"),
    ("env_steps=1.5", "env_steps='1.5' must be a whole number, e.g. 1000000 or 1e6"),
    ("num_envs=99999999999999999999", "num_envs=99999999999999999999 is invalid"),
])
def test_cli_refuses_bad_whole_numbers_with_exit_2(
    word: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture, no_training: None
) -> None:
    out = tmp_path / "run"
    assert message in _cli_error(["train", "--env", "smax:3m", "--out", str(out), word], capsys)
    assert not out.exists()


def test_validate_refuses_non_integers_set_in_python() -> None:
    with pytest.raises(ConfigError, match=r"^num_epochs=1.5 is invalid: must be a positive integer$"):
        OnlineConfig(num_epochs=1.5).validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^batch_size=True is invalid: must be a positive integer$"):
        OfflineConfig(batch_size=True).validate()
    OfflineConfig(batch_size=np.int64(64)).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("threads,message", [
    (0, r"^actor_threads=0 is invalid: must be a positive integer$"),
    (3, r"^actor_threads=3 is invalid: must divide num_envs=128 \(e\.g\. 1, 2, 4, 8\)$"),
    (256, r"^actor_threads=256 is invalid: must divide num_envs=128 "),
])
def test_actor_threads_must_divide_the_environments(threads: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OnlineConfig(num_envs=128, actor_threads=threads).validate()
    OnlineConfig(num_envs=128, actor_threads=8).validate()


@pytest.mark.parametrize("text,value", [
    ("300000", 300_000), ("1e6", 1_000_000), ("1_000_000", 1_000_000), ("2.5e6", 2_500_000),
    (" 42 ", 42), ("0", 0), ("-3", -3), ("9223372036854775807", 2**63 - 1),
])
def test_parse_count_accepts_whole_numbers(text: str, value: int) -> None:
    got = config.parse_count("--env-steps", text)
    assert got == value and type(got) is int


@pytest.mark.parametrize("text", ["1.5", "inf", "nan", "1e999", "abc", "", "1e6x", "0x10",
                                  "9223372036854775808", "2.5e-1"])
def test_parse_count_refuses_anything_but_a_whole_number(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse_count("--env-steps", text)
    assert str(err.value) == f"--env-steps={text!r} must be a whole number, e.g. 1000000 or 1e6"


# ---------------------------------------------------------------- config-file sections


def test_unknown_sections_are_refused_naming_the_valid_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.toml", "[optimiser]\nlr = 5e-4\n")
    with pytest.raises(ConfigError) as err:
        load_config_file(path)
    assert str(err.value) == (
        f"config file {str(path)!r} has an unknown section 'optimiser'; valid sections: algo, run"
    )
    path = _write(tmp_path, "n.toml", "[algo.extra]\ngamma = 0.9\n")
    with pytest.raises(ConfigError, match="unknown section 'algo.extra'; valid sections: algo, run"):
        load_config_file(path)
    path = _write(tmp_path, "c.json", json.dumps({"optimizer": {"lr": 5e-4}}))
    with pytest.raises(ConfigError, match="unknown section 'optimizer'; valid sections: algo, run"):
        load_config_file(path)


@pytest.mark.parametrize("name,text,message", [
    ("two.toml", "[algo]\nlr = 1e-3\n[run]\nlr = 5e-4\n",
     "sets 'lr' twice: in section 'algo' and in section 'run'"),
    ("top.toml", "lr = 1e-3\n[run]\nlr = 5e-4\n",
     "sets 'lr' twice: at the top level and in section 'run'"),
    ("two.json", '{"run": {"num_envs": 8}, "algo": {"num_envs": 16}}',
     "sets 'num_envs' twice: in section 'run' and in section 'algo'"),
    ("dup.json", '{"run": {"lr": 1e-3, "lr": 5e-4}}', "sets 'lr' twice in one object"),
])
def test_a_field_set_in_two_places_is_refused(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError) as err:
        load_config_file(path)
    assert str(err.value) == f"config file {str(path)!r} {message}"


def test_sections_and_top_level_fields_still_combine(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.toml", 'lr = 5e-4\n[algo]\ncritic = "state"\n[run]\nnum_envs = 16\n')
    assert load_config_file(path) == {"lr": 5e-4, "critic": "state", "num_envs": 16}
    path = _write(tmp_path, "bad.toml", "[optimiser]\nlr = 5e-4\n")
    with pytest.raises(ConfigError, match="unknown section 'optimiser'"):
        load_config_file(path)


def test_cli_refuses_an_unknown_section_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, no_training: None
) -> None:
    path = _write(tmp_path, "c.toml", "[optimiser]\nlr = 5e-4\n")
    out = tmp_path / "run"
    err = _cli_error(["train", "--env", "smax:3m", "--config", str(path), "--out", str(out)], capsys)
    assert "unknown section 'optimiser'; valid sections: algo, run" in err
    assert not out.exists()


# ---------------------------------------------------------------- field docstrings


def test_field_docs_of_the_online_config() -> None:
    docs = config.field_docs(OnlineConfig)
    assert list(docs) == [f.name for f in dataclasses.fields(OnlineConfig)]
    assert docs["lr"] == "Adam learning rate."
    assert docs["env_steps"] == "Budget of training environment steps (summed over parallel environments)."
    assert docs["policy_lag"].startswith("Act with parameters this many updates old")
    assert docs["policy_lag"].endswith("the asynchronous workers create).")
    assert config.field_docs(OnlineConfig()) == docs  # an instance works too


def test_field_docs_of_an_algorithm_config() -> None:
    docs = config.field_docs(MATraceConfig)
    assert list(docs) == [f.name for f in dataclasses.fields(MATraceConfig)]
    assert docs["gamma"] == "Discount factor."
    assert docs["c_bar"] == "Clip of the trace-cutting ratio; Theorem 1 needs c_bar <= rho_bar."


def test_every_config_field_has_a_docstring() -> None:
    classes = [entry.config_class for entry in ALGORITHMS.values()] + [OnlineConfig, OfflineConfig]
    for cls in classes:
        missing = [name for name, doc in config.field_docs(cls).items() if not doc]
        assert not missing, (cls.__name__, missing)


@dataclasses.dataclass(frozen=True)
class _Base:
    a: int = 1
    """First."""
    b: int = 2


@dataclasses.dataclass(frozen=True)
class _Child(_Base):
    c: float = 0.5
    """Third,
    on two lines."""
    d: str = "x"


def test_field_docs_give_empty_strings_and_inherit() -> None:
    assert config.field_docs(_Child) == {"a": "First.", "b": "", "c": "Third,\non two lines.", "d": ""}


# ---------------------------------------------------------------- policy-lag cap


def test_policy_lag_is_capped() -> None:
    assert "policy_lag=1000000 is invalid: 0..1024" in _error({"policy_lag": 1_000_000})
    assert "policy_lag=1025 is invalid: 0..1024" in _error({"policy_lag": "1025"})
    exp = resolve_experiment("matrace", "smax:3m", 0, {"policy_lag": 1024})
    assert exp.run_config.policy_lag == 1024


def test_cli_refuses_a_huge_policy_lag_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, no_training: None
) -> None:
    out = tmp_path / "run"
    err = _cli_error(["train", "--env", "smax:3m", "--policy-lag", "1000000", "--out", str(out)], capsys)
    assert "policy_lag=1000000 is invalid: 0..1024" in err
    assert not out.exists()


# ---------------------------------------------------------------- matrix-game files


@pytest.mark.parametrize("game,message", [
    ({"payoff": [[0, 1e39], [1, 0]]},
     "'payoff' entry payoff[0][1] is 1e+39, not a finite float32 number"),
    ({"payoff": [[0, 1], [-4e38, 0]]},
     "'payoff' entry payoff[1][0] is -4e+38, not a finite float32 number"),
    ({"payoff": [[0, 1], [1, 10**400]]},
     "'payoff' entry payoff[1][1] is a 1329-bit integer, not a finite float32 number"),
    ({"payoff": [[0, 1], [1, 0]], "datasets": {"d": {"0,1": 1e39, "1,0": 0.0}}},
     "dataset 'd': probability of '0,1' is 1e+39, not a finite float32 number"),
    ({"payoff": [[0, 1], [1, 0]], "datasets": {"d": {"0,1": 10**400}}},
     "dataset 'd': probability of '0,1' is a 1329-bit integer, not a finite float32 number"),
])
def test_game_values_not_finite_in_float32_are_refused(tmp_path: Path, game: dict, message: str) -> None:
    path = _write(tmp_path, "game.json", json.dumps(game))
    with pytest.raises(ConfigError) as err:
        make_env(f"matrix:{path}")
    text = str(err.value)
    assert text.startswith(f"matrix game {path}: ") and message in text, text
    assert f"(at most {FLOAT32_MAX:.8g} in magnitude)" in text
    assert "\n" not in text


def test_cli_refuses_a_game_whose_payoff_overflows_float32(
    tmp_path: Path, capsys: pytest.CaptureFixture, no_training: None
) -> None:
    path = _write(tmp_path, "game.json", json.dumps({"payoff": [[0, 1e39], [1, 0]]}))
    out = tmp_path / "run"
    err = _cli_error(["train", "--env", f"matrix:{path}", "--out", str(out)], capsys)
    assert f"matrix game {path}: 'payoff' entry payoff[0][1] is 1e+39" in err
    assert not out.exists()


# ---------------------------------------------------------------- vaults: a legal action per step


def test_vault_with_an_agent_step_without_legal_actions_is_refused_untouched(tmp_path: Path) -> None:
    experience = og_marl_experience(make_dataset())
    experience["infos"]["legals"] = experience["infos"]["legals"].copy()
    experience["infos"]["legals"][0, 9, 2] = 0.0
    experience["infos"]["legals"][0, 12, 0] = 0.0
    flashbax_vault(tmp_path / "bad.vlt", "good", experience)
    before = tree_hashes(tmp_path / "bad.vlt")
    with pytest.raises(ConfigError) as err:
        load_vault(tmp_path / "bad.vlt", "good")
    assert str(err.value) == (
        f"vault {tmp_path / 'bad.vlt'}:good: key 'infos.legals' gives agent 2 no legal action at "
        "time step 9 (every real step needs at least one; SMAX marks dead agents with the no-op)"
    )
    assert tree_hashes(tmp_path / "bad.vlt") == before


def test_only_real_rows_need_a_legal_action(tmp_path: Path) -> None:
    """Rows of a trailing partial episode are dropped, not checked; real rows are checked."""
    data = make_dataset()
    experience = og_marl_experience(data)
    experience["truncations"] = experience["truncations"].copy()
    experience["truncations"][0, 22] = 0.0  # the third episode (rows 15..22) never ends
    experience["infos"]["legals"] = experience["infos"]["legals"].copy()
    experience["infos"]["legals"][0, 20, 1] = 0.0
    flashbax_vault(tmp_path / "p.vlt", "good", experience)
    with pytest.warns(UserWarning, match="dropped a trailing partial episode"):
        assert load_vault(tmp_path / "p.vlt", "good").num_transitions == 15
    experience["infos"]["legals"][0, 14, 1] = 0.0  # the last row of the second episode: real
    flashbax_vault(tmp_path / "q.vlt", "good", experience)
    with pytest.raises(ConfigError, match="gives agent 1 no legal action at time step 14"):
        load_vault(tmp_path / "q.vlt", "good")


def test_writing_a_dataset_without_legal_actions_is_refused(tmp_path: Path) -> None:
    data = make_dataset()
    legals = data.legals.copy()
    legals[5, 1] = 0.0
    with pytest.raises(ValueError, match="legals gives agent 1 no legal action at time step 5"):
        write_vault(data._replace(legals=legals), tmp_path / "x.vlt", "good")
    assert not (tmp_path / "x.vlt" / "good").exists()


def test_offline_cli_refuses_a_vault_without_legal_actions(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    data = load_builtin_dataset("matrix:xor", "02_20", num_episodes=64)
    experience = og_marl_experience(data)
    experience["infos"]["legals"] = experience["infos"]["legals"].copy()
    experience["infos"]["legals"][0, 7, 1] = 0.0
    flashbax_vault(tmp_path / "bad.vlt", "good", experience)
    before = tree_hashes(tmp_path / "bad.vlt")
    out = tmp_path / "run"
    err = _cli_error(["offline", "--algo", "bc", "--env", "matrix:xor", "--dataset",
                      f"{tmp_path / 'bad.vlt'}:good", "--steps", "40", "--quiet", "--out", str(out)],
                     capsys)
    assert f"vault {tmp_path / 'bad.vlt'}:good: key 'infos.legals' gives agent 1 no legal action " \
           "at time step 7" in err
    assert tree_hashes(tmp_path / "bad.vlt") == before
    assert not out.exists()
