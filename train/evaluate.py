"""``fetalhead evaluate MODEL DATA --out DIR``: score a bundle on other scans.

The per-frame scores are the streaming-equivalent ones the live worker gives,
computed through the same cache, preprocessing and compiled runtime as
training, with the bundle's own config and threshold.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from models.config import load
from tools.cli import parser as make_parser, run


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Settings of ``fetalhead evaluate`` (an ``[evaluate]`` TOML table)."""

    cache_dir: str = ""
    progress: bool = True


def evaluate(model_path: str | Path, data_root: str | Path, out: str | Path, *, cache_dir: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Score every scan of ``data_root``; write predictions, metrics and plots under ``out``.

    Returns the metrics at the bundle's threshold and the predictions frame
    (scan, frame, label, score, fold='eval').
    """
    from models.bundle import load
    from train.cache import FeatureCache
    from train.data import load_dataset
    from train.metrics import binary_metrics
    from train.report import write_report

    bundle = load(model_path)
    runtime = bundle.runtime()
    scans = load_dataset(data_root, window=bundle.config.window)
    features = FeatureCache(runtime, cache_dir).extract(scans, progress=progress)
    rows = []
    for scan in scans:
        scores = runtime.scan_scores(features[scan.name].features)
        rows.append(pd.DataFrame({"scan": scan.name, "frame": range(len(scores)),
                                  "label": features[scan.name].labels.astype(int), "score": scores,
                                  "fold": "eval"}))
    predictions = pd.concat(rows, ignore_index=True)
    out = Path(out)
    folder = write_report(out, bundle.config, None, [], predictions, bundle.threshold,
                          title=f"Evaluation of {Path(model_path).name} ({bundle.model_id})")
    return {"metrics": binary_metrics(predictions["label"], predictions["score"], bundle.threshold),
            "predictions": predictions, "report": folder}


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("evaluate", "Score a model bundle on scan folders: metrics, plots, per-frame predictions.")
    p.add_argument("model", help="model bundle (.fhb) made by fetalhead train")
    p.add_argument("data", help="dataset folder: one folder per scan")
    p.add_argument("--out", required=True, help="folder for the report")
    p.add_argument("--cache-dir", help="feature cache folder (default $FETALHEAD_CACHE or ~/.cache/fetalhead)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    p.add_argument("--config", help="TOML file with an [evaluate] table")
    args = p.parse_args(argv)

    def work() -> int:
        from rich.console import Console

        config = load(EvaluateConfig, "evaluate", args.config,
                      {"cache_dir": args.cache_dir, "progress": args.progress})
        result = evaluate(args.model, args.data, args.out, cache_dir=config.cache_dir or None,
                          progress=config.progress)
        m = result["metrics"]
        Console().print(
            f"{m['frames']} frames, threshold {m['threshold']:.3f}: accuracy {m['accuracy']:.3f}, "
            f"precision {m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f}, "
            f"ROC-AUC {m['roc_auc']:.3f}, PR-AUC {m['pr_auc']:.3f}\nreport: {result['report']}/report.md")
        return 0

    return run(work, verbose=args.verbose)
