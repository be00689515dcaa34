"""``fetalhead data check DATA``: every scan's frames and label balance, and every problem.

The checks themselves live in ``train.data`` (``check_dataset``), which
``load_dataset`` runs too, so training refuses exactly the data this command
reports as not OK. Exit status 0 when the data is OK (no fatal problem), 1 when not.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from models.config import check, load
from tools.cli import Parser, parser, run
from train.data import CheckReport, Problem, ScanSummary, check_dataset

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["CheckConfig", "CheckReport", "Problem", "ScanSummary", "check_dataset", "main", "render"]


@dataclass(frozen=True)
class CheckConfig:
    """Settings of ``fetalhead data check``; TOML table ``[data]``."""

    window: int = 8
    check_images: bool = True

    def __post_init__(self) -> None:
        check(self.window >= 1, f"window: must be >= 1, got {self.window}")


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}" if whole else "-"


def render(report: CheckReport, root: Path, console: Console) -> None:
    """Print the report to a rich console: a table of scans, every problem, then the verdict."""
    from rich.table import Table

    usable = set(report.usable_scans)
    table = Table(title=f"{root}: {len(report.scans)} scans", title_justify="left")
    for name, justify in (("scan", "left"), ("source", "left"), ("frames", "right"), ("Head", "right"),
                          ("Not-Head", "right"), ("Head %", "right"), ("usable", "left")):
        table.add_column(name, justify=justify)
    for s in report.scans:
        table.add_row(s.name, s.source, str(s.frames), str(s.head), str(s.not_head),
                      _percent(s.head, s.head + s.not_head), "yes" if s.name in usable else "[red]no[/red]")
    frames = sum(s.frames for s in report.scans)
    head = sum(s.head for s in report.scans)
    not_head = sum(s.not_head for s in report.scans)
    table.add_section()
    table.add_row("total", "", str(frames), str(head), str(not_head), _percent(head, head + not_head),
                  f"{len(usable)} scans")
    console.print(table)

    n_fatal = len(report.fatal)
    n_warn = len(report.problems) - n_fatal
    if report.problems:
        console.print(f"{len(report.problems)} problems: {n_fatal} fatal, {n_warn} warnings")
    for problem in report.problems:
        kind = "[red]error[/red]  " if problem.fatal else "[yellow]warning[/yellow]"
        console.print(f"{kind} ", end="")
        # Paths and messages are printed as they are: file names may hold [brackets].
        console.print(str(problem), markup=False)
    if report.ok:
        console.print(f"[green]OK[/green]: {len(usable)} usable scans")
    else:
        console.print(f"[red]NOT OK[/red]: {n_fatal} fatal problem{'s' if n_fatal != 1 else ''}; "
                      "training refuses this data until they are fixed")


def _check(args: argparse.Namespace) -> int:
    from rich.console import Console

    overrides = {"window": args.window, "check_images": False if args.no_images else None}
    config = load(CheckConfig, "data", args.config, overrides=overrides)
    report = check_dataset(args.data, window=config.window, check_images=config.check_images)
    render(report, args.data, Console(highlight=False, soft_wrap=True))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("data", "Dataset tools.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    c = commands.add_parser("check", help="report scans, label balance and every problem",
                            description="Report every scan's frames and Head / Not-Head counts, then every "
                                        "problem with its file and row. Exit 1 when training could not use "
                                        "the data.")
    c.add_argument("data", type=Path, metavar="DATA", help="dataset folder: one folder per scan")
    c.add_argument("--window", type=int, help="frames per training window; shorter scans are left out (default 8)")
    c.add_argument("--no-images", action="store_true", help="do not decode every image and video frame (faster)")
    c.add_argument("--config", type=Path, help="TOML file with a [data] table; flags override it")
    # Accept -v after the subcommand too, without resetting one given before it.
    c.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages")
    args = p.parse_args(argv)
    return run(lambda: _check(args), verbose=args.verbose)
