"""``fetalhead run``: capture, worker and viewer/recorder as separate, supervised processes."""

from __future__ import annotations

import signal
from typing import Sequence

from stream import net
from stream.run import RunConfig, run_pipeline
from tools.command import add_config, add_settings, parser, run, settings


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("run", "Run capture, worker and viewer/recorder as supervised processes.")
    p.add_argument("source", help="device index (0), video file, scan folder, or 'synthetic'")
    add_settings(p.add_mutually_exclusive_group(), RunConfig, only=("fast", "fps"))
    # -v is the parser's own flag; the children get it too.
    add_settings(p, RunConfig, exclude=("source", "fast", "fps", "verbose"))
    add_config(p, "run")
    args = p.parse_args(argv)

    def work() -> int:
        config = settings(args, RunConfig, "run", source=args.source, verbose=args.verbose or None)
        with net.signal_stop((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as stop:
            return run_pipeline(config, stop).exit_code

    return run(work, verbose=args.verbose)
