"""``fetalhead worker``: score every frame of the subscribed streams with a model bundle."""

from __future__ import annotations

from typing import Sequence

from stream import net
from stream.worker import WorkerConfig, serve
from tools.command import add_config, add_settings, parser, run, settings


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("worker", "Score every frame of the subscribed streams with a model bundle.")
    p.add_argument("--model", required=True, metavar="BUNDLE",
                   help="model bundle file, required (the model is rebuilt from its own config)")
    add_settings(p, WorkerConfig)
    p.add_argument("--max-frames", type=int, metavar="N", help="exit after scoring this many frames (default: no limit)")
    add_config(p, "worker")
    args = p.parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        p.error(f"argument --max-frames: must be >= 1, got {args.max_frames}")

    def work() -> int:
        config = settings(args, WorkerConfig, "worker")
        with net.process_scope() as stop:
            serve(args.model, config, stop, args.max_frames)
        return 0

    return run(work, verbose=args.verbose)
