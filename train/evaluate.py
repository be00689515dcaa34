"""Scoring a model bundle on other scans (``fetalhead evaluate``): predictions, metrics and a report.

The per-frame scores are the streaming-equivalent ones the live worker gives,
computed through the same cache, preprocessing and compiled runtime as
training, with the bundle's own config and threshold.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from models.progress import NO_PROGRESS, Progress
from models.settings import setting


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Settings of ``fetalhead evaluate`` (an ``[evaluate]`` TOML table); ``progress`` is the command's."""

    cache_dir: str = setting("", "feature cache folder", shown="$FETALHEAD_CACHE or ~/.cache/fetalhead/features")
    progress: bool = setting(True, "draw a progress bar")


def evaluate(model_path: str | Path, data_root: str | Path, out: str | Path, *, cache_dir: str | None = None,
             progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """Score every scan of ``data_root``; write predictions, metrics, plots and report.md into ``out``.

    Returns ``metrics`` at the bundle's threshold, ``episodes``
    (``train.report.episode_summary``: head episodes found, missed, false and
    their delays), the ``predictions`` frame (scan, frame, label, score,
    fold='eval') and the ``report`` folder (``out`` itself).
    ``progress`` gets the feature extraction as a task.
    """
    # Imported here: the command reads EvaluateConfig for its flags without loading TensorFlow.
    from models.bundle import load
    from train.cache import FeatureCache
    from train.data import load_dataset
    from train.kfold import from_features, score_scans
    from train.metrics import binary_metrics
    from train.report import episode_summary, write_report

    bundle = load(model_path)
    runtime = bundle.runtime()
    scans = load_dataset(data_root, window=bundle.config.window)
    features = FeatureCache(runtime, cache_dir).extract(scans, progress=progress)
    predictions = score_scans(runtime, [from_features(features[scan.name]) for scan in scans])
    predictions["fold"] = "eval"
    episodes = episode_summary(predictions, bundle.threshold)
    folder = write_report(Path(out), bundle.config, None, [], predictions, bundle.threshold,
                          title=f"Evaluation of {Path(model_path).name} ({bundle.model_id})",
                          calibration=bundle.calibration, threshold_rule=str(bundle.info.get("threshold_rule") or ""),
                          episodes=episodes, folder=Path(out))
    return {"metrics": binary_metrics(predictions["label"], predictions["score"], bundle.threshold),
            "episodes": episodes, "predictions": predictions, "report": folder}
