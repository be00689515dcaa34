"""train.cache: each frame through the backbone once, keyed on everything that changes its features."""

import numpy as np

from models.cnn_lstm import build_feature_extractor, build_temporal_head
from models.config import ModelConfig
from models.runtime import Runtime
from tests.train.conftest import MODEL
from train.cache import FeatureCache
from train.data import load_dataset


def test_feature_cache_is_reused_keyed_and_rebuilt_when_corrupt(phantom, tmp_path):
    scans = load_dataset(phantom)[:2]
    extractor = build_feature_extractor(MODEL)
    runtime = Runtime(MODEL, extractor, build_temporal_head(MODEL, 64))
    first = FeatureCache(runtime, tmp_path)
    features = first.extract(scans)
    total = sum(len(s) for s in scans)
    assert (first.hits, first.misses) == (0, total)
    second = FeatureCache(runtime, tmp_path)
    again = second.extract(scans)
    assert (second.hits, second.misses) == (total, 0)
    for name in features:
        np.testing.assert_array_equal(features[name].features, again[name].features)
    entry = next(second.folder.rglob("*.npy"))
    entry.write_bytes(b"not an array")
    third = FeatureCache(runtime, tmp_path)
    third.extract(scans)
    assert third.rebuilt == 1 and third.misses == 1
    other = ModelConfig(**{**MODEL.__dict__, "roi": "none"})
    assert FeatureCache(Runtime(other, extractor, runtime.training_head), tmp_path).key != first.key


def test_extraction_reports_every_frame_of_every_scan(phantom, tmp_path, recording_progress):
    scans = load_dataset(phantom)[:2]
    runtime = Runtime(MODEL, build_feature_extractor(MODEL), build_temporal_head(MODEL, 64))
    FeatureCache(runtime, tmp_path).extract(scans, progress=recording_progress)
    (task,) = recording_progress.tasks
    assert task.total == task.completed == sum(len(s) for s in scans) and task.closed
    assert task.descriptions[1:] == [f"features tiny {s.name}" for s in scans]
