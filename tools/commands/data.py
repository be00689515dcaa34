"""``fetalhead data check DATA``: every scan's frames and label balance, and every problem.

The checks are ``train.data.check_dataset``, which ``load_dataset`` runs
too, so training refuses exactly the data this command reports as not OK.
Exit status 0 when the data is OK (no fatal problem), 1 when not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tools.command import add_config, add_settings, add_verbose, parser, run, settings, subparsers
from train.config import CheckConfig


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("data", "Dataset tools.")
    commands = subparsers(p, dest="command")
    c = commands.add_parser("check", help="report scans, label balance and every problem",
                            description="Report every scan's frames and Head / Not-Head counts, then every "
                                        "problem with its file and row. Exit 1 when training could not use "
                                        "the data.")
    c.add_argument("data", type=Path, metavar="DATA", help="dataset folder: one folder per scan")
    add_settings(c, CheckConfig)
    add_config(c, "data")
    add_verbose(c)
    args = p.parse_args(argv)

    def work() -> int:
        from tools import render
        from train.data import check_dataset

        config = settings(args, CheckConfig, "data")
        report = check_dataset(args.data, window=config.window, check_images=config.check_images)
        render.print_check_report(report, args.data)
        return 0 if report.ok else 1

    return run(work, verbose=args.verbose)
