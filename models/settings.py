"""Typed settings: frozen dataclasses read from TOML tables and overrides, with one-line errors.

Every package keeps its settings in a frozen dataclass whose defaults are the
seed design. A TOML file has one table per dataclass (``[model]``, ``[train]``,
``[capture]`` ...); command-line flags override the file. ``from_mapping`` is
the one place values are checked, so a bad value reads the same from a flag
or a file. ``setting`` declares a field with the help text that the command
line shows for it. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from models.errors import ConfigError

T = TypeVar("T")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The whole TOML file as a dict; a missing or malformed file is a ConfigError."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None


# Longest shown value in an error: a value from an untrusted file (a bundle's
# config) can be a megabyte, and the error must stay one readable line.
_SHOWN_CHARS = 60
_INT64 = 1 << 63


def shown(value: Any) -> str:
    """``repr(value)``, cut to a readable length for an error message."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 3] + "..."


def _coerce(value: Any, hint: Any, name: str) -> Any:
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
                return _coerce(value, arg, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}: {shown(value)} is not valid")
    if origin is typing.Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{name}: {shown(value)} is not one of {allowed}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], name) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{name}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, name) for v, a in zip(value, args))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a table, got {shown(value)}")
        return from_mapping(hint, value, prefix=f"{name}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{name}: expected true or false, got {shown(value)}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name}: expected an integer, got {shown(value)}") from None
        # TOML's own range; no setting means anything near it.
        if not -_INT64 <= number < _INT64:
            raise ConfigError(f"{name}: {shown(value)} is out of range (a 64-bit integer)")
        return number
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name}: expected a number, got {shown(value)}") from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {shown(value)}")
        return str(value)
    if hint is Path:
        return Path(value)
    return value


def from_mapping(cls: type[T], values: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``values``: unknown keys and bad types are ConfigErrors.

    Keys may use dashes or underscores. The dataclass's ``__post_init__`` then
    checks ranges and raises ConfigError naming the field.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            allowed = ", ".join(sorted(fields))
            plain = name.isidentifier() and len(name) <= _SHOWN_CHARS
            raise ConfigError(f"{prefix}{key if plain else shown(key)}: unknown setting (known: {allowed})")
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # Range checks name their field alone; the table says which file section (or flag group) it is.
        message = str(exc)
        if prefix and not message.startswith(prefix):
            raise ConfigError(f"{prefix}{message}") from None
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass as plain TOML/JSON-friendly values (tuples become lists, Paths strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """Flat tables of plain values as TOML text that ``load`` reads back (None is left out)."""
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items() if value is not None]
        lines.append("")
    return "\n".join(lines)


def load(cls: type[T], section: str, path: str | Path | None = None,
         overrides: Mapping[str, Any] | None = None) -> T:
    """``cls`` from table ``section`` of the TOML file at ``path``, then ``overrides``.

    Overrides whose value is None are ignored, so argparse namespaces with
    unset flags can be passed as they are.
    """
    values: dict[str, Any] = {}
    if path is not None:
        table = read_toml(path).get(section, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"config file {path}: [{section}] must be a table")
        values.update(table)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key.replace("-", "_")] = value
    return from_mapping(cls, values, prefix=f"{section}.")


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition; for dataclass __post_init__ checks."""
    if not condition:
        raise ConfigError(message)


def setting(default: Any, help: str, *, flag: str | None = None, shown: str | None = None) -> Any:
    """A dataclass field with its command-line help.

    ``flag`` names its option when that is not the field's name
    (``max_batch`` is ``--batch``); ``shown`` is how ``--help`` shows a
    default that means something else than its value (None: "the
    source's name").
    """
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "shown": shown})
