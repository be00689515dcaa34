"""What every subcommand module uses: a parser whose flags come from a settings dataclass, and the runner.

``add_settings(parser, Cls)`` adds one flag per field of ``Cls``: its name
(``max_frames`` -> ``--max-frames``, or the field's ``flag``), its type
(``int``, ``float``, ``str``, ``Path``; a ``Literal``'s values as choices; a
``bool`` as ``--x``/``--no-x``; a tuple as a repeatable, comma-separated
option), its help from the field's metadata (``models.settings.setting``)
and its default from the dataclass, shown in ``--help``. Every flag defaults
to None, so ``settings(args, Cls, section)`` takes only what was given,
over the TOML file of ``--config``, over the dataclass defaults; the
dataclass then checks every value in one place (``models.settings``).

``run(work, verbose=...)`` runs a subcommand's work: a FetalheadError becomes
one line on stderr and exit status 1, any other exception its traceback and
exit status 70, Ctrl-C exit status 130. The statuses tell a supervisor
(``fetalhead run``, ``stream.supervise.CONFIG_EXIT_CODES``) what to do with a
child that ended: 1 and 2 (a bad flag) say that what it was given is wrong,
so starting it again cannot help; 70 or a signal is a crash, worth a restart.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import traceback
import types
import typing
from pathlib import Path
from typing import Any, Callable, Collection, TypeVar

from models.errors import FetalheadError
from models.settings import load

T = TypeVar("T")

EXIT_ERROR = 1  # a FetalheadError: its one line says which setting, source or file is wrong
EXIT_USAGE = 2  # a bad flag, as argparse has it
EXIT_CRASH = 70  # any other exception: a fault rather than the input (sysexits.h's EX_SOFTWARE)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parser(prog: str, description: str) -> Parser:
    """The parser of ``fetalhead PROG``, with ``-v``."""
    p = Parser(prog=f"fetalhead {prog}", description=description)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return p


def add_verbose(p: argparse.ArgumentParser) -> None:
    """``-v`` on a subcommand's parser too, without resetting one given before the subcommand."""
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages")


def subparsers(p: argparse.ArgumentParser, dest: str = "action") -> argparse._SubParsersAction:
    """Subcommands of ``p`` (``fetalhead model info``), each parsed by a ``Parser`` that takes ``-v`` too."""
    return p.add_subparsers(dest=dest, required=True, metavar="COMMAND", parser_class=Parser)


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), len(args) < len(typing.get_args(hint))
    return hint, False


def _shown(field: dataclasses.Field) -> str:
    shown = field.metadata.get("shown")
    if shown is not None:
        return shown
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "none"
    if isinstance(value, str) and not value:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def flag_name(field: dataclasses.Field) -> str:
    """The option of a field: ``--max-frames``, or ``--`` + its ``flag`` metadata."""
    return "--" + (field.metadata.get("flag") or field.name.replace("_", "-"))


def add_settings(p: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                 exclude: Collection[str] = (), only: Collection[str] | None = None,
                 help: dict[str, str] | None = None) -> None:
    """One flag per field of dataclass ``cls`` (see the module doc); ``help`` overrides a field's text."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude or (only is not None and field.name not in only) or not field.init:
            continue
        hint, _ = _unwrap(hints[field.name])
        text = (help or {}).get(field.name) or field.metadata.get("help")
        if text is None:
            raise TypeError(f"{cls.__name__}.{field.name} has no help text: declare it with models.settings.setting")
        kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": f"{text} (default: {_shown(field)})"}
        origin = typing.get_origin(hint)
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kwargs["choices"] = typing.get_args(hint)
        elif origin is tuple:
            kwargs.update(action="append", metavar="A[,B...]")
            kwargs["help"] = f"{text}; repeat or comma-separate (default: {_shown(field)})"
        elif hint in (int, float, Path):
            kwargs["type"] = hint
            kwargs["metavar"] = {int: "N", float: "X", Path: "PATH"}[hint]
        else:
            kwargs["metavar"] = field.name.split("_")[-1].upper()
        p.add_argument(flag_name(field), **kwargs)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given as flags (None where not given); a repeated tuple flag as one list."""
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name, None)
        if isinstance(value, list):
            value = [item.strip() for part in value for item in str(part).split(",") if item.strip()]
        values[field.name] = value
    return values


def add_config(p: argparse.ArgumentParser, *tables: str) -> None:
    """``--config FILE``: a TOML file whose tables the flags override."""
    names = " and ".join(f"[{t}]" for t in tables)
    what = f"{names} tables" if len(tables) > 1 else f"{'an' if tables[0][0] in 'aeiou' else 'a'} {names} table"
    p.add_argument("--config", type=Path, metavar="FILE", help=f"TOML file with {what}; flags override it")


def settings(args: argparse.Namespace, cls: type[T], section: str, **extra: Any) -> T:
    """``cls`` from the dataclass defaults, then ``--config``'s ``[section]`` table, then the flags given.

    ``extra`` adds values that do not come from flags named after fields
    (positional arguments); None values are left out.
    """
    return load(cls, section, getattr(args, "config", None), {**given(args, cls), **extra})


def run(work: Callable[[], int | None], *, verbose: bool = False) -> int:
    """Run a subcommand's work; a FetalheadError becomes one line on stderr and exit 1, a crash exit 70."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(work() or 0)
    except FetalheadError as exc:
        print(f"fetalhead: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fetalhead: interrupted", file=sys.stderr)
        return 130
    except Exception:
        # Python's own status for this is 1, which here means "the input is wrong, do not restart".
        traceback.print_exc()
        return EXIT_CRASH
