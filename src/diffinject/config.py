"""params.yaml loading and typed per-stage configs.

Each params section has one dataclass, its schema: field defaults are the defaults (tests/test_params.py
checks that params.yaml says the same). A stage declares what it reads as a `StageParams` (whole
sections, or a `slice_of` one: some keys only) and reads params only through it; tests/test_dvc_graph.py
checks that dvc.yaml's `params:` of the stage lists exactly that. Unknown keys, wrong types and values
out of range are errors that name the dotted parameter when the config is built, so a typo in
`dvc exp run -S` fails loudly and no caller can forget a check.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from diffinject.errors import DiffinjectError, first_line

DEFAULT_PARAMS = "params.yaml"
T = TypeVar("T")
# Keys a section no longer has, and where their value lives now: a params file written before the move
# gets that answer instead of a bare "unknown key".
RETIRED_KEYS = {
    "bias_conflict_ratio": "the pool ratio has one home, debiased.bias_conflict_ratio (every stage that adds images reads it)",
}


def load_params(path: str | os.PathLike = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read params.yaml into a dict; a missing or malformed file is a one-line error."""
    return read_yaml_mapping(Path(path), "params file not found (expected a YAML file such as params.yaml)",
                             "expected a mapping of sections at the top level")


def read_yaml_mapping(path: Path, if_missing: str, if_not_mapping: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; else a one-line error naming the file."""
    if not path.is_file():
        raise DiffinjectError(f"{path}: {if_missing}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DiffinjectError(f"{path}: not valid YAML ({first_line(exc)})") from exc
    if not isinstance(loaded, dict):
        raise DiffinjectError(f"{path}: {if_not_mapping}")
    return loaded


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
    if origin is dict:
        if not isinstance(value, dict):
            raise DiffinjectError(f"{where}: got {value!r}, expected a mapping")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise DiffinjectError(f"{where}: got {value!r}, expected a list")
        item = args[0] if args else Any
        return type(value)(_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):  # a nested section: its keys are named section.key.subkey
        return build_config(hint, value, where.removeprefix("params '").removesuffix("'"))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise DiffinjectError(f"{where}: got {value!r}, expected a number")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise DiffinjectError(f"{where}: got {value!r}, expected {hint.__name__}")
    return value


def unknown_key(section: str, key: str, allowed: Any) -> DiffinjectError:
    if key in RETIRED_KEYS:
        return DiffinjectError(f"params '{section}.{key}': no longer a key here; {RETIRED_KEYS[key]}")
    return DiffinjectError(f"params '{section}.{key}': unknown key (allowed: {', '.join(sorted(allowed))})")


def build_config(cls: type[T], values: Any, section: str) -> T:
    """Build dataclass `cls` from the mapping `values` of params section `section`."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise DiffinjectError(f"params '{section}': expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise unknown_key(section, unknown[0], fields)
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _check_type(value, hints[name], f"params '{section}.{name}'") for name, value in values.items()
    }
    config = cls(**kwargs)
    run_check(config, section)
    return config


def run_check(config: Any, section: str) -> None:
    """The config's own range checks (`check()` or `check(section)`), if it has any."""
    check = getattr(config, "check", None)
    if check is None:
        return
    if inspect.signature(check).parameters:
        check(section)
    else:
        check()


def slice_of(cls: type, *keys: str) -> type:
    """A dataclass of some keys of `cls`'s section, with `cls`'s types and defaults: what a stage that
    needs only those keys reads, so a change of another key of the section does not re-run it. Its
    check builds `cls` with the slice's values (the rest at their defaults) and runs `cls`'s checks."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in keys if k not in fields]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}")
    hints = typing.get_type_hints(cls)
    spec = [(k, hints[k], dataclasses.field(default=fields[k].default, default_factory=fields[k].default_factory))
            for k in keys]

    def check(self, section: str) -> None:
        run_check(cls(**{k: getattr(self, k) for k in keys}), section)

    sliced = dataclasses.make_dataclass(f"{cls.__name__}Slice", spec, namespace={"check": check})
    sliced.__slice_of__ = cls
    return sliced


def section_class(cls: type) -> type:
    """The schema of the section a (possibly sliced) config class reads."""
    return getattr(cls, "__slice_of__", cls)


_RECORDS: dict[int, tuple[Any, type]] = {}


@dataclasses.dataclass(frozen=True)
class StageParams:
    """What a stage reads from params: `sections` maps a section name to its schema, or to a
    `slice_of` it; `seed` whether it reads the top-level seed. `load` is the stage's only way in."""

    sections: dict[str, type]
    seed: bool = True

    def load(self, params: dict[str, Any]) -> Any:
        """The typed, checked configs: a frozen dataclass (`record`) with one field per section, typed
        by its schema, and `seed: int` when the stage reads it."""
        configs = {name: section(params, name, cls) for name, cls in self.sections.items()}
        if self.seed:
            configs["seed"] = seed_of(params)
        return self.record()(**configs)

    def record(self) -> type:
        """The dataclass `load` returns (StageParams is frozen, so it is built once per declaration)."""
        cached = _RECORDS.get(id(self))
        if cached is None or cached[0] is not self:
            fields = [(name, cls) for name, cls in self.sections.items()] + ([("seed", int)] if self.seed else [])
            cached = _RECORDS[id(self)] = (self, dataclasses.make_dataclass("StageConfigs", fields, frozen=True))
        return cached[1]

    def keys(self) -> list[str]:
        """The entries of the stage's `params:` in dvc.yaml: a section name, or dotted keys of a slice."""
        keys = ["seed"] if self.seed else []
        for name, cls in self.sections.items():
            if section_class(cls) is cls:
                keys.append(name)
            else:
                keys += [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
        return keys


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """The typed config of section `name` (missing section: all defaults). A slice reads only its keys,
    but a key unknown to the whole section is still an error."""
    values = params.get(name)
    schema = section_class(cls)
    if schema is not cls and isinstance(values, dict):
        unknown = sorted(set(values) - _field_names(schema))
        if unknown:
            raise unknown_key(name, unknown[0], _field_names(schema))
        values = {k: v for k, v in values.items() if k in _field_names(cls)}
    return build_config(cls, values, name)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


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
