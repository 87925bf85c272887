"""Dataclass configs: typed fields with a docstring each, overrides, validation, files.

Every config is a frozen dataclass. Users change fields by name, from a file
(`--config FILE`, JSON or TOML) or from `key=value` words on the command line.
"""

from __future__ import annotations

import ast
import dataclasses
import decimal
import inspect
import json
import math
import textwrap
import tomllib
import typing
from pathlib import Path
from typing import Any

from offmarl.errors import ConfigError

# np.finfo(np.float32).max, written out so that reading a config does not import NumPy.
FLOAT32_MAX = 3.4028234663852886e38
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The sections a config file may group its fields in (`[algo]`, `[run]` in TOML).
CONFIG_SECTIONS = ("algo", "run")


def field_names(*configs: Any) -> list[str]:
    return [f.name for c in configs for f in dataclasses.fields(c)]


def parse_overrides(words: list[str], later_wins: bool = False) -> dict[str, str]:
    """Turn `["lr=5e-4", "critic=state"]` into a dict; a word without `=` is an error, and so
    is a key given twice unless `later_wins` (words merged from several sources in order)."""
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {word!r} is not of the form key=value")
        if key in out and not later_wins:
            raise ConfigError(f"override {key!r} is given twice ({key}={out[key]} and {word.strip()}); give it once")
        out[key] = value.strip()
    return out


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads hook: a key given twice in one object is an error (json keeps the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"sets {key!r} twice in one object")
        out[key] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read the config fields of a .json or .toml file as one flat mapping.

    Fields may sit at the top level or in the sections `algo` and `run` (field names are
    unique across the configs, so sections only group them). An unknown section, or one
    field set in two places, is a ConfigError.
    """
    path = Path(path)
    where = f"config file {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist")
    if path.suffix not in (".json", ".toml"):
        raise ConfigError(f"{where} must end in .json or .toml")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text, object_pairs_hook=_json_object)
    except ConfigError as err:  # from _json_object
        raise ConfigError(f"{where} {err}") from err
    except (ValueError, OSError) as err:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError, ...
        raise ConfigError(f"{where} is not valid: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping of field names")
    valid = ", ".join(CONFIG_SECTIONS)
    flat: dict[str, Any] = {}
    place: dict[str, str] = {}

    def put(key: str, value: Any, here: str) -> None:
        if key in flat:
            raise ConfigError(f"{where} sets {key!r} twice: {place[key]} and {here}")
        flat[key] = value
        place[key] = here

    for key, value in data.items():
        if not isinstance(value, dict):
            put(key, value, "at the top level")
            continue
        if key not in CONFIG_SECTIONS:
            raise ConfigError(f"{where} has an unknown section {key!r}; valid sections: {valid}")
        for field, inner in value.items():
            if isinstance(inner, dict):
                raise ConfigError(
                    f"{where} has an unknown section {f'{key}.{field}'!r}; valid sections: {valid}"
                )
            put(field, inner, f"in section {key!r}")
    return flat


def _int_or_reason(value: Any) -> int | str:
    """`value` as a whole number within int64, or why it is not one.

    Accepts ints, integral floats and text such as "300000", "1_000_000", "1e6", "2.5e6".
    """
    if isinstance(value, bool):
        return "not a number"
    if isinstance(value, int):
        number = decimal.Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return "not finite"
        number = decimal.Decimal(value)
    elif isinstance(value, str):
        try:
            number = decimal.Decimal(value.strip())
        except decimal.InvalidOperation:
            return "not a number"
        if not number.is_finite():
            return "not finite" if number.is_infinite() else "not a number"
    else:
        return "not a number"
    if not INT64_MIN <= number <= INT64_MAX:
        return "out of range"
    if number != number.to_integral_value():
        return "not a number"
    return int(number)


def _shown(value: Any) -> str:
    """How a bad number is named in a message: text as written, numbers as Python writes them
    (an int too long to print by its size)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<a {value.bit_length()}-bit integer>"
    return repr(value)


def _whole_number_error(name: str, value: Any, reason: str) -> ConfigError:
    if reason == "not a number":
        return ConfigError(f"{name}={value!r} must be a whole number, e.g. 1000000 or 1e6")
    return ConfigError(
        f"{name}={_shown(value)} is invalid: must be a finite whole number within int64 "
        f"({INT64_MIN}..{INT64_MAX})"
    )


def parse_count(name: str, text: str) -> int:
    """A whole number from the command line: "300000", "1e6", "1_000_000" (not "1.5", "inf").

    Only the form is checked (and that it fits in int64); the caller checks the range.
    """
    number = _int_or_reason(text)
    if isinstance(number, str):
        raise ConfigError(f"{name}={text!r} must be a whole number, e.g. 1000000 or 1e6")
    return number


def _to_int(name: str, value: Any) -> int:
    number = _int_or_reason(value)
    if isinstance(number, str):
        raise _whole_number_error(name, value, number)
    return number


def _to_float(name: str, value: Any) -> float:
    """A float that is finite in float32 (what the learner computes in)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError as err:
        raise ConfigError(f"{name}={value!r} must be a float, e.g. 0.001 or 1e-3") from err
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not (math.isfinite(number) and abs(number) <= FLOAT32_MAX):
        raise ConfigError(
            f"{name}={_shown(value)} is invalid: must be a finite number (float32), "
            f"at most {FLOAT32_MAX:.8g} in magnitude"
        )
    return number


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
        text = None if isinstance(value, (list, tuple)) else str(value).strip("()[] ")
        items = value if text is None else (text.split(",") if text else [])
        numbers = [_int_or_reason(x) for x in items]
        if any(isinstance(number, str) for number in numbers):
            raise ConfigError(
                f"{name}={value!r} must be comma-separated whole numbers (int64), e.g. 64,64"
            )
        return tuple(numbers)
    if annotation is int:
        return _to_int(name, value)
    if annotation is float:
        return _to_float(name, value)
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


def check_layer_widths(hidden_sizes: tuple[int, ...]) -> None:
    """Hidden widths must be a non-empty list of positive numbers."""
    require(len(hidden_sizes) > 0 and all(h > 0 for h in hidden_sizes),
            f"hidden_sizes={hidden_sizes} is invalid: needs positive layer widths")


def field_docs(config_class: Any) -> dict[str, str]:
    """The docstring written under each field of a dataclass, by field name ("" if none).

    Read from the source of the class and of its dataclass bases (a subclass's docstring
    wins), cleaned with inspect.cleandoc. Accepts the class or an instance of it.
    """
    cls = config_class if isinstance(config_class, type) else type(config_class)
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = next((node.body for node in ast.walk(tree)
                     if isinstance(node, ast.ClassDef) and node.name == klass.__name__), [])
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def to_dict(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
