"""
Settings dataclasses whose fields carry their documentation and limits.

A field made with :func:`setting` holds its one-line doc and its limits (``gt``, ``ge``,
``lt``, ``le`` for numbers and each entry of a numeric list, ``choices``, or
``pattern`` with ``allowed``, for strings) in its metadata; a class decorated with
:func:`settings_dataclass` checks every field against them on construction. The
experiment loader (mbpl_ros.config) builds these classes from YAML and `mbpl
config-reference` documents them from the same metadata, so a setting and its range
are written once, next to the code that uses it.

Pure Python: the core's numerical modules and the torch-free loader both import it.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from typing import Any, Literal

__all__ = ["SettingsError", "allowed_text", "check_value", "field_from", "from_mapping",
           "setting", "settings_dataclass", "validate"]

_BOUNDS = (("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
           ("lt", lambda v, b: v < b, "<"), ("le", lambda v, b: v <= b, "<="))


class SettingsError(ValueError):
    """A setting's value is not allowed; `key` is its field name, `reason` what is wrong."""

    names_key = True  # its message starts with the key (from_mapping adds no prefix)

    def __init__(self, owner: str, key: str, reason: str):
        self.owner, self.key, self.reason = owner, key, reason
        super().__init__(f"{owner}.{key} {reason}" if owner else f"{key}: {reason}")


def setting(text: str, default: Any = dataclasses.MISSING, **limits) -> Any:
    """Return a dataclass field documented by `text`, with `limits` (see the module)."""
    metadata = {"doc": text, **limits}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_from(cls: type, name: str, **changes) -> Any:
    """
    Return a new field like `cls`'s field `name` (doc, limits, default), with `changes`.

    Lets a section of the experiment file take a setting from the core class that uses it
    instead of writing its doc and range a second time. `changes` may replace the
    default (``default=``) or the doc (``doc=``); the limits are always the original's.
    """
    (original,) = [f for f in dataclasses.fields(cls) if f.name == name]
    metadata = dict(original.metadata)
    if "doc" in changes:
        metadata["doc"] = changes.pop("doc")
    if "default" in changes:
        return dataclasses.field(default=changes.pop("default"), metadata=metadata)
    if original.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=original.default_factory, metadata=metadata)
    return dataclasses.field(default=original.default, metadata=metadata)


def allowed_text(kind: Any, meta: dict) -> str:
    """Return what a field of type `kind` with metadata `meta` allows, in words."""
    if "allowed" in meta:
        return meta["allowed"]
    origin = typing.get_origin(kind)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(kind)))
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        words = [allowed_text(k, meta) for k in options]
        words = " or ".join(w for w in words  # "a mapping" is said by "a mapping or a list of…"
                            if not any(o != w and o.startswith(w) for o in words))
        return f"null or {words}" if len(options) < len(typing.get_args(kind)) else words
    bounds = " and ".join(f"{word} {meta[key]}" for key, _, word in _BOUNDS if key in meta)
    if origin in (list, tuple):
        item = typing.get_args(kind)[0]
        if dataclasses.is_dataclass(item):
            return "a mapping or a list of mappings"
        inner = {float: "numbers", int: "integers", str: "strings"}.get(item, "entries")
        return f"a list of {inner}" + (f", each {bounds}" if bounds else "")
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer" + (f" {bounds}" if bounds else "")
    if kind is float:
        return "a number" + (f" {bounds}" if bounds else "")
    if kind is str:
        if "choices" in meta:
            return "one of " + ", ".join(map(repr, meta["choices"]))
        return "a string"
    if kind is dict or origin is dict or dataclasses.is_dataclass(kind):
        return "a mapping"
    return getattr(kind, "__name__", str(kind))


def _check_bounds(owner: str, key: str, value: float, meta: dict) -> None:
    if not math.isfinite(value):
        raise SettingsError(owner, key, f"must be a finite number, got {value!r}")
    for name, ok, word in _BOUNDS:
        if name in meta and not ok(value, meta[name]):
            raise SettingsError(owner, key, f"must be {word} {meta[name]}, got {value!r}")


