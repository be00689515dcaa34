"""``fetalhead model info|export``: inspect the CNN-LSTM, or export a bundle as Keras, ONNX or a SavedModel."""

from __future__ import annotations

import argparse
from typing import Sequence

from models.config import ModelConfig
from models.export import CHOICES, export_format
from tools.command import add_config, add_settings, add_verbose, parser, run, settings, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("model", "Inspect the CNN-LSTM, or export a bundle for Keras, ONNX or TensorFlow.")
    actions = subparsers(p)
    info = actions.add_parser("info", help="a bundle's model, threshold, training and metrics; or the "
                                           "architecture of settings",
                              description="With BUNDLE: its backbone, image size, window, threshold and its rule, "
                                          "calibration, cross-validation metrics, training scans and package "
                                          "versions (read without loading the model). Without: build the "
                                          "CNN-LSTM of these settings and list its layers, feature size and "
                                          "parameter counts.")
    info.add_argument("bundle", nargs="?", help="model bundle (.fhb) made by fetalhead train (default: none, "
                                                "describe the settings' architecture)")
    add_settings(info, ModelConfig, exclude=("weights",))
    # Counting parameters needs no pretrained weights, so info never downloads them unless asked.
    info.add_argument("--weights", default="none", metavar="WEIGHTS",
                      help="backbone weights: imagenet (Keras cache), none (random) or a weights file "
                           "(default for info: none)")
    add_config(info, "model")
    add_verbose(info)
    export = actions.add_parser("export", help="write BUNDLE's model as a .keras file, ONNX or a TensorFlow SavedModel",
                                description="Write a bundle's extractor and head as one end-to-end model (preprocessed "
                                            "frames (B, window, S, S, 3) -> scores (B, window)) in the format OUT's "
                                            "extension names, or with --pieces as the two parts a device runs its "
                                            "own rolling buffer with. docs/export.md spells out the inputs.")
    export.add_argument("bundle", help="model bundle (.fhb) made by fetalhead train")
    export.add_argument("out", type=_export_target, help=f"output: {CHOICES}")
    export.add_argument("--pieces", action="store_true",
                        help="write the extractor (frames (N, S, S, 3) -> features (N, F)) and the head (features "
                             "(B, window, F) -> scores (B, window)) as OUT-extractor and OUT-head, each with OUT's "
                             "extension, instead of the end-to-end model (default: off)")
    add_verbose(export)
    args = p.parse_args(argv)

    def work() -> int:
        from tools import render

        if args.action == "info" and args.bundle is not None:
            from models.bundle import model_id, read_meta

            meta = read_meta(args.bundle)
            render.print_bundle_info(args.bundle, meta, model_id(args.bundle, meta["config"]["backbone"]))
            return 0
        if args.action == "info":
            from models.cnn_lstm import describe

            config = settings(args, ModelConfig, "model")
            render.print_model_summary(config, describe(config))
            return 0
        from models.bundle import load
        from models.export import export

        bundle = load(args.bundle)
        written = export(bundle, args.out, pieces=args.pieces)
        if not args.pieces:
            render.print_export(written[0], bundle.config)
            return 0
        from rich.console import Console

        size, window, features = bundle.config.image_size, bundle.config.window, bundle.extractor.output_shape[-1]
        console = Console(highlight=False, soft_wrap=True)
        console.print(f"wrote {written[0]}: frames (N, {size}, {size}, 3) preprocessed by models.preprocess -> "
                      f"features (N, {features})")
        console.print(f"wrote {written[1]}: features (batch, {window}, {features}) -> scores (batch, {window})")
        return 0

    return run(work, verbose=args.verbose)


def _export_target(text: str) -> str:
    """OUT, checked for a known format while parsing, so a wrong extension is a usage error."""
    try:
        export_format(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
