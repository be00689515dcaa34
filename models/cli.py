"""``fetalhead model info|export``: inspect the CNN-LSTM or export a bundle as one Keras model."""

from __future__ import annotations

import argparse
from typing import Sequence

from models.config import BACKBONES, ModelConfig, load
from tools.cli import parser as make_parser, run


def _model_config(args: argparse.Namespace) -> ModelConfig:
    overrides = {"backbone": args.backbone, "weights": args.weights, "image_size": args.image_size,
                 "window": args.window}
    return load(ModelConfig, "model", args.config, overrides)


def info(config: ModelConfig) -> int:
    from rich.console import Console
    from rich.table import Table

    from models.cnn_lstm import build_cnn_lstm, build_feature_extractor, parameter_counts

    extractor = build_feature_extractor(config)
    model = build_cnn_lstm(config, extractor)
    head = model.layers[-1]
    trainable, frozen = parameter_counts(model)
    console = Console()
    table = Table(title=f"CNN-LSTM ({config.backbone}, weights {config.weights})")
    for column in ("layer", "output shape", "parameters"):
        table.add_column(column)
    table.add_row("frames", str((None, config.window, config.image_size, config.image_size, 3)), "0")
    table.add_row(f"per-frame {extractor.name} (frozen, avg pool)", str((None, config.window,
                                                                        extractor.output_shape[-1])),
                  f"{extractor.count_params():,}")
    for layer in head.layers[1:]:
        table.add_row(layer.name, str(layer.output.shape), f"{layer.count_params():,}")
    console.print(table)
    console.print(f"feature size: {extractor.output_shape[-1]}")
    console.print(f"trainable parameters: {trainable:,}")
    console.print(f"non-trainable parameters: {frozen:,}")
    return 0


def export(bundle_path: str, out: str) -> int:
    import keras

    from models.bundle import load as load_bundle
    from models.cnn_lstm import build_cnn_lstm, build_temporal_head

    bundle = load_bundle(bundle_path)
    # Keras's own LSTM layers, so the file loads where fetalhead is not installed.
    head = build_temporal_head(bundle.config, bundle.head.input_shape[-1], lstm=keras.layers.LSTM)
    head.set_weights(bundle.head.get_weights())
    model = build_cnn_lstm(bundle.config, bundle.extractor, head)
    model.save(out)
    print(f"wrote {out}: frames (batch, {bundle.config.window}, {bundle.config.image_size}, "
          f"{bundle.config.image_size}, 3) preprocessed by models.preprocess -> scores (batch, {bundle.config.window})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("model", "Inspect the CNN-LSTM, or export a bundle as one end-to-end Keras model.")
    sub = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    pi = sub.add_parser("info", help="architecture, feature size and parameter counts")
    pi.add_argument("--config", help="TOML file with a [model] table")
    pi.add_argument("--backbone", choices=BACKBONES)
    pi.add_argument("--weights", help="imagenet, none, or a weights file (default for info: none)")
    pi.add_argument("--image-size", type=int)
    pi.add_argument("--window", type=int)
    pe = sub.add_parser("export", help="write BUNDLE's end-to-end model as a .keras file")
    pe.add_argument("bundle")
    pe.add_argument("out", help="output path ending in .keras")
    args = p.parse_args(argv)
    if args.action == "info":
        # Counting parameters needs no pretrained weights; don't try to download them.
        if args.weights is None:
            args.weights = "none"
        return run(lambda: info(_model_config(args)), verbose=args.verbose)
    return run(lambda: export(args.bundle, args.out), verbose=args.verbose)
