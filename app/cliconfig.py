"""One mechanism between config dataclasses and command-line flags, for every config (TrainConfig,
EvalConfig, EngineConfig): flags named after the fields, types from the annotations, help from the field's
metadata ("help") or the class's FIELD_HELP, and the reverse (`to_flags`) for reproducible commands.

    add_arguments(parser, TrainConfig, required=("data", "name"))
    cfg = from_args(TrainConfig, parser.parse_args(argv))
    argv == to_flags(cfg)   # round-trips: from_args(parse(to_flags(cfg))) == cfg
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable

SHORT = {"k": "-k"}


def _kind(hint) -> tuple[type, bool]:
    """(base type, optional) of an annotation such as `int | None` or `tuple[str, ...]`."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _kind(inner[0])[0], True
    return (typing.get_origin(hint) or hint), False


def _help(cls, f: dataclasses.Field) -> str:
    return f.metadata.get("help") or getattr(cls, "FIELD_HELP", {}).get(f.name) or f.name.replace("_", " ")


def field_types(cls, skip: Iterable[str] = ()) -> list[tuple[dataclasses.Field, type, bool]]:
    """(field, base type, optional) for each init field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return [(f, *_kind(hints[f.name])) for f in dataclasses.fields(cls) if f.name not in set(skip) and f.init]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def positive_int(text: str) -> int:
    """An int flag that must be at least 1 (a count, k, a budget): refused by argparse, before any model loads."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed here: give a whole number of at least 1")
    return value


def _parser(kind, none_allowed: bool):
    """The flag's value parser; "none" gives None for an optional field whose default is not None."""
    if not none_allowed:
        return kind

    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_arguments(parser: argparse.ArgumentParser, cls, *, skip: Iterable[str] = (), required: Iterable[str] = (),
                  unset_defaults: bool = False) -> None:
    """A flag per field. With `unset_defaults`, flags not given stay None (the caller's config decides)."""
    required = set(required)
    for f, kind, optional in field_types(cls, skip):
        names = ["--" + f.name.replace("_", "-")] + ([SHORT[f.name]] if f.name in SHORT else [])
        default = None if unset_defaults else _default(f)
        shown = "" if default in (None, "", ()) else f" (default {','.join(default) if kind is tuple else default})"
        kw: dict[str, Any] = {"dest": f.name, "help": _help(cls, f) + ("" if kind is bool else shown)}
        if f.name in required:
            kw.update(required=True)
        elif kind is bool:
            kw.update(action=argparse.BooleanOptionalAction, default=default)
        else:
            kw.update(default=",".join(default) if kind is tuple and default else default)
        if kind is not bool:
            value = positive_int if f.name in getattr(cls, "POSITIVE", ()) else {int: int, float: float}.get(kind, str)
            kw["type"] = _parser(value, optional and _default(f) is not None)
            kw["metavar"] = f.name.upper() if kind is not tuple else "A,B"
        if f.name in getattr(cls, "FIELD_CHOICES", {}):
            kw["choices"] = cls.FIELD_CHOICES[f.name]
        parser.add_argument(*names, **kw)


def _given(cls, args: argparse.Namespace, skip: Iterable[str]) -> dict[str, Any]:
    """The fields' values in parsed flags, tuples split on commas."""
    values = {}
    for f, kind, _ in field_types(cls, skip):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if kind is tuple and isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            values[f.name] = value
    return values


def from_args(cls, args: argparse.Namespace, *, skip: Iterable[str] = (), **extra):
    """The config from parsed flags (tuples split on commas); `extra` sets fields the flags do not carry."""
    return cls(**{**_given(cls, args, skip), **extra})


def overrides(cls, args: argparse.Namespace, *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The fields given on the command line (not None), for `EngineConfig.from_env(**overrides)`."""
    return {k: v for k, v in _given(cls, args, skip).items() if v is not None}


def to_flags(cfg, *, skip: Iterable[str] = ()) -> list[str]:
    """Flags that rebuild `cfg` through add_arguments/from_args; fields at their default are left out."""
    out: list[str] = []
    for f, kind, optional in field_types(type(cfg), skip):
        value = getattr(cfg, f.name)
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING  # type: ignore
        if has_default and value == _default(f):
            continue
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            out.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif value is None:
            if optional and _default(f) is not None:
                out += [flag, "none"]
        elif kind is tuple:
            out += [flag, ",".join(value)]
        else:
            out += [flag, str(value)]
    return out
