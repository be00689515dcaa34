"""The ``fetalhead`` command: one entry point, one module per subcommand.

Subcommand modules are imported only when used, so ``fetalhead --help`` and
light commands do not pay for importing TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable, Sequence

from models.errors import FetalheadError

# name -> (module with main(argv), one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "model": ("models.cli", "model info: architecture, feature size and parameter counts"),
    "synth": ("train.synth", "write a synthetic ultrasound phantom dataset"),
    "data": ("train.check", "data check: report scans, label balance and every problem"),
    "train": ("train.cli", "k-fold training of the CNN-LSTM on scan folders (train merge: combine --fold runs)"),
    "evaluate": ("train.evaluate", "score a model bundle on scans: metrics, plots, per-frame predictions"),
    "capture": ("stream.capture", "publish frames from a device, video file, scan folder or synthetic source"),
    "worker": ("stream.worker", "score every frame of the subscribed streams with a model bundle"),
    "watch": ("stream.watch", "live view of the scores of every stream"),
    "record": ("stream.record", "write scores to CSV and annotated frames to a video"),
    "run": ("stream.run", "capture, worker and viewer as supervised processes"),
    "keys": ("stream.keys", "make CURVE key pairs to encrypt and authenticate the stream links"),
    "demo": ("tools.demo", "synthetic data -> k-fold training -> live replay of a held-out scan"),
    "bench": ("tools.bench", "benchmarks as ratios against baselines measured in the same run"),
}


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser(prog: str, description: str) -> Parser:
    p = Parser(prog=f"fetalhead {prog}", description=description)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return p


def run(work: Callable[[], int | None], *, verbose: bool = False) -> int:
    """Run a subcommand's work; a FetalheadError becomes one line on stderr and exit 1."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(work() or 0)
    except FetalheadError as exc:
        print(f"fetalhead: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fetalhead: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = ["usage: fetalhead COMMAND [options]   (fetalhead COMMAND --help for each)", "", "commands:"]
        lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
        print("\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fetalhead: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
