"""``fetalhead model info|export``: inspect the CNN-LSTM, or export a bundle as one Keras model."""

from __future__ import annotations

from typing import Sequence

from models.config import ModelConfig
from tools.command import add_config, add_settings, add_verbose, parser, run, settings, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("model", "Inspect the CNN-LSTM, or export a bundle as one end-to-end Keras model.")
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
    export = actions.add_parser("export", help="write BUNDLE's end-to-end model as a .keras file",
                                description="Write a bundle's extractor and head as one end-to-end Keras model "
                                            "that loads with Keras alone.")
    export.add_argument("bundle", help="model bundle (.fhb) made by fetalhead train")
    export.add_argument("out", help="output path ending in .keras")
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
        from models.bundle import export_keras, load

        bundle = load(args.bundle)
        render.print_export(export_keras(bundle, args.out), bundle.config)
        return 0

    return run(work, verbose=args.verbose)
