"""The one config loader: YAML -> typed dataclasses, strictly.

Each config kind (pipeline presets, model configs, training configs) is a tree of dataclasses whose
fields are its keys and whose defaults are the only defaults. `build(cls, mapping)` refuses what the
dataclasses do not allow, naming the key as the user writes it (dotted: `data.lr`, `enhance.method`):

  * a key that is not a field (listing the valid ones);
  * a value not of the field's type (int, float, bool, str, tuple, a tuple of tuples, dict, `X | None`,
    nested dataclass; an int is accepted for a float, a list for a tuple);
  * a value outside the range its field declares with `setting(lo=, hi=, gt=, lt=, choices=)`;
  * whatever the dataclass's own `__post_init__` refuses (a ConfigError with `key=`).

Settings that code also constructs directly (e.g. `TrackerConfig(stride=0)`) call `validate(self)`
first in their `__post_init__`: the same rules, so a value is checked the same way however it came.

A union of dataclasses (e.g. the encoder: EDSR or RDN) is chosen by its `name` key.

Example (a section of a bigger config, so its keys are named as `decoder.<key>`):
    >>> @dataclasses.dataclass
    ... class Decoder:
    ...     hidden: int = setting(256, lo=1)
    >>> build(Decoder, {"hidden": 64}, where="decoder").hidden
    64
    >>> build(Decoder, {"hidden": 0}, where="decoder")
    Traceback (most recent call last):
    common.errors.ConfigError: decoder.hidden must be an integer >= 1, got 0
"""
from __future__ import annotations

import dataclasses
import numbers
import operator
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError

