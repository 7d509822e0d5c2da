"""CLI options generated from config dataclasses ("the config is the CLI").

A setting's type, default and help text live in its library dataclass only (the help in the field's
metadata, ``field(default=..., metadata={"help": "..."})``, as in sparsify); :func:`config_options`
turns the fields into typer options of a command and hands the command one built config. A command
may keep its own option name (``rename``), default (``defaults``) or help (``help``) where that is
part of its interface.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import typer

from emkit.config import field_default

FROM_OPTIONS: Any = None  # the default of a command parameter that config_options fills in


_UNIONS = (typing.Union, types.UnionType)


def _unset_type(hint: Any) -> Any:
    """The option type of a field whose option may be left out: ``T | None``, a string for a ``Literal``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) in _UNIONS else [hint]
    t = args[0] if len(args) == 1 else hint
    if typing.get_origin(t) is typing.Literal:
        t = type(typing.get_args(t)[0])
    return t | None


def config_options(cls: type, param: str, *, fields: Iterable[str] | None = None,
                   rename: Mapping[str, str] | None = None, defaults: Mapping[str, Any] | None = None,
                   help: Mapping[str, str] | None = None, fixed: Mapping[str, Any] | None = None,
                   flags: Mapping[str, Sequence[str]] | None = None, unset: bool = False,
                   ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command: one option per field of dataclass ``cls``; the command gets ``cls(...)`` as ``param``.

    ``fields`` picks the fields offered (default: all, in the dataclass's order); ``rename`` maps a
    field to the command's parameter name (``batch_size`` -> ``gen_batch_size`` gives
    ``--gen-batch-size``); ``defaults`` and ``help`` override the field's default and the help in
    its metadata (for a command whose option means something narrower); ``flags`` gives a field its
    own option names (``("-n", "--n-samples")``); ``fixed`` sets fields that are not options. The
    options take the place of the command's parameter ``param`` (declare it ``= FROM_OPTIONS``), or
    follow its other parameters. ``unset``: every option defaults to None (not given) and the
    command gets ``{field: value}`` instead of a config, for a command that lays its options over a
    config file.
    """
    rename, defaults, helps, fixed = dict(rename or {}), dict(defaults or {}), dict(help or {}), dict(fixed or {})
    flags = dict(flags or {})
    hints = typing.get_type_hints(cls)
    helps = {f.name: f.metadata.get("help") for f in dataclasses.fields(cls)} | helps
    wanted = list(fields) if fields is not None else [f.name for f in dataclasses.fields(cls)]
    unknown = set(wanted) - set(hints)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    names = {f: rename.get(f, f) for f in wanted}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = typing.get_type_hints(fn)
        sig = [p.replace(annotation=own.get(p.name, p.annotation)) for p in inspect.signature(fn).parameters.values()]
        at = next((i for i, p in enumerate(sig) if p.name == param), len(sig))
        options = [inspect.Parameter(
            names[f], inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_unset_type(hints[f]) if unset else hints[f],
            default=typer.Option(None if unset else defaults[f] if f in defaults else field_default(cls, f),
                                 *flags.get(f, ()), help=helps[f]))
            for f in wanted]
        params = sig[:at] + options + sig[at + 1:]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {f: kwargs.pop(names[f]) for f in wanted}
            kwargs[param] = values if unset else cls(**{**fixed, **values})
            return fn(*args, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def sampling_options(param: str = "sampling", **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """:func:`config_options` for :class:`emkit.sampling.SamplingConfig`, given to the command as ``param``."""
    from emkit.sampling import SamplingConfig

    return config_options(SamplingConfig, param, **kw)
