"""The ``fetalhead`` command: one entry point, one module per subcommand under ``tools.commands``.

Subcommand modules are imported only when used, so ``fetalhead --help`` and
light commands do not pay for importing TensorFlow.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

# name -> one-line summary; the subcommand is tools.commands.<name with - as _>.main(argv)
COMMANDS: dict[str, str] = {
    "model": "model info: architecture, feature size and parameter counts (model export: one Keras file)",
    "synth": "write a synthetic ultrasound phantom dataset",
    "data": "data check: report scans, label balance and every problem",
    "train": "k-fold training of the CNN-LSTM on scan folders (train merge: combine --fold runs)",
    "evaluate": "score a model bundle on scans: metrics, plots, per-frame predictions",
    "explain": "heat maps of where the model looked: overlay PNGs and a CSV per frame",
    "capture": "publish frames from a device, video file, scan folder or synthetic source",
    "worker": "score every frame of the subscribed streams with a model bundle",
    "watch": "live view of the scores of every stream",
    "igtl-out": "serve every score as an OpenIGTLink STRING message (3D Slicer, devices)",
    "view": "live web page: each stream's image with its verdict, score timeline and health",
    "record": "write scores to CSV and annotated frames to a video",
    "run": "capture, worker and viewer as supervised processes",
    "hub": "frames of live captures to several workers, every worker's scores at one address",
    "keys": "make CURVE key pairs to encrypt and authenticate the stream links",
    "demo": "synthetic data -> k-fold training -> live replay of a held-out scan",
    "bench": "benchmarks as ratios against baselines measured in the same run",
    "soak": "a long live stream through real capture and worker processes, checked for creep",
}


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter buries the tool's own messages; set before anything imports it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = ["usage: fetalhead COMMAND [options]   (fetalhead COMMAND --help for each)", "", "commands:"]
        lines += [f"  {name:<10} {summary}" for name, summary in COMMANDS.items()]
        print("\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fetalhead: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"tools.commands.{name.replace('-', '_')}")
    try:
        return int(module.main(rest) or 0)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
