"""One-step cooperative matrix games, read from JSON files (format in docs/games.md).

`matrix:<game>` loads a built-in game from `offmarl/envs/games/<game>.json`;
`matrix:<path>.json` loads a user's file. Every agent observes only its one-hot id.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from offmarl.envs.base import EnvSpec
from offmarl.errors import ConfigError
from offmarl.types import TimeStep

PROBABILITY_TOLERANCE = 1e-6
FLOAT32_MAX = float(np.finfo(np.float32).max)
_KEYS = ("description", "payoff", "datasets")

JointAction = tuple[int, ...]
Fail = Callable[[str], NoReturn]


@dataclass(frozen=True)
class MatrixGame:
    """A validated game: payoff[a_1, ..., a_N] and named joint-action distributions."""

    source: str
    description: str
    payoff: np.ndarray  # float32, shape [A] * N
    datasets: dict[str, dict[JointAction, float]]

    @property
    def num_agents(self) -> int:
        return self.payoff.ndim

    @property
    def num_actions(self) -> int:
        return self.payoff.shape[0]


def _games_dir() -> Any:
    return resources.files("offmarl.envs") / "games"


def scenario_names() -> list[str]:
    """The built-in games (`matrix:<name>`)."""
    names = (entry.name for entry in _games_dir().iterdir())
    return sorted(name.removesuffix(".json") for name in names if name.endswith(".json"))


def _is_number(value: Any) -> bool:
    """A JSON number (int or float, not a bool); it may still be too large for float32."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits_float32(value: int | float) -> bool:
    """Finite, and finite once stored as float32 (1e39 is not: it becomes inf)."""
    try:
        return math.isfinite(value) and abs(value) <= FLOAT32_MAX
    except OverflowError:  # an int too large for a float
        return False


def _shown(value: int | float) -> str:
    if isinstance(value, int) and value.bit_length() > 256:
        return f"a {value.bit_length()}-bit integer"
    return repr(value)


def _check_float32(value: int | float, what: str, fail: Fail) -> None:
    if not _fits_float32(value):
        fail(f"{what} is {_shown(value)}, not a finite float32 number "
             f"(at most {FLOAT32_MAX:.8g} in magnitude)")


def _parse_payoff(raw: Any, fail: Fail) -> np.ndarray:
    def shape_of(node: Any, where: str) -> tuple[int, ...]:
        if _is_number(node):
            _check_float32(node, f"'payoff' entry payoff{where}", fail)
            return ()
        if not isinstance(node, list) or not node:
            fail(f"'payoff' entry {where or 'at the top'} must be a finite number or a non-empty list")
        shapes = [shape_of(child, f"{where}[{i}]") for i, child in enumerate(node)]
        if any(shape != shapes[0] for shape in shapes):
            fail(f"'payoff' is ragged: the entries of payoff{where} differ in shape")
        return (len(node),) + shapes[0]

    shape = shape_of(raw, "")
    if len(shape) < 2:
        fail(f"'payoff' must be nested at least two deep (one axis per agent), got shape {shape}")
    if len(set(shape)) != 1:
        fail(f"'payoff' must give every agent the same number of actions, got shape {shape}")
    if shape[0] < 2:
        fail(f"'payoff' needs at least 2 actions per agent, got shape {shape}")
    return np.asarray(raw, np.float32)


def _parse_joint_action(key: str, shape: tuple[int, ...], where: str, fail: Fail) -> JointAction:
    parts = key.split(",")
    if len(parts) != len(shape):
        fail(f"{where}: joint action {key!r} has {len(parts)} actions, the game has {len(shape)} agents")
    try:
        joint = tuple(int(part) for part in parts)
    except ValueError:
        fail(f"{where}: joint action {key!r} must be comma-separated action indices, e.g. '0,1'")
    if any(not 0 <= action < size for action, size in zip(joint, shape)):
        fail(f"{where}: joint action {key!r} is out of range (actions are 0..{shape[0] - 1})")
    return joint


