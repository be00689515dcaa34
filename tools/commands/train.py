"""``fetalhead train DATA --out RUN`` and ``fetalhead train merge RUN... --out DIR``."""

from __future__ import annotations

from typing import Sequence

from models.config import ModelConfig
from tools.command import add_config, add_settings, parser, run, settings
from train.config import TrainConfig


def merge(argv: Sequence[str]) -> int:
    p = parser("train merge", "Combine the fold results of --fold runs into one report.")
    p.add_argument("runs", nargs="+", help="run folders holding folds/fold_I/result.json")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the combined run and report (required)")
    args = p.parse_args(argv)

    def work() -> int:
        from tools import render
        from train.merge import merge_runs

        render.print_merge(merge_runs(args.runs, args.out))
        return 0

    return run(work, verbose=args.verbose)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv or [])
    if argv[:1] == ["merge"]:
        return merge(argv[1:])
    p = parser("train", "K-fold cross-validation of the CNN-LSTM on scan folders, then the final model. "
                        "`fetalhead train merge --help` combines --fold runs.")
    p.add_argument("data", help="dataset folder: one folder per scan")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder; rerun the same command to resume "
                                                               "(required)")
    # The model's seed is set in the [model] table: --seed is the training's.
    add_settings(p.add_argument_group("model (TOML table [model])"), ModelConfig, exclude=("seed",))
    add_settings(p.add_argument_group("training (TOML table [train])"), TrainConfig)
    add_config(p, "model", "train")
    args = p.parse_args(argv)

    def work() -> int:
        from tools import render
        from train.kfold import train

        # args.seed is --seed, the training's; the model's comes from [model] alone.
        model_config = settings(args, ModelConfig, "model", seed=None)
        train_config = settings(args, TrainConfig, "train")
        summary = train(args.data, args.out, model_config, train_config,
                        progress=render.progress(train_config.progress))
        render.print_training(summary, train_config.fold)
        return 0

    return run(work, verbose=args.verbose)
