"""Typed configuration: frozen dataclasses, TOML files and one-line errors.

Every package keeps its settings in a frozen dataclass whose defaults are the
seed design. A TOML file has one table per dataclass (``[model]``, ``[train]``,
``[stream]`` ...); command-line flags override the file. ``from_mapping`` is the
one place values are checked, so a bad value reads the same from a flag or a file.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from models.errors import FetalheadError

T = TypeVar("T")


class ConfigError(FetalheadError, ValueError):
    """A setting with a wrong name, type or value; the message is one line."""


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
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}: {value!r} is not valid")
    if origin is typing.Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{name}: {value!r} is not one of {allowed}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], name) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{name}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, name) for v, a in zip(value, args))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a table, got {value!r}")
        return from_mapping(hint, value, prefix=f"{name}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
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
            raise ConfigError(f"{prefix}{key}: unknown setting (known: {allowed})")
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


BACKBONES = ("vgg19", "mobilenetv2", "efficientnetb0", "tiny")


def parse_roi(value: str) -> str | tuple[int, int, int, int]:
    """'auto', 'none' or 'x,y,w,h' (pixels of the raw frame) -> the ROI setting."""
    text = str(value).strip().lower()
    if text in ("auto", "none"):
        return text
    parts = text.replace(" ", "").split(",")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"roi: {value!r} is not 'auto', 'none' or 'x,y,w,h'") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ConfigError(f"roi: {value!r} needs x, y >= 0 and w, h > 0")
    return (x, y, w, h)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The CNN-LSTM and its preprocessing; defaults are the seed design.

    ``weights`` is ``imagenet`` (Keras cache), ``none`` (random) or a path to a
    ``.weights.h5`` file for the backbone. ``roi`` is ``auto``, ``none`` or
    ``x,y,w,h`` in raw-frame pixels.
    """

    backbone: typing.Literal["vgg19", "mobilenetv2", "efficientnetb0", "tiny"] = "vgg19"
    weights: str = "imagenet"
    image_size: int = 224
    window: int = 8
    lstm_units: tuple[int, int] = (256, 128)
    recurrent_dropout: float = 0.4
    dropout: float = 0.4
    dense_units: int = 64
    head_dropout: float = 0.3
    roi: str = "auto"
    roi_threshold: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.backbone in BACKBONES,
              f"backbone: {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        check(32 <= self.image_size <= 1024, f"image_size: must be 32..1024, got {self.image_size}")
        # tiny halves the image six times (three strided convolutions, three poolings).
        check(self.backbone != "tiny" or self.image_size >= 43,
              f"image_size: backbone tiny needs at least 43, got {self.image_size}")
        check(self.window >= 1, f"window: must be >= 1, got {self.window}")
        check(all(u >= 1 for u in self.lstm_units), f"lstm_units: must be >= 1, got {self.lstm_units}")
        check(self.dense_units >= 1, f"dense_units: must be >= 1, got {self.dense_units}")
        for name in ("recurrent_dropout", "dropout", "head_dropout"):
            value = getattr(self, name)
            check(0.0 <= value < 1.0, f"{name}: must be in [0, 1), got {value}")
        check(0 <= self.roi_threshold <= 255, f"roi_threshold: must be 0..255, got {self.roi_threshold}")
        object.__setattr__(self, "roi", _roi_text(parse_roi(self.roi)))

    @property
    def roi_box(self) -> str | tuple[int, int, int, int]:
        return parse_roi(self.roi)


def _roi_text(roi: str | tuple[int, int, int, int]) -> str:
    return roi if isinstance(roi, str) else ",".join(str(v) for v in roi)
