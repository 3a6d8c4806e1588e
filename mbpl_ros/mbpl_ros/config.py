"""
Typed, validated configuration loaded from YAML.

Each section is a dataclass; every field carries a one-line doc in its metadata, so
the documentation and the validation come from one place. Loading rejects unknown
keys and bad values with an error naming the key path and what is allowed.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from mbpl_ros.core.settings import SettingsError, allowed_text, from_mapping, setting


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""

    names_key = True  # its message names the file or key path already


def doc(text: str, default: Any = dataclasses.MISSING, **limits) -> Any:
    """Return a documented dataclass field with limits (see mbpl_ros.core.settings.setting)."""
    return setting(text, default, **limits)


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """
    Build the dataclass `cls` from a plain mapping, validating every key.

    See mbpl_ros.core.settings.from_mapping: the types and limits of the fields are
    checked once, there; errors are ConfigError naming the key path, the value and what
    is allowed.
    """
    try:
        return from_mapping(cls, data, path)
    except SettingsError as error:
        raise ConfigError(str(error)) from None


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
    """
    Return the parsed contents of a YAML file.

    The parsed contents of a YAML file ({} when empty); ConfigError naming the file when it
    is missing, not YAML, or gives a key twice in one mapping (with both line numbers).
    """
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
    """
    Return `path` resolved, once it is known that a run can write there.

    `path` resolved, once it is known that a run can write there: an existing directory
    that is writable, or one that can be created. ConfigError naming the path and the
    reason (it, or a parent, is a file; not writable; cannot be created) otherwise. Checked
    by writing a probe that is removed at once, so permissions, read-only file systems and
    pseudo file systems all count; nothing is left behind.
    """
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
