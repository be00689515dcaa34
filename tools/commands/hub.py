"""``fetalhead hub``: one address for the frames of every capture and one for the scores of every worker."""

from __future__ import annotations

from typing import Sequence

from stream import net
from stream.hub import HubConfig, serve
from tools.command import add_config, add_settings, parser, run, settings


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("hub", "Fan the frames of live captures out to several workers, and gather every worker's scores "
                      "and heartbeats at one address (ZeroMQ's own XSUB/XPUB proxy).")
    add_settings(p, HubConfig)
    add_config(p, "hub")
    args = p.parse_args(argv)

    def work() -> int:
        config = settings(args, HubConfig, "hub")
        with net.process_scope() as stop:
            serve(config, stop)
        return 0

    return run(work, verbose=args.verbose)
