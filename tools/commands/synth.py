"""``fetalhead synth OUT``: write a synthetic ultrasound phantom dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tools.command import add_config, add_settings, parser, run, settings
from train.synth import SynthConfig


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("synth", "Write a synthetic ultrasound phantom dataset: sweeps past a fetal head, "
                        "frames as PNG or MJPG video with Head / Not-Head labels.")
    p.add_argument("out", type=Path, metavar="OUT", help="new or empty folder for the dataset")
    add_settings(p, SynthConfig)
    add_config(p, "synth")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (default: off)")
    args = p.parse_args(argv)

    def work() -> int:
        from tools import render
        from train.data import load_dataset
        from train.synth import synth_dataset

        config = settings(args, SynthConfig, "synth")
        synth_dataset(args.out, config, progress=render.progress(not args.quiet))
        render.print_synth_summary(args.out, config, load_dataset(args.out, window=1))
        return 0

    return run(work, verbose=args.verbose)