def _parse_datasets(raw: Any, shape: tuple[int, ...], fail: Fail) -> dict[str, dict[JointAction, float]]:
    if not isinstance(raw, dict):
        fail("'datasets' must be an object mapping dataset names to distributions")
    datasets = {}
    for name, distribution in raw.items():
        where = f"dataset {name!r}"
        if not isinstance(distribution, dict) or not distribution:
            fail(f"{where} must be a non-empty object mapping joint actions like '0,1' to probabilities")
        parsed: dict[JointAction, float] = {}
        for key, probability in distribution.items():
            joint = _parse_joint_action(key, shape, where, fail)
            if joint in parsed:
                fail(f"{where}: joint action {key!r} is listed twice")
            if not _is_number(probability):
                fail(f"{where}: probability of {key!r} must be a non-negative number, got {probability!r}")
            _check_float32(probability, f"{where}: probability of {key!r}", fail)
            if probability < 0:
                fail(f"{where}: probability of {key!r} must be a non-negative number, got {probability!r}")
            parsed[joint] = float(probability)
        total = sum(parsed.values())
        if abs(total - 1.0) > PROBABILITY_TOLERANCE:
            fail(f"{where}: probabilities sum to {total:.9g}, not 1 (tolerance {PROBABILITY_TOLERANCE})")
        datasets[name] = parsed
    return datasets


def parse_game(raw: Any, source: str) -> MatrixGame:
    """Validate a decoded game; raises a one-line ConfigError naming the problem."""

    def fail(problem: str) -> NoReturn:
        raise ConfigError(f"matrix game {source}: {problem}")

    if not isinstance(raw, dict):
        fail("must be a JSON object with 'payoff' and optional 'description' and 'datasets'")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        fail(f"unknown key {unknown[0]!r}; valid keys: {', '.join(_KEYS)}")
    if "payoff" not in raw:
        fail("missing key 'payoff'")
    description = raw.get("description", "")
    if not isinstance(description, str):
        fail("'description' must be a string")
    payoff = _parse_payoff(raw["payoff"], fail)
    datasets = _parse_datasets(raw.get("datasets", {}), payoff.shape, fail)
    return MatrixGame(source=source, description=description, payoff=payoff, datasets=datasets)


def load_game(scenario: str) -> MatrixGame:
    """A built-in game by name, or a user's game from a path ending in `.json`."""
    if scenario.endswith(".json"):
        path = Path(scenario)
        if not path.is_file():
            raise ConfigError(f"matrix game file not found: {scenario}")
        text = path.read_text()
    elif scenario in scenario_names():
        text = (_games_dir() / f"{scenario}.json").read_text()
    else:
        raise ConfigError(
            f"unknown matrix game {scenario!r}; valid: {', '.join(scenario_names())}, or a path ending in .json"
        )
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, an int of > 4300 digits, ...
        raise ConfigError(f"matrix game {scenario}: not valid JSON ({error})") from None
    return parse_game(raw, scenario)


class MatrixEnv:
    """A one-step game: every step is a whole episode paying payoff[joint action]."""

    def __init__(self, game: MatrixGame, name: str) -> None:
        self.game = game
        self._payoff = jnp.asarray(game.payoff)
        self.spec = EnvSpec(
            name=name,
            num_agents=game.num_agents,
            obs_dim=game.num_agents,
            state_dim=1,
            num_actions=game.num_actions,
            max_episode_steps=1,
            has_win=False,
        )
        self.settings: dict[str, Any] = {"game": game.source, "payoff": game.payoff.tolist()}

    def _timestep(self, reward: jax.Array, done: bool) -> TimeStep:
        spec = self.spec
        return TimeStep(
            obs=jnp.eye(spec.num_agents, dtype=jnp.float32),
            state=jnp.zeros((spec.state_dim,), jnp.float32),
            avail=jnp.ones((spec.num_agents, spec.num_actions), bool),
            reward=jnp.asarray(reward, jnp.float32),
            done=jnp.asarray(done, bool),
            won=jnp.zeros((), bool),
        )

    def reset(self, key: jax.Array) -> tuple[jax.Array, TimeStep]:
        """The game has no state; a zero placeholder keeps pytree code uniform."""
        return jnp.zeros((), jnp.int32), self._timestep(jnp.zeros(()), False)

    def step(self, key: jax.Array, env_state: jax.Array, actions: jax.Array) -> tuple[jax.Array, TimeStep]:
        """Pay payoff[actions]; the episode ends, so the next observation starts a new one."""
        return env_state, self._timestep(self._payoff[tuple(actions)], True)


def make_matrix(scenario: str) -> MatrixEnv:
    """Build `matrix:<scenario>` (a built-in game name or a `.json` path)."""
    return MatrixEnv(load_game(scenario), name=f"matrix:{scenario}")
