"""Machinery behind :mod:`smoelib.settings`: documented fields and a strict, collecting loader.

A settings class is a frozen dataclass whose fields are declared with :func:`setting`, which
records a docstring, a unit and an optional check. :func:`from_mapping` turns a parsed YAML
mapping into the tree, reporting every unknown key, wrong type and failed check at once.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

from smoelib.errors import Problem
from smoelib.pipeline.yamlsrc import Path_, Source, render_path

Check = Callable[[Any], str | None]


def setting(default: Any, doc: str, *, unit: str | None = None, check: Check | None = None,
            overlay: Callable[[], type] | None = None,
            factory: Callable[[], Any] | None = None) -> Any:
    """A settings field: its default, what it means, its unit, and an optional check.

    ``check`` returns why a value is invalid, or None. ``overlay`` makes the field a mapping
    from names to partial trees of the class it returns (only the keys given, each validated
    as that class's field; :func:`apply_overlay` lays one over a full tree). ``factory``, when
    given, makes the default (``default`` is then ignored): for a default read from a file.
    """
    meta = {"doc": doc, "unit": unit, "check": check, "overlay": overlay}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, list | dict | set) or dataclasses.is_dataclass(default):
        raise TypeError("mutable defaults: use a tuple, a frozen mapping or a section class")
    if isinstance(default, types.MappingProxyType):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    """A nested settings section, defaulting to ``cls()``."""
    return dataclasses.field(default_factory=cls, metadata={"doc": doc, "unit": None,
                                                            "check": None})


def positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number 0..65535"


def fraction(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be within [0, 1]"


def each(check: Check) -> Check:
    """Apply ``check`` to every item of a tuple."""
    def run(values: tuple) -> str | None:
        for v in values:
            why = check(v)
            if why:
                return f"every item {why} (got {v!r})"
        return None if values else "must not be empty"
    return run


def from_mapping(cls: type, data: Any, *, source: Source, path: Path_ = (),
                 problems: list[Problem], fill: Mapping[str, Any] | None = None) -> Any:
    """Build ``cls`` from ``data``; append a :class:`Problem` for everything wrong. ``fill``:
    values for fields ``data`` does not give, in place of their defaults."""
    def add(p: Path_, message: str) -> None:
        problems.append(Problem(render_path(p), message, source.line(p)))

    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        add(path, f"must be a mapping, got {type(data).__name__}")
        return cls(**(fill or {}))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            add((*path, key), f"unknown key {key!r}; expected one of {', '.join(fields)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        hint = hints[name]
        value = data[name]
        if dataclasses.is_dataclass(hint):
            values[name] = from_mapping(hint, value, source=source, path=(*path, name),
                                        problems=problems)
            continue
        if f.metadata.get("overlay") is not None:
            values[name] = overlays(f.metadata["overlay"](), value, source=source,
                                     path=(*path, name), problems=problems)
            continue
        ok, converted, why = _convert(value, hint)
        if not ok:
            add((*path, name), why)
            continue
        check = f.metadata.get("check")
        why = check(converted) if check else None
        if why:
            add((*path, name), f"{why}, got {value!r}")
            continue
        values[name] = converted
    return cls(**{**(fill or {}), **values})


def overlays(cls: type, data: Any, *, source: Source, path: Path_,
              problems: list[Problem]) -> Mapping[str, Any]:
    """A mapping of names to partial ``cls`` trees, each key checked as ``cls`` checks it; the
    values kept are the converted ones, frozen."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(Problem(render_path(path), f"must be a mapping, got "
                                f"{type(data).__name__}", source.line(path)))
        return types.MappingProxyType({})
    nested = [f.name for f in dataclasses.fields(cls) if f.metadata.get("overlay")]
    out = {}
    for name, part in data.items():
        where = (*path, name)
        if not isinstance(name, str):
            problems.append(Problem(render_path(where), "names must be strings",
                                    source.line(where)))
            continue
        for key in nested:
            if isinstance(part, Mapping) and key in part:
                problems.append(Problem(render_path((*where, key)), f"{key!r} cannot be "
                                        "nested in an overlay", source.line((*where, key))))
        if isinstance(part, Mapping):
            part = {k: v for k, v in part.items() if k not in nested}
        # an overlay holds no overlays: building it must not read their defaults (a default
        # read from a file of overlays would recurse)
        built = from_mapping(cls, part, source=source, path=where, problems=problems,
                             fill={k: types.MappingProxyType({}) for k in nested})
        out[name] = _picked(built, part)
    return types.MappingProxyType(out)


