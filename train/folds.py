"""Scan-grouped k-fold splits: the frames of one scan never sit on both sides."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from models.errors import ConfigError


def scan_folds(scans: Sequence[str], labels: Sequence[np.ndarray], k: int, *, seed: int = 0
               ) -> list[tuple[list[str], list[str]]]:
    """(train scans, validation scans) for each of ``k`` folds.

    scans: scan names; labels: each scan's int (N,) frame labels. Folds are
    stratified by frame label and grouped by scan, deterministic for a seed.
    """
    if len(scans) != len(labels):
        raise ValueError(f"{len(scans)} scans but {len(labels)} label arrays")
    if len(set(scans)) != len(scans):
        raise ValueError("scan names must be unique")
    if k > len(scans):
        raise ConfigError(f"folds: {k} folds need at least {k} scans, got {len(scans)}")
    y = np.concatenate([np.asarray(l, int) for l in labels])
    groups = np.concatenate([np.full(len(l), i) for i, l in enumerate(labels)])
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    for train_idx, val_idx in splitter.split(np.zeros(len(y)), y, groups):
        train = [scans[i] for i in sorted(set(groups[train_idx]))]
        val = [scans[i] for i in sorted(set(groups[val_idx]))]
        folds.append((train, val))
    return folds
