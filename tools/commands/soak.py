"""``fetalhead soak``: stream synthetic frames through real capture and worker processes; check for creep."""

from __future__ import annotations

from typing import Sequence

from tools.command import add_config, add_settings, parser, run, settings
from tools.soak import SoakConfig, soak


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("soak", "Stream synthetic frames through real capture and worker processes; check for creep.")
    add_settings(p, SoakConfig)
    add_config(p, "soak")
    args = p.parse_args(argv)

    def work() -> int:
        from rich.console import Console

        from tools.render import print_soak_report

        result = soak(settings(args, SoakConfig, "soak"))
        print_soak_report(result, Console())
        return 1 if result.problems else 0

    return run(work, verbose=args.verbose)
