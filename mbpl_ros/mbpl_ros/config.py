"""Typed, validated configuration loaded from YAML.

Each section is a dataclass; every field carries a one-line doc in its metadata, so
the documentation and the validation come from one place. Loading rejects unknown
keys and bad values with an error naming the key path and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def doc(text: str, default: Any = dataclasses.MISSING, **limits) -> Any:
    """A dataclass field with its documentation and numeric limits (gt, ge, le)."""
    metadata = {"doc": text, **limits}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _check_limits(path: str, value: float, meta: dict) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {value!r}")
    for key, ok, word in (("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
                          ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        if key in meta and not ok(value, meta[key]):
            raise ConfigError(f"{path}: must be {word} {meta[key]}, got {value!r}")


def _convert(path: str, value: Any, kind: Any, meta: dict) -> Any:
    origin = typing.get_origin(kind)
    if origin is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise ConfigError(f"{path}: must be one of {', '.join(map(repr, allowed))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return None
        return _convert(path, value, options[0], meta)
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, path)
    if origin is list:
        (item_kind,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: must be a list, got {type(value).__name__}")
        return [_convert(f"{path}[{i}]", item, item_kind, meta) for i, item in enumerate(value)]
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a mapping, got {type(value).__name__}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: must be an integer, got {value!r}")
        _check_limits(path, value, meta)
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: must be a number, got {value!r}")
        _check_limits(path, float(value), meta)
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {kind!r} at {path}")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build the dataclass `cls` from a plain mapping, validating every key."""
    where = path or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(fields))}")
    values = {}
    for name, field in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name in data:
            values[name] = _convert(key_path, data[name], hints[name], dict(field.metadata))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_path}: required key is missing ({field.metadata.get('doc', '')})")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping key given twice (PyYAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:   # an unhashable key: construct_mapping names it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise ConfigError(f"key {key!r} is given twice, on lines {first} and "
                                      f"{key_node.start_mark.line + 1}; allowed: each key once")
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The parsed contents of a YAML file ({} when empty); ConfigError naming the file when it
    is missing, not YAML, or gives a key twice in one mapping (with both line numbers)."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return {} if data is None else data


def check_output_directory(path: str | Path, what: str = "output directory") -> Path:
    """`path` resolved, once it is known that a run can write there: an existing directory
    that is writable, or one that can be created. ConfigError naming the path and the
    reason (it, or a parent, is a file; not writable; cannot be created) otherwise. Checked
    by writing a probe that is removed at once, so permissions, read-only file systems and
    pseudo file systems all count; nothing is left behind."""
    import tempfile

    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        which = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise ConfigError(f"{what} {str(path)!r} {which}; allowed: a directory path")
    try:
        if existing == path:
            handle, probe = tempfile.mkstemp(prefix=".mbpl-write-check-", dir=path)
            os.close(handle)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".mbpl-write-check-", dir=existing))
    except OSError as error:
        reason = "is not writable" if existing == path else f"cannot be created (in {existing})"
        raise ConfigError(f"{what} {str(path)!r} {reason}: {error.strerror or error}; allowed: a "
                          "directory this user can write to or create") from None
    return path.resolve()


def load_yaml(cls: type, path: str | Path) -> Any:
    """Load and validate a YAML file into the dataclass `cls`."""
    data = read_yaml(path)
    try:
        return from_dict(cls, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, default, doc) rows for every field, nested sections expanded."""
    rows = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            rows.extend(describe(kind, key + "."))
            continue
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        rows.append((key, default, field.metadata.get("doc", "")))
    return rows
