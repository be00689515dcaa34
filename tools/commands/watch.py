"""``fetalhead watch``: every stream's smoothed verdict, scores and figures, and the processes' health, live."""

from __future__ import annotations

from typing import Sequence

from stream import net
from stream.watch import WatchConfig, watch
from tools.command import add_config, add_settings, parser, run, settings
from tools.render import board_view


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("watch", "Live view of every stream's verdict (smoothed over --hold frames), scores and figures, "
                        "and of the worker's health.")
    add_settings(p, WatchConfig)
    add_config(p, "watch")
    args = p.parse_args(argv)

    def work() -> int:
        config = settings(args, WatchConfig, "watch")
        with net.process_scope() as stop:
            watch(config, stop, board_view(config.interval_s))
        return 0

    return run(work, verbose=args.verbose)
