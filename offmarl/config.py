"""Dataclass configs: typed fields with a docstring each, overrides, validation, files.

Every config is a frozen dataclass. Users change fields by name, from a file
(`--config FILE`, JSON or TOML) or from `key=value` words on the command line.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import tomllib
import typing
from pathlib import Path
from typing import Any

from offmarl.errors import ConfigError


def field_names(*configs: Any) -> list[str]:
    return [f.name for c in configs for f in dataclasses.fields(c)]


def parse_overrides(words: list[str]) -> dict[str, str]:
    """Turn `["lr=5e-4", "critic=state"]` into a dict; a word without `=` is an error."""
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {word!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat mapping of config fields from a .json or .toml file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ConfigError(f"config file {str(path)!r} must end in .json or .toml")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} is not valid: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of field names")
    # Sections (e.g. [algo], [run]) are flattened: field names are unique across configs.
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Convert `value` (often a string from the command line) to the field's type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(
                f"{name}={value!r} is invalid; valid choices: {', '.join(map(str, choices))}"
            )
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise ConfigError(f"{name}={value!r} is invalid; valid choices: true, false")
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else str(value).strip("()[] ").split(",")
        try:
            return tuple(int(x) for x in items if str(x).strip())
        except ValueError as err:
            raise ConfigError(f"{name}={value!r} must be comma-separated integers") from err
    if annotation in (int, float):
        try:
            number = ast.literal_eval(value) if isinstance(value, str) else value
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ValueError
            if annotation is int and float(number) != int(number):
                raise ValueError
            return annotation(number)
        except (ValueError, SyntaxError) as err:
            raise ConfigError(f"{name}={value!r} must be a {annotation.__name__}") from err
    if annotation is str:
        return str(value)
    raise ConfigError(f"{name}: unsupported field type {annotation!r}")


def apply_overrides(configs: list[Any], values: dict[str, Any]) -> list[Any]:
    """Return copies of `configs` with `values` set; unknown keys are an error."""
    valid = field_names(*configs)
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}; valid keys: {', '.join(sorted(valid))}"
        )
    out = []
    for config in configs:
        hints = typing.get_type_hints(type(config))
        changes = {
            f.name: _coerce(f.name, hints[f.name], values[f.name])
            for f in dataclasses.fields(config)
            if f.name in values
        }
        out.append(dataclasses.replace(config, **changes))
    return out


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition` holds."""
    if not condition:
        raise ConfigError(message)


def to_dict(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
