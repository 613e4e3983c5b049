"""params.yaml loading and typed per-stage configs.

Every stage reads only its own section (plus the top-level `seed`) into a dataclass. Unknown keys and
wrong types are errors that name the dotted parameter, so a typo in `dvc exp run -S` fails loudly.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from diffinject.errors import DiffinjectError

DEFAULT_PARAMS = "params.yaml"
T = TypeVar("T")


def load_params(path: str | os.PathLike = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read params.yaml into a dict; a missing or malformed file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise DiffinjectError(f"{path}: params file not found (expected a YAML file such as params.yaml)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DiffinjectError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(params, dict):
        raise DiffinjectError(f"{path}: expected a mapping of sections at the top level")
    return params


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except DiffinjectError as exc:
                errors.append(str(exc))
        raise DiffinjectError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise DiffinjectError(f"{where}: got {value!r}, expected one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise DiffinjectError(f"{where}: got {value!r}, expected a list")
        item = args[0] if args else Any
        return type(value)(_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise DiffinjectError(f"{where}: got {value!r}, expected a number")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise DiffinjectError(f"{where}: got {value!r}, expected {hint.__name__}")
    return value


def build_config(cls: type[T], values: Any, section: str) -> T:
    """Build dataclass `cls` from the mapping `values` of params section `section`."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise DiffinjectError(f"params '{section}': expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise DiffinjectError(
            f"params '{section}.{unknown[0]}': unknown key (allowed: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _check_type(value, hints[name], f"params '{section}.{name}'") for name, value in values.items()
    }
    return cls(**kwargs)


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """The typed config of section `name` (missing section: all defaults)."""
    return build_config(cls, params.get(name), name)


def check_at_least(config: Any, section_name: str, minimum: float, *keys: str, strict: bool = False) -> None:
    """Every `keys` attribute of `config` must be >= minimum (> minimum with `strict`); else a one-line
    error naming the dotted parameter, the value and the bound."""
    for key in keys:
        value = getattr(config, key)
        if value <= minimum if strict else value < minimum:
            raise DiffinjectError(f"params '{section_name}.{key}': got {value}, expected {'>' if strict else '>='} {minimum}")


def seed_of(params: dict[str, Any]) -> int:
    seed = params.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DiffinjectError(f"params 'seed': got {seed!r}, expected an integer")
    return seed
