"""train.folds: scan-grouped folds never share a scan and cover every scan once."""

import numpy as np
import pytest

from models.errors import ConfigError
from train.folds import scan_folds


def test_folds_never_share_a_scan_and_cover_every_scan_once():
    rng = np.random.default_rng(0)
    names = [f"s{i}" for i in range(11)]
    labels = [rng.integers(0, 2, rng.integers(20, 60)) for _ in names]
    folds = scan_folds(names, labels, 5, seed=7)
    assert len(folds) == 5
    seen = []
    for train_scans, val_scans in folds:
        assert not set(train_scans) & set(val_scans)
        assert set(train_scans) | set(val_scans) == set(names)
        seen += val_scans
    assert sorted(seen) == sorted(names)
    assert folds == scan_folds(names, labels, 5, seed=7)
    with pytest.raises(ConfigError, match="5 folds need at least 5 scans, got 3"):
        scan_folds(names[:3], labels[:3], 5)
