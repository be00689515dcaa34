"""Probability calibration of per-frame Head scores, and how calibrated scores are.

``fit_platt`` fits Platt scaling (a logistic regression on the logit of the
score) to out-of-fold scores; the result is a ``models.bundle.Calibration``,
which the bundle stores and every ``Runtime`` applies. ``reliability`` and
``expected_calibration_error`` measure calibration for the report: in equal-
width score bins, how far the mean score lies from the fraction of Head frames.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from models.calibration import Calibration

DEFAULT_BINS = 10


def fit_platt(labels: np.ndarray, scores: np.ndarray, *, fitted_on: str = "") -> Calibration:
    """Platt scaling of ``scores`` (float (N,) in [0, 1]) to 0/1 ``labels`` (int (N,)).

    ValueError when only one class is present (there is nothing to fit) or
    when the fit does not increase with the score (the scores carry no signal
    the right way round, and a decreasing map would invert every verdict).
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in shape: {labels.shape} vs {scores.shape}")
    if len(np.unique(labels)) < 2:
        raise ValueError("calibration needs both Head and Other frames, got one class only")
    raw = np.clip(scores, 1e-7, 1 - 1e-7)
    logit = np.log(raw / (1 - raw)).reshape(-1, 1)
    # Unregularised in effect: Platt's fit is a plain maximum-likelihood logistic regression.
    model = LogisticRegression(C=1e6).fit(logit, labels)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    if slope <= 0:
        raise ValueError(f"calibration fit decreases with the score (slope {slope:.3g}): the scores do not "
                         "separate Head from Other, so there is nothing to calibrate")
    return Calibration(slope=slope, intercept=intercept, fitted_on=fitted_on)


def reliability(labels: np.ndarray, scores: np.ndarray, bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """Per equal-width score bin: its edges, frames, mean score and fraction of Head frames.

    Empty bins are left out (their fraction is undefined). Scores of exactly
    1 fall in the last bin.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in shape: {labels.shape} vs {scores.shape}")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    index = np.minimum((scores * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            rows.append({"low": b / bins, "high": (b + 1) / bins, "frames": int(inside.sum()),
                         "mean_score": float(scores[inside].mean()), "head_fraction": float(labels[inside].mean())})
    return pd.DataFrame(rows, columns=["low", "high", "frames", "mean_score", "head_fraction"])


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """ECE: the frame-weighted mean of |mean score - Head fraction| over equal-width bins (NaN for no frames)."""
    table = reliability(labels, scores, bins)
    if table.empty:
        return float("nan")
    gap = (table["mean_score"] - table["head_fraction"]).abs()
    return float((gap * table["frames"]).sum() / table["frames"].sum())


def brier_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean squared difference between score and 0/1 label (NaN for no frames)."""
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    return float(np.mean((scores - labels) ** 2)) if len(labels) else float("nan")
