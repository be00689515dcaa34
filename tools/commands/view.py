"""``fetalhead view``: the live web page of every stream's image, verdict, timeline and health."""

from __future__ import annotations

import sys
from typing import Sequence

from stream import net
from stream.view import ViewConfig, view
from tools.command import add_config, add_settings, parser, run, settings


def announce(url: str, token: bool) -> None:
    """Print the page's address once; with a token it is the only place the token is shown."""
    if token:
        print(f"fetalhead view: open {url}\n  (the access token is in that address; it is not shown again)")
    else:
        print(f"fetalhead view: open {url}  (Ctrl-C to stop)")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("view", "Serve a live web page of every stream: the image with its verdict, the score timeline, "
                       "fps, latency and process health. Frames need fetalhead worker --forward-frames.")
    add_settings(p, ViewConfig)
    add_config(p, "view")
    args = p.parse_args(argv)

    def work() -> int:
        config = settings(args, ViewConfig, "view")
        token = config.access_token()
        with net.process_scope() as stop:
            view(config, stop, token=token, on_ready=lambda url: announce(url, token is not None))
        return 0

    return run(work, verbose=args.verbose)