_NONE = type(None)


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, lo: float | None = None,
            hi: float | None = None, gt: float | None = None, lt: float | None = None,
            choices: tuple | None = None) -> Any:
    """A dataclass field with its valid values: lo <= value <= hi, gt < value < lt (each element of a
    tuple), or one of `choices`."""
    meta = {k: v for k, v in (("lo", lo), ("hi", hi), ("gt", gt), ("lt", lt), ("choices", choices)) if v is not None}
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """The mapping in a YAML file (an empty file is an empty mapping); problems are ConfigErrors naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys, got {type(data).__name__}")
    return data


def build(cls: type, data: Any, kind: str = "config", where: str = "") -> Any:
    """An instance of dataclass `cls` from `data` (a mapping; missing keys take the defaults).

    `kind` names the config in messages ("model config"); `where` is the dotted path of `data`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"must be a mapping of keys, got {_shown(data)}", where) if where else \
            ConfigError(f"a {kind} must be a mapping of keys, got {_shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [str(k) for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"unknown {kind} key {_join(where, unknown[0])}; valid keys in {where or 'the top level'}: "
                          f"{', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: _convert(value, hints[name], fields[name], kind, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        raise exc.within(where) from None


def merge(cls: type, base: dict, top: dict) -> dict:
    """`top` over `base`, both raw mappings for `cls`: sections (dataclass fields) merge key by key, any
    other value (numbers, lists, free-form dicts such as degradation kernels) is replaced whole."""
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for key, value in top.items():
        section = _section_types(hints.get(key))
        if section and isinstance(value, dict) and isinstance(out.get(key), dict):
            chosen = _chosen(section, {**out[key], **value})
            # another member of a union (e.g. encoder rdn over edsr) replaces the section: its keys differ
            out[key] = merge(chosen, out[key], value) if _chosen(section, out[key]) is chosen else value
        else:
            out[key] = value
    return out


def validate(obj: Any) -> None:
    """Check the fields of a settings object made in code by build's rules, normalising as build does
    (an int for a float becomes a float, a list a tuple); a ConfigError names the field. Call it first
    in `__post_init__`. Nested sections are dataclass instances that checked themselves."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.init and not dataclasses.is_dataclass(value):
            setattr(obj, f.name, _convert(value, hints[f.name], f, "config", f.name))


def plain(obj: Any) -> Any:
    """A dataclass tree as YAML/JSON-ready builtins (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


# --- checks ---------------------------------------------------------------------------------


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _shown(value: Any) -> str:
    text = repr(value)
    return text if isinstance(value, (int, float, str, bool, _NONE)) or len(text) <= 40 else type(value).__name__


def _section_types(hint: Any) -> list[type]:
    """The dataclass(es) a field holds, or [] when it is not a section."""
    options = [a for a in typing.get_args(hint) if a is not _NONE] if _is_union(hint) else [hint]
    return options if options and all(dataclasses.is_dataclass(a) for a in options) else []


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _chosen(options: list[type], data: dict) -> type:
    """The member of a union of dataclasses named by data["name"] (default: the first's name)."""
    if len(options) == 1:
        return options[0]
    names = {o.__dataclass_fields__["name"].default: o for o in options}
    name = data.get("name", next(iter(names)))
    if name not in names:
        raise ConfigError(f"must be one of {', '.join(map(str, names))}, got {name!r}", "name")
    return names[name]


def _describe(hint: Any, meta: dict) -> str:
    if "choices" in meta:
        return f"one of {', '.join(map(str, meta['choices']))}"
    text = {int: "an integer", float: "a number", bool: "true or false", str: "a string", tuple: "a list",
            dict: "a mapping"}.get(typing.get_origin(hint) or hint, str(hint))
    low = ("[", f"{meta['lo']:g}") if "lo" in meta else ("(", f"{meta['gt']:g}") if "gt" in meta else None
    high = (f"{meta['hi']:g}", "]") if "hi" in meta else (f"{meta['lt']:g}", ")") if "lt" in meta else None
    if hint is tuple and (low or high):
        text += " of numbers"
    if low and high:  # an interval of reals says "a number" by itself
        text = "in " if hint is float else f"{text} in "
        return f"{text}{low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"{text} {'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{text} {'<=' if high[1] == ']' else '<'} {high[0]}"
    return text


def _convert(value: Any, hint: Any, field: dataclasses.Field, kind: str, key: str) -> Any:
    meta, nullable = dict(field.metadata), False
    if _is_union(hint):
        nullable = _NONE in typing.get_args(hint)
        if value is None and nullable:
            return None
        sections = _section_types(hint)
        if sections:
            try:
                chosen = _chosen(sections, value if isinstance(value, dict) else {})
            except ConfigError as exc:
                raise exc.within(key) from None
            return build(chosen, value, kind, key)
        options = [a for a in typing.get_args(hint) if a is not _NONE]
        hint = options[0] if len(options) == 1 else Any
    if dataclasses.is_dataclass(hint):
        return build(hint, value, kind, key)
    origin = typing.get_origin(hint) or hint
    inner = typing.get_args(hint)[0] if origin is tuple and typing.get_args(hint) else None
    if typing.get_origin(inner) is tuple and _CHECKS[tuple](value):  # a list of lists (e.g. boxes): each checked
        return tuple(_convert(v, inner, field, kind, key) for v in value)
    if not _CHECKS.get(origin, lambda v: True)(value) or not _in_range(value, meta):
        raise ConfigError(f"must be {_describe(origin, meta)}{' or null' if nullable else ''}, got {_shown(value)}", key)
    if origin is dict and typing.get_args(hint):
        return _mapping(value, typing.get_args(hint), kind, key)
    if origin is float:
        return float(value)
    if origin is int:
        return int(value)
    if origin is tuple:
        return tuple(value)
    return value


def _mapping(value: dict, args: tuple, kind: str, key: str) -> dict:
    """A free-form mapping (e.g. FFmpeg options) whose keys and values have declared types."""
    key_type, value_type = args
    loose = dataclasses.field()  # no range: only the declared types
    return {_convert(k, key_type, loose, kind, f"{key} key"): _convert(v, value_type, loose, kind, f"{key}.{k}")
            for k, v in value.items()}


# numbers.Integral / Real: numpy scalars from code are numbers too (YAML only gives int and float)
_CHECKS = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
           float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
           str: lambda v: isinstance(v, str), tuple: lambda v: isinstance(v, (list, tuple)),
           list: lambda v: isinstance(v, (list, tuple)), dict: lambda v: isinstance(v, dict)}


def _in_range(value: Any, meta: dict) -> bool:
    if "choices" in meta:
        return value in meta["choices"]
    bounds = [(meta[k], test) for k, test in (("lo", operator.ge), ("hi", operator.le), ("gt", operator.gt),
                                              ("lt", operator.lt)) if k in meta]
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if bounds and (not isinstance(v, numbers.Real) or isinstance(v, bool)):
            return False
        if not all(test(v, bound) for bound, test in bounds):
            return False
    return True
