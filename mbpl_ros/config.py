"""Typed, validated configuration loaded from YAML.

Each section is a dataclass; every field carries a one-line doc in its metadata, so
the documentation and the validation come from one place. Loading rejects unknown
keys and bad values with an error naming the key path and what is allowed.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mbpl_ros.core.settings import SettingsError, allowed_text, check_value, setting


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def doc(text: str, default: Any = dataclasses.MISSING, **limits) -> Any:
    """Return a documented dataclass field with limits (see mbpl_ros.core.settings.setting)."""
    return setting(text, default, **limits)


def _build(path: str, value: Any, kind: Any) -> Any:
    """Return `value` with the dataclasses of `kind` (nested, in lists, optional) built from mappings."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, path)
    if origin in (typing.Union, types.UnionType) and value is not None:
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return _build(path, value, options[0])
    if origin in (list, tuple) and isinstance(value, list):
        item_kind = typing.get_args(kind)[0]
        if dataclasses.is_dataclass(item_kind):
            return [_build(f"{path}[{i}]", item, item_kind) for i, item in enumerate(value)]
    return value


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build the dataclass `cls` from a plain mapping, validating every key.

    The type and limits of each field are checked once, by mbpl_ros.core.settings (on
    construction for a class decorated with `settings_dataclass`, here before it for any other);
    errors name the key path, the value and what is allowed.
    """
    where = path or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed keys: "
                          f"{', '.join(sorted(fields))}")
    prefix = f"{path}." if path else ""
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _build(prefix + name, data[name], hints[name])
        elif field.default is dataclasses.MISSING and \
                field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing "
                              f"({field.metadata.get('doc', '')})")
    try:
        if not getattr(cls, "__settings__", False):
            for name, value in values.items():
                values[name] = check_value("", name, value, hints[name],
                                           dict(fields[name].metadata))
        return cls(**values)
    except ConfigError:
        raise
    except SettingsError as error:
        raise ConfigError(f"{prefix}{error.key}: {error.reason}") from None
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


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Return (key path, default, allowed, doc) rows for every field, nested sections expanded."""
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
        rows.append((key, default, allowed_text(kind, dict(field.metadata)),
                     field.metadata.get("doc", "")))
    return rows