def check_value(owner: str, key: str, value: Any, kind: Any, meta: dict) -> Any:
    """
    Return `value` checked against the type `kind` and the limits `meta`.

    Integers become floats and lists tuples where the type says so.

    Raises SettingsError(owner, key, reason) naming the value and what is allowed.
    """
    origin = typing.get_origin(kind)
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise SettingsError(owner, key, f"must be {allowed_text(kind, meta)}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(kind):
            return None
        return check_value(owner, key, value, _option(kind, value), meta)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, kind):
            raise SettingsError(owner, key, f"must be a {kind.__name__}, got "
                                f"{type(value).__name__}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise SettingsError(owner, key, f"must be {allowed_text(kind, meta)}, got {value!r}")
        item_kind = typing.get_args(kind)[0]
        if dataclasses.is_dataclass(item_kind):
            items = [check_value(owner, f"{key}[{i}]", item, item_kind, meta)
                     for i, item in enumerate(value)]
        else:
            try:
                items = [check_value(owner, key, item, item_kind, meta) for item in value]
            except SettingsError:  # name the whole list: its entries share one rule
                raise SettingsError(owner, key, f"must be {allowed_text(kind, meta)}, got "
                                    f"{value!r}") from None
        return tuple(items) if origin is tuple else items
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise SettingsError(owner, key, f"must be a mapping, got {type(value).__name__}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise SettingsError(owner, key, f"must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise SettingsError(owner, key, f"must be an integer, got {value!r}")
        _check_bounds(owner, key, value, meta)
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SettingsError(owner, key, f"must be a number, got {value!r}")
        _check_bounds(owner, key, float(value), meta)
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise SettingsError(owner, key, f"must be a string, got {value!r}")
        if "choices" in meta and value not in meta["choices"]:
            raise SettingsError(owner, key, f"must be {allowed_text(kind, meta)}; got {value!r}")
        if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
            raise SettingsError(owner, key, f"must be {meta.get('allowed', meta['pattern'])}, "
                                f"got {value!r}")
        return value
    raise TypeError(f"unsupported settings field type {kind!r} at {owner}.{key}")


def _option(kind: Any, value: Any) -> Any:
    """Return the member of the union `kind` that `value` is meant as (a list or not)."""
    options = [k for k in typing.get_args(kind) if k is not type(None)]
    listed = isinstance(value, (list, tuple))
    for option in options:
        if (typing.get_origin(option) in (list, tuple)) == listed:
            return option
    return options[0]


def _build(path: str, value: Any, kind: Any) -> Any:
    """
    Return `value` with the dataclasses of `kind` (nested, in lists, optional) built from mappings.

    Where a list of dataclasses is expected, one mapping stands for a list of one.
    """
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, path)
    if origin in (typing.Union, types.UnionType) and value is not None:
        option = _option(kind, value)
        if dataclasses.is_dataclass(option) and not isinstance(value, dict):
            raise SettingsError("", path, f"must be {allowed_text(kind, {})}, got {value!r}")
        return _build(path, value, option)
    if origin in (list, tuple):
        item_kind = typing.get_args(kind)[0]
        if dataclasses.is_dataclass(item_kind):
            if isinstance(value, dict):
                return [from_mapping(item_kind, value, path)]
            if isinstance(value, list):
                return [from_mapping(item_kind, item, f"{path}[{i}]")
                        for i, item in enumerate(value)]
            raise SettingsError("", path, f"must be a mapping or a list of mappings, got "
                                f"{value!r}")
    return value


def from_mapping(cls: type, data: Any, path: str = "") -> Any:
    """
    Build the settings dataclass `cls` from a plain mapping (parsed YAML), checking every key.

    Unknown and missing keys, and values the fields' types and limits do not allow, raise
    SettingsError whose message starts with the key path (`path` being this mapping's).
    A class decorated with settings_dataclass checks its fields on construction; any
    other dataclass is checked here, before construction.
    """
    where = path or "config"
    if not isinstance(data, dict):
        raise SettingsError("", where, f"must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise SettingsError("", where, f"unknown key {unknown[0]!r}; allowed keys: "
                            f"{', '.join(sorted(fields))}")
    prefix = f"{path}." if path else ""
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _build(prefix + name, data[name], hints[name])
        elif field.default is dataclasses.MISSING and \
                field.default_factory is dataclasses.MISSING:
            raise SettingsError("", prefix + name, "required key is missing "
                                f"({field.metadata.get('doc', '')})")
    try:
        if not getattr(cls, "__settings__", False):
            for name, value in values.items():
                values[name] = check_value("", name, value, hints[name],
                                           dict(fields[name].metadata))
        return cls(**values)
    except SettingsError as error:
        if error.owner in ("", cls.__name__):  # this class's own field
            raise SettingsError("", prefix + error.key, error.reason) from None
        raise
    except ValueError as error:
        if getattr(error, "names_key", False):  # e.g. a ConfigError: it says where already
            raise
        raise SettingsError("", where, str(error)) from None


def validate(obj: Any) -> None:
    """Check every field of the dataclass instance `obj` against its type and metadata."""
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        value = check_value(cls.__name__, field.name, getattr(obj, field.name),
                            hints[field.name], dict(field.metadata))
        object.__setattr__(obj, field.name, value)


def settings_dataclass(cls: type) -> type:
    """Make `cls` a dataclass whose fields are validated before its own __post_init__."""
    own = cls.__dict__.get("__post_init__")

    def __post_init__(self) -> None:
        validate(self)
        if own is not None:
            own(self)

    cls.__post_init__ = __post_init__
    cls.__settings__ = True
    return dataclasses.dataclass(cls)
