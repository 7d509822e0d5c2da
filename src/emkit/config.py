"""Dataclass configs: YAML/dict in, validated, hashed.

Every stage takes a dataclass config. ``config_hash`` gives a stable short hash of its resolved
values, which the run folder uses to decide whether a stage's artifact is still valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from emkit.errors import EmkitError

T = TypeVar("T")


def to_dict(cfg: Any, *, for_hash: bool = False) -> Any:
    """Resolve a (nested) dataclass into plain JSON-able values.

    ``for_hash`` leaves out fields marked ``omit_if_default`` while they hold their default.
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name), for_hash=for_hash) for f in dataclasses.fields(cfg)
                if not (for_hash and f.metadata.get("omit_if_default") and getattr(cfg, f.name) == f.default)}
    if isinstance(cfg, dict):
        return {str(k): to_dict(v, for_hash=for_hash) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return [to_dict(v, for_hash=for_hash) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name`` (its factory called), for settings derived from it."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable hash of a config's resolved values (key order does not matter).

    A field whose metadata says ``omit_if_default`` is left out while it holds its default, so a new
    option does not change the hash of configs written before it existed.
    """
    blob = json.dumps(to_dict(cfg, for_hash=True), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except (EmkitError, TypeError, ValueError) as e:
                errors.append(str(e))
        raise EmkitError(f"{where}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise EmkitError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            value = [value]
        inner = args[0] if args else Any
        return [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise EmkitError(f"{where}: expected a mapping")
        inner = args[1] if len(args) > 1 else Any
        return {k: _coerce(inner, v, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise EmkitError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str | int | float):
        return str(value)
    if tp is Path and isinstance(value, str | Path):
        return Path(value)
    if tp is Any:
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise EmkitError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a dataclass from a mapping, rejecting unknown keys and wrong types with a clear path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise EmkitError(
            f"{where}: unknown key(s) {sorted(unknown)}", hint=f"allowed: {sorted(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise EmkitError(f"{where}: {e}") from None


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file with a clear error naming the file and the line of a syntax error."""
    p = Path(path)
    if not p.is_file():
        raise EmkitError(f"no such file: {p}")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise EmkitError(f"{p}:{line} is not valid YAML: {getattr(e, 'problem', e)}") from None
