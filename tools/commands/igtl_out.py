"""``fetalhead igtl-out``: every score as an OpenIGTLink STRING message, for 3D Slicer or a device to show."""

from __future__ import annotations

from typing import Sequence

from stream import net
from stream.igtl import IgtlOutConfig, IgtlServer, igtl_out
from tools.command import add_config, add_settings, parser, run, settings


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("igtl-out", "Serve OpenIGTLink: one STRING message per score (stream, seq, score, decision and the "
                           "verdict smoothed over --hold frames, as JSON), device name the stream id.")
    add_settings(p, IgtlOutConfig)
    add_config(p, "igtl-out")
    args = p.parse_args(argv)

    def work() -> int:
        config = settings(args, IgtlOutConfig, "igtl-out")
        # Made before process_scope installs its handlers: pyigtl's server takes over SIGINT and SIGTERM.
        with IgtlServer(config.port, allow_remote=config.allow_remote, iface=config.iface) as server, \
                net.process_scope() as stop:
            igtl_out(config, server, stop)
        return 0

    return run(work, verbose=args.verbose)
