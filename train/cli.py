"""``fetalhead train DATA --out RUN`` and ``fetalhead train merge RUN... --out DIR``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from models.config import BACKBONES, ConfigError, ModelConfig, load
from models.errors import FetalheadError
from tools.cli import parser as make_parser, run
from train.files import copy_file, copy_tree, write_json

MODEL_FLAGS = ("backbone", "weights", "image_size", "window", "roi")
TRAIN_FLAGS = ("folds", "fold", "epochs", "final_epochs", "batch_size", "learning_rate", "patience", "stride",
               "seed", "holdout", "threshold_rule", "train_backbone", "cache_dir", "early_stopping", "progress", "xla")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with [model] and [train] tables")
    p.add_argument("--backbone", choices=BACKBONES)
    p.add_argument("--weights", help="imagenet (Keras cache), none, or a backbone weights file")
    p.add_argument("--image-size", type=int)
    p.add_argument("--window", type=int, help="frames per window (default 8)")
    p.add_argument("--roi", help="auto, none or x,y,w,h")


def print_fold_table(results: list[dict[str, Any]], summary: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")
    table = Table(title="Cross-validation, per-frame scores at each fold's threshold")
    for column in ("fold", "val scans", "threshold", *keys):
        table.add_column(column, justify="right")
    for r in results:
        m = r["at_threshold"]
        table.add_row(str(r["fold"]), str(len(r["val_scans"])), f"{r['threshold']:.3f}",
                      *(f"{m[k]:.3f}" for k in keys))
    if summary:
        mean, std = summary["folds_mean"], summary["folds_std"]
        table.add_row("mean ± sd", "", "", *(f"{mean[k]:.3f} ± {std[k]:.3f}" for k in keys))
        pooled = summary["pooled_out_of_fold"]
        table.add_row("pooled", "", f"{summary['threshold']:.3f}", *(f"{pooled[k]:.3f}" for k in keys))
    Console().print(table)


def train_command(data: str, out: str, model_config: ModelConfig, train_config) -> int:
    from rich.console import Console

    from train.kfold import load_fold_predictions, summarise, train

    result = train(data, out, model_config, train_config)
    summary = None
    if result["bundle"]:
        from models.bundle import read_meta

        summary = read_meta(result["bundle"])["info"]["cross_validation"]
    elif train_config.fold is None:
        oof = load_fold_predictions(Path(out), result["folds"])
        summary = summarise(result["folds"], oof, 0.5)
    print_fold_table(result["folds"], summary)
    console = Console()
    if result["bundle"]:
        console.print(f"model bundle: [bold]{result['bundle']}[/]")
    if result["report"]:
        console.print(f"report: [bold]{result['report']}/report.md[/]")
    if train_config.fold is not None:
        console.print(f"fold {train_config.fold} done in {out}; combine folds with `fetalhead train merge`")
    return 0


def merge(runs: list[str], out: str) -> int:
    """Combine fold results of runs made on separate machines into one report."""
    from train.kfold import load_fold_predictions, summarise
    from train.metrics import choose_threshold
    from train.report import write_report

    out_path = Path(out)
    identity = None
    results: dict[int, dict[str, Any]] = {}
    for run_dir in map(Path, runs):
        meta_path = run_dir / "run.json"
        if not meta_path.exists():
            raise FetalheadError(f"run folder {run_dir}: no run.json (not a fetalhead training run)")
        meta = json.loads(meta_path.read_text())
        if identity is None:
            identity = meta
        elif any(meta.get(k) != identity.get(k) for k in ("data", "model", "train_split")):
            raise FetalheadError(f"run folder {run_dir}: made with other data or config than {runs[0]}")
        for result_path in sorted(run_dir.glob("folds/fold_*/result.json")):
            result = json.loads(result_path.read_text())
            results.setdefault(result["fold"], result)
            target = out_path / "folds" / f"fold_{result['fold']}"
            if target.resolve() != result_path.parent.resolve():
                copy_tree(result_path.parent, target, last="result.json")
        if (run_dir / "folds.csv").exists() and not (out_path / "folds.csv").exists():
            copy_file(run_dir / "folds.csv", out_path / "folds.csv")
    assert identity is not None
    expected = identity["train_split"]["folds"]
    missing = sorted(set(range(expected)) - set(results))
    if missing:
        raise FetalheadError(f"merge: folds {', '.join(map(str, missing))} of {expected} have no result yet")
    ordered = [results[i] for i in range(expected)]
    write_json(out_path / "run.json", identity)
    from models.config import from_mapping
    from train.config import TrainConfig

    model_config = from_mapping(ModelConfig, identity["model"])
    train_config = from_mapping(TrainConfig, identity["train_split"])
    oof = load_fold_predictions(out_path, ordered)
    threshold = choose_threshold(oof["label"], oof["score"], train_config.threshold_rule)
    folder = write_report(out_path, model_config, train_config, ordered, oof, threshold)
    print_fold_table(ordered, summarise(ordered, oof, threshold))
    print(f"report: {folder}/report.md")
    print(f"final model: run `fetalhead train {identity.get('data_root', 'DATA')} --out {out_path}` "
          "(finished folds are reused)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv or [])
    if argv[:1] == ["merge"]:
        p = make_parser("train merge", "Combine the fold results of --fold runs into one report.")
        p.add_argument("runs", nargs="+", help="run folders holding folds/fold_I/result.json")
        p.add_argument("--out", required=True, help="folder for the combined run and report")
        args = p.parse_args(argv[1:])
        return run(lambda: merge(args.runs, args.out), verbose=args.verbose)

    from train.config import TrainConfig

    p = make_parser("train", "K-fold cross-validation of the CNN-LSTM on scan folders, then the final model.")
    p.add_argument("data", help="dataset folder: one folder per scan")
    p.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    add_model_flags(p)
    p.add_argument("--folds", type=int)
    p.add_argument("--fold", type=int, help="run only this fold (0-based), for runs on several machines")
    p.add_argument("--epochs", type=int)
    p.add_argument("--final-epochs", type=int, help="epochs for the final model (default: folds' median best)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--patience", type=int)
    p.add_argument("--no-early-stopping", dest="early_stopping", action="store_const", const=False)
    p.add_argument("--stride", type=int, help="step between training windows")
    p.add_argument("--seed", type=int)
    p.add_argument("--holdout", help="comma-separated scan names left out of the folds for a final test")
    p.add_argument("--threshold-rule", choices=("youden", "f1"))
    p.add_argument("--train-backbone", action="store_const", const=True,
                   help="train the backbone too (no feature cache), for when no pretrained weights exist")
    p.add_argument("--cache-dir", help="feature cache folder (default $FETALHEAD_CACHE or ~/.cache/fetalhead)")
    p.add_argument("--xla", choices=("auto", "on", "off"),
                   help="compile training steps with XLA (default auto: for long runs of several heads)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    args = p.parse_args(argv)

    def work() -> int:
        values = vars(args)
        model_config = load(ModelConfig, "model", args.config, {k: values[k] for k in MODEL_FLAGS})
        overrides = {k: values[k] for k in TRAIN_FLAGS}
        if overrides["holdout"] is not None:
            overrides["holdout"] = tuple(s.strip() for s in overrides["holdout"].split(",") if s.strip())
        train_config = load(TrainConfig, "train", args.config, overrides)
        if train_config.fold is not None and train_config.fold >= train_config.folds:
            raise ConfigError(f"--fold: must be 0..{train_config.folds - 1}, got {train_config.fold}")
        return train_command(args.data, args.out, model_config, train_config)

    return run(work, verbose=args.verbose)
