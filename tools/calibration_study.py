"""Which verdict holds on new scans: the final model, the fold models as an ensemble, Platt calibration.

``python -m tools.calibration_study [--out DIR] [--seeds 0,1,2]`` writes
synthetic datasets, trains each with k-fold cross-validation and scans held
out (``fetalhead train --holdout``), and scores the held-out scans with:

- final:          the final model, at the threshold chosen on pooled out-of-fold scores
- ensemble:       the mean score of the k fold models, at the same threshold (the
                  out-of-fold scores are the fold models' own, so the threshold was
                  chosen on the models that now score)
- final+platt:    the final model's scores through Platt scaling fitted on the
                  out-of-fold scores, at 0.5
- ensemble+platt: the ensemble's scores through the same scaling, at 0.5

and prints accuracy, ROC-AUC, expected calibration error and Brier score on
the held-out scans, per dataset and seed and averaged. docs/calibration.md
holds the table that chose what a bundle ships.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from models.bundle import load as load_bundle
from models.config import ModelConfig
from models.runtime import Runtime
from train.calibration import brier_score, expected_calibration_error, fit_platt
from train.config import TrainConfig
from train.kfold import fold_head, load_fold_predictions, prepare, score_scans, train
from train.data import load_dataset
from train.metrics import binary_metrics
from train.synth import SynthConfig, synth_dataset

METHODS = ("final", "ensemble", "final+platt", "ensemble+platt")

# Two kinds of data: the phantom as the demo makes it, and one with most of each scan's frames Head, where a
# threshold fitted on one class balance meets another.
DATASETS = {
    "phantom": dict(head_fraction=(0.2, 0.3)),
    "phantom, head-heavy": dict(head_fraction=(0.45, 0.6)),
}


def holdout_rows(run: Path, data: dict, holdout: list[str], train_config: TrainConfig) -> list[dict]:
    """One row per method: its accuracy, ROC-AUC, ECE and Brier score on the held-out scans."""
    bundle = load_bundle(run / "model.fhb")
    feature_dim = int(bundle.extractor.output_shape[-1])
    results = [json.loads((f / "result.json").read_text()) for f in sorted((run / "folds").glob("fold_*"))]
    oof = load_fold_predictions(run, results)
    platt = fit_platt(oof["label"].to_numpy(), oof["score"].to_numpy(), fitted_on="out-of-fold scores")
    held = [data[n] for n in holdout]
    final = score_scans(bundle.runtime(), held)
    labels = final["label"].to_numpy(int)
    members = [score_scans(Runtime(bundle.config, bundle.extractor,
                                   fold_head(run, r, bundle.config, feature_dim, train_config)), held)
               ["score"].to_numpy(float) for r in results]
    scores = {"final": final["score"].to_numpy(float), "ensemble": np.mean(members, axis=0)}
    scores["final+platt"] = platt.apply(scores["final"])
    scores["ensemble+platt"] = platt.apply(scores["ensemble"])
    rows = []
    for method in METHODS:
        threshold = 0.5 if method.endswith("platt") else bundle.threshold
        m = binary_metrics(labels, scores[method], threshold)
        rows.append({"method": method, "threshold": threshold, "accuracy": m["accuracy"], "roc_auc": m["roc_auc"],
                     "ece": expected_calibration_error(labels, scores[method]),
                     "brier": brier_score(labels, scores[method])})
    return rows


def study(out: Path, seeds: list[int], *, scans: int, holdout: int, epochs: int, image_size: int) -> pd.DataFrame:
    rows = []
    for name, changes in DATASETS.items():
        for seed in seeds:
            root = out / f"{name.replace(', ', '-')}-{seed}"
            synth_dataset(root / "data", SynthConfig(scans=scans, frames=96, height=144, width=192,
                                                     seed=seed, **changes))
            held = sorted(p.name for p in (root / "data").iterdir() if p.is_dir())[-holdout:]
            model_config = ModelConfig(backbone="tiny", weights="none", image_size=image_size, seed=seed)
            # The bundle as it was before this study: the final model, uncalibrated, Youden's threshold.
            train_config = TrainConfig(folds=3, epochs=epochs, learning_rate=1e-3, stride=2, patience=4,
                                       holdout=tuple(held), seed=seed, cache_dir=str(out / "cache"),
                                       progress=False, bundle_heads="final", calibrate=False,
                                       threshold_rule="youden")
            train(root / "data", root / "run", model_config, train_config)
            bundle = load_bundle(root / "run" / "model.fhb")
            scan_data = {d.name: d for d in prepare(load_dataset(root / "data", window=model_config.window),
                                                    model_config, train_config, bundle.extractor)}
            for row in holdout_rows(root / "run", scan_data, held, train_config):
                rows.append({"data": name, "seed": seed, **row})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.calibration_study", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for data and runs (default: a temporary one)")
    parser.add_argument("--seeds", default="0,1,2", help="(default: 0,1,2)")
    parser.add_argument("--scans", type=int, default=10, help="scans per dataset (default: 10)")
    parser.add_argument("--holdout", type=int, default=3, help="scans held out of each (default: 3)")
    parser.add_argument("--epochs", type=int, default=12, help="(default: 12)")
    parser.add_argument("--image-size", type=int, default=64, help="(default: 64)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        table = study(args.out or Path(tmp), seeds, scans=args.scans, holdout=args.holdout, epochs=args.epochs,
                      image_size=args.image_size)
    console = Console()
    shown = Table(title="held-out scans, per dataset and seed")
    for column in ("data", "seed", "method", "threshold", "accuracy", "ROC-AUC", "ECE", "Brier"):
        shown.add_column(column, justify="right")
    for row in table.itertuples(index=False):
        shown.add_row(row.data, str(row.seed), row.method, f"{row.threshold:.3f}", f"{row.accuracy:.3f}",
                      f"{row.roc_auc:.3f}", f"{row.ece:.3f}", f"{row.brier:.3f}")
    console.print(shown)
    mean = table.groupby(["data", "method"], sort=False)[["accuracy", "roc_auc", "ece", "brier"]].mean()
    summary = Table(title=f"mean over seeds {args.seeds}")
    for column in ("data", "method", "accuracy", "ROC-AUC", "ECE", "Brier"):
        summary.add_column(column, justify="right")
    for (data, method), row in mean.iterrows():
        summary.add_row(data, method, *(f"{v:.3f}" for v in row))
    console.print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