def _picked(built: Any, given: Any) -> Any:
    """The converted values of ``built`` at the keys ``given`` names, as frozen mappings."""
    if not isinstance(given, Mapping) or not dataclasses.is_dataclass(built):
        return built
    names = {f.name for f in dataclasses.fields(built)}
    return types.MappingProxyType({k: _picked(getattr(built, k), v) for k, v in given.items()
                                   if k in names})


def apply_overlay(tree: Any, overlay: Mapping[str, Any]) -> Any:
    """``tree`` with every value ``overlay`` gives replaced (nested mappings go into nested
    sections; the keys are known to be valid: :func:`from_mapping` checked them)."""
    changes = {}
    for key, value in overlay.items():
        current = getattr(tree, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[key] = apply_overlay(current, value)
        else:
            changes[key] = value
    return dataclasses.replace(tree, **changes)


def _convert(value: Any, hint: Any) -> tuple[bool, Any, str]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return True, None, ""
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0])
    if origin is Literal:
        if value in args:
            return True, value, ""
        return False, None, f"must be one of {', '.join(map(repr, args))}, got {value!r}"
    if hint is bool:
        return (True, value, "") if isinstance(value, bool) else (
            False, None, f"must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            want = "an integer" if hint is int else "a number"
            return False, None, f"must be {want}, got {value!r}"
        if not math.isfinite(value):
            return False, None, f"must be finite, got {value!r}"
        if hint is int and not float(value).is_integer():
            return False, None, f"must be an integer, got {value!r}"
        return True, hint(value), ""
    if hint is str:
        return (True, value, "") if isinstance(value, str) else (
            False, None, f"must be a string, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, None, f"must be a list, got {value!r}"
        out = []
        for item in value:
            ok, conv, why = _convert(item, args[0])
            if not ok:
                return False, None, f"every item {why}"
            out.append(conv)
        return True, tuple(out), ""
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            return False, None, f"must be a mapping, got {value!r}"
        out_map = {}
        for k, v in value.items():
            ok, conv, why = _convert(v, args[1])
            if not isinstance(k, str) or not ok:
                return False, None, f"entry {k!r}: {why or 'keys must be strings'}"
            out_map[k] = conv
        return True, types.MappingProxyType(out_map), ""
    raise TypeError(f"unsupported settings type {hint!r}")


def to_plain(obj: Any) -> Any:
    """The settings tree as plain YAML-ready data (round-trips through :func:`from_mapping`)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def render_commented(obj: Any, indent: int = 0, *, only: tuple[str, ...] | None = None
                     ) -> list[str]:
    """YAML lines for the tree (its fields ``only``, if given) with every field's docstring
    and unit as a comment above it."""
    import yaml

    pad = "  " * indent
    lines: list[str] = []
    for f in dataclasses.fields(obj):
        if only is not None and f.name not in only:
            continue
        doc = f.metadata.get("doc", "")
        unit = f.metadata.get("unit")
        comment = doc + (f" [{unit}]" if unit else "")
        for part in _wrap(comment, 96 - len(pad)):
            lines.append(f"{pad}# {part}")
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.extend(render_commented(value, indent + 1))
        else:
            plain = to_plain(value)
            if isinstance(plain, dict) and plain:
                dumped = yaml.safe_dump({f.name: plain}, sort_keys=False, width=1000)
                lines.extend(pad + line for line in dumped.rstrip().splitlines())
            else:
                dumped = yaml.safe_dump(plain, default_flow_style=True, width=1000)
                dumped = dumped.strip().removesuffix("...").strip()
                lines.append(f"{pad}{f.name}: {dumped}")
    return lines


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]
