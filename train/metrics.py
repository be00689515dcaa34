"""Classification metrics for per-frame Head scores (scikit-learn underneath)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from sklearn import metrics as skm

ThresholdRule = Literal["calibrated", "youden", "f1"]

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of scores against 0/1 labels at ``threshold`` (Head when score >= threshold).

    labels: int (N,), scores: float (N,). ROC-AUC and PR-AUC are NaN when only
    one class is present, since they are undefined there.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in shape: {labels.shape} vs {scores.shape}")
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both = len(np.unique(labels)) == 2
    return {
        "frames": int(len(labels)),
        "head": int(labels.sum()),
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(labels, predicted)) if len(labels) else math.nan,
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(labels, scores)) if both else math.nan,
        "pr_auc": float(skm.average_precision_score(labels, scores)) if both else math.nan,
        "tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp),
    }


def choose_threshold(labels: np.ndarray, scores: np.ndarray, rule: ThresholdRule = "calibrated") -> float:
    """The decision threshold that best separates ``labels`` by ``rule``.

    calibrated: the score at which Platt scaling fitted to these scores gives
    0.5, where Head becomes the likelier class (docs/calibration.md);
    youden: maximise sensitivity + specificity - 1 on the ROC curve;
    f1: maximise F1 on the precision-recall curve. With one class only, or
    scores that do not rise with Head (nothing to calibrate), 0.5.
    """
    from train.calibration import fit_platt

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    if len(np.unique(labels)) < 2:
        return 0.5
    if rule == "calibrated":
        try:
            return fit_platt(labels, scores).inverse(0.5)
        except ValueError:
            return 0.5
    if rule == "youden":
        fpr, tpr, thresholds = skm.roc_curve(labels, scores)
        best = int(np.argmax(tpr - fpr))
        return float(min(1.0, thresholds[best]))
    if rule == "f1":
        precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        return float(thresholds[int(np.argmax(f1))])
    raise ValueError(f"threshold rule must be 'calibrated', 'youden' or 'f1', got {rule!r}")
