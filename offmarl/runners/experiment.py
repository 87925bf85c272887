"""An experiment = algorithm + environment + seed + configs; resolved and checked
before anything heavy runs, saved as a run directory's config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from offmarl.algos import check_action_support, get_algorithm
from offmarl.algos.base import OnlineAlgorithm
from offmarl.config import apply_overrides, to_dict
from offmarl.envs import check_env_name, has_continuous_actions, make_env
from offmarl.envs.base import MultiAgentEnv
from offmarl.errors import ConfigError
from offmarl.runners.config import OfflineConfig, OnlineConfig


@dataclass(frozen=True)
class Experiment:
    algo: str
    env: str
    seed: int
    algo_config: Any
    run_config: OnlineConfig

    def to_dict(self, env_settings: dict | None = None) -> dict:
        return {
            "algo": self.algo,
            "env": self.env,
            "seed": self.seed,
            "env_settings": env_settings or {},
            "algo_config": to_dict(self.algo_config),
            "run_config": to_dict(self.run_config),
        }

    def build(self) -> tuple[MultiAgentEnv, OnlineAlgorithm]:
        env = make_env(self.env)
        return env, get_algorithm(self.algo).build(self.algo_config, env.spec)


# Offline defaults per environment family, applied after the algorithm's and before the user's;
# keys common to every offline algorithm's and the offline runner's configs. The small games:
# 64-64 networks and runs long enough for their known answers (docs/games.md,
# docs/results_offline.md), so a game a table solves trains in seconds rather than minutes.
_SMALL_NETWORK = {"hidden_sizes": (64, 64)}
_OFFLINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "matrix": {**_SMALL_NETWORK, "steps": 2_000, "eval_interval": 1_000, "checkpoint_interval": 2_000},
    "bridge": {**_SMALL_NETWORK, "steps": 10_000, "eval_interval": 2_000, "checkpoint_interval": 10_000},
    # MABrax: 64-64 networks run OMIGA at 7x the updates/s of the paper's 256-256 on two cores,
    # which makes the 100k iterations its value learning needs affordable (docs/mabrax.md).
    "mabrax": {**_SMALL_NETWORK, "steps": 100_000, "eval_interval": 10_000, "eval_episodes": 16,
               "final_eval_episodes": 128, "checkpoint_interval": 20_000},
}


def offline_run_defaults(name: str) -> dict[str, Any]:
    """The offline config values environment `name`'s family sets (empty for most)."""
    return dict(_OFFLINE_DEFAULTS.get(name.partition(":")[0], {}))


def _resolve_configs(
    algo: str, kind: str, run_config_class: type, env: str, seed: int, layers: tuple[dict[str, Any], ...]
) -> tuple[Any, Any]:
    """The algorithm's and the runner's configs after the override layers, both validated."""
    entry = get_algorithm(algo, kind)
    check_env_name(env)
    continuous = has_continuous_actions(env)
    check_action_support(algo, env, continuous)
    if seed < 0:
        raise ConfigError(f"seed={seed} is invalid: must be >= 0")
    configs = [entry.config_class(), run_config_class()]
    for layer in (entry.run_defaults, entry.action_space_defaults(continuous), entry.family_defaults(env), *layers):
        configs = apply_overrides(configs, layer)
    algo_config, run_config = configs
    algo_config.validate()
    run_config.validate()
    return algo_config, run_config


def resolve_experiment(algo: str, env: str, seed: int, *layers: dict[str, Any]) -> Experiment:
    """Validate names, apply override layers in order (later wins) and check every value."""
    return Experiment(algo, env, seed, *_resolve_configs(algo, "online", OnlineConfig, env, seed, layers))


# Settings added after runs were saved, with the value that reproduces a run saved without
# them (not today's default, which may differ and would change how the run resumes).
RUN_CONFIG_SAVED_BEFORE_ADDED = {"actor_threads": 1}
ONLINE_ALGO_CONFIG_SAVED_BEFORE_ADDED = {"normalize_observations": False}


def experiment_from_dict(data: dict) -> Experiment:
    """Rebuild the experiment saved in a run directory's config.json."""
    try:
        run_config = {**RUN_CONFIG_SAVED_BEFORE_ADDED, **data["run_config"]}
        if run_config.get("workers") and run_config.get("pipeline"):
            run_config["pipeline"] = False  # saved before the pair was refused: it had no effect with Ray workers
        algo_config = {**ONLINE_ALGO_CONFIG_SAVED_BEFORE_ADDED, **data["algo_config"]}
        return resolve_experiment(data["algo"], data["env"], int(data["seed"]), algo_config, run_config)
    except KeyError as err:
        raise ConfigError(f"config.json lacks the key {err.args[0]!r}") from err


@dataclass(frozen=True)
class OfflineExperiment:
    """An offline run: algorithm, environment (for evaluation), dataset, seed and configs."""

    algo: str
    env: str
    dataset: str
    seed: int
    algo_config: Any
    run_config: OfflineConfig

    def to_dict(self, env_settings: dict | None = None, dataset_info: dict | None = None) -> dict:
        return {
            "algo": self.algo,
            "env": self.env,
            "dataset": self.dataset,
            "dataset_info": dataset_info or {},
            "seed": self.seed,
            "env_settings": env_settings or {},
            "algo_config": to_dict(self.algo_config),
            "run_config": to_dict(self.run_config),
        }

    def build(self) -> tuple[MultiAgentEnv, Any]:
        env = make_env(self.env)
        return env, get_algorithm(self.algo, "offline").build(self.algo_config, env.spec)


def resolve_offline_experiment(
    algo: str, env: str, dataset: str, seed: int, *layers: dict[str, Any]
) -> OfflineExperiment:
    """Validate names, apply override layers in order (later wins) and check every value.
    The environment family's offline defaults (small networks for the games) come first."""
    configs = _resolve_configs(algo, "offline", OfflineConfig, env, seed, (offline_run_defaults(env), *layers))
    return OfflineExperiment(algo, env, dataset, seed, *configs)


def offline_experiment_from_dict(data: dict) -> OfflineExperiment:
    """Rebuild the offline experiment saved in a run directory's config.json."""
    try:
        return resolve_offline_experiment(data["algo"], data["env"], data["dataset"], int(data["seed"]),
                                          data["algo_config"], data["run_config"])
    except KeyError as err:
        raise ConfigError(f"config.json lacks the key {err.args[0]!r}") from err
