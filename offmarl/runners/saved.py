"""The saved policies of run directories, online or offline: what `eval`, `collect` and
`make-datasets` read."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from offmarl.envs.base import MultiAgentEnv
from offmarl.errors import ConfigError
from offmarl.evaluation.evaluate import CLI_EVAL_TAG, evaluate_both, make_evaluator
from offmarl.runners.experiment import experiment_from_dict, offline_experiment_from_dict
from offmarl.runners.common import read_run_config
from offmarl.runners.loop import all_finite
from offmarl.utils.checkpoint import list_checkpoints, load_checkpoint, load_newest_valid, resolve_checkpoint


def is_offline_run(config: dict) -> bool:
    """Offline runs record the dataset they learned from."""
    return "dataset" in config


@dataclass
class SavedRun:
    """A run directory's environment, policy (algorithm) and saved checkpoints."""

    run_dir: Path
    experiment: Any
    """The run's Experiment or OfflineExperiment (algo, env, seed, configs)."""
    env: MultiAgentEnv
    algo: Any
    steps: list[int]
    """Step counts of the saved checkpoints, oldest first (env steps, or iterations offline)."""
    offline: bool
    _template: Any

    @property
    def step_key(self) -> str:
        """The step counter's key in this run's metrics.jsonl."""
        return "steps" if self.offline else "env_steps"

    @classmethod
    def open(cls, run_dir: str | Path) -> SavedRun:
        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        offline = is_offline_run(config)
        experiment = offline_experiment_from_dict(config) if offline else experiment_from_dict(config)
        steps = list_checkpoints(run_dir / "checkpoints")
        if not steps:
            raise ConfigError(f"no checkpoint in {str(run_dir / 'checkpoints')!r}")
        env, algo = experiment.build()
        if offline:
            shapes = jax.eval_shape(lambda rng: (algo.init(rng), rng), jax.random.PRNGKey(0))
        else:
            from offmarl.runners.fused import FusedTrainer

            shapes = jax.eval_shape(FusedTrainer(experiment.run_config, algo, env).init, jax.random.PRNGKey(0))
        template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
        return cls(run_dir, experiment, env, algo, steps, offline, template)

    def newest_readable(self) -> tuple[int, Any]:
        """(step, acting parameters) of the newest checkpoint that can be read; each newer,
        unreadable one is skipped with a warning on stderr."""
        found = load_newest_valid(self.run_dir / "checkpoints", self._template, _warn)
        assert found is not None  # open() found checkpoints; all unreadable raises instead
        return found[0], self._acting(found[0], found[1])

    def params(self, step: int) -> Any:
        """The acting parameters saved at `step`; ConfigError if they are not finite."""
        return self._acting(step, self.saved_state(step))

    def initial_params(self) -> Any:
        """The untrained policy of an online run: its acting parameters at step 0, rebuilt
        from its seed exactly as the run initialised them (no checkpoint holds them)."""
        from offmarl.runners.fused import FusedTrainer

        if self.offline:
            raise ConfigError(f"{str(self.run_dir)!r} is an offline run: it has no untrained policy of its own")
        trainer = FusedTrainer(self.experiment.run_config, self.algo, self.env)
        return trainer.init(jax.random.PRNGKey(self.experiment.seed)).params

    def saved_state(self, step: int) -> Any:
        """Everything saved at `step`: offline (the algorithm's state, the key); online the
        fused trainer's state."""
        return load_checkpoint(self.run_dir / "checkpoints", step, self._template)[0]

    def _acting(self, step: int, state: Any) -> Any:
        params = self.algo.acting_params(state[0]) if self.offline else state.params
        if not all_finite(params):
            raise ConfigError(f"the checkpoint of {str(self.run_dir)!r} at step {step:,} holds "
                              "non-finite parameters")
        return params


def _warn(message: str) -> None:
    print(f"offmarl: warning: {message}", file=sys.stderr)


CLI_EVAL_BATCH = 4096
"""`offmarl eval` runs at most this many episodes side by side: more run as further batches,
so memory stays bounded and a signal stops it between batches."""


def evaluate_run(run_dir: str | Path, episodes: int, checkpoint: str = "latest", seed: int | None = None) -> dict:
    """Evaluate a saved policy (greedy and sampled) on fresh episodes; 'latest' is the
    newest readable checkpoint."""
    read_run_config(run_dir)
    step = resolve_checkpoint(Path(run_dir) / "checkpoints", checkpoint)
    run = SavedRun.open(run_dir)
    step, params = run.newest_readable() if checkpoint == "latest" else (step, run.params(step))
    evaluator = make_evaluator(run.env, run.algo, min(episodes, CLI_EVAL_BATCH))
    experiment = run.experiment
    result = evaluate_both(evaluator, params, experiment.seed if seed is None else seed, CLI_EVAL_TAG, episodes)
    return {"run": str(run_dir), "algo": experiment.algo, "env": experiment.env,
            "checkpoint_" + run.step_key: step, **result}
