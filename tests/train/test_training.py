"""K-fold training on small synthetic scans with the tiny backbone."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from models.bundle import load as load_bundle
from models.config import ConfigError, ModelConfig
from models.errors import FetalheadError
from train.cache import FeatureCache
from train.config import TrainConfig
from train.data import load_dataset
from train.folds import scan_folds
from train.kfold import train
from train.metrics import binary_metrics
from train.synth import SynthConfig, synth_dataset
from train.trainer import focal_loss

MODEL = ModelConfig(backbone="tiny", weights="none", image_size=48, lstm_units=(16, 8), dense_units=8)
REPORT_FILES = ("config.toml", "folds.csv", "metrics.csv", "per_scan.csv", "predictions.csv",
                "classification_report.txt", "roc.png", "pr.png", "confusion.png", "curves.png", "report.md")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "scans"
    synth_dataset(root, SynthConfig(scans=6, frames=40, height=72, width=96, seed=3), progress=False)
    return root


def quick(tmp_path, **changes):
    values = dict(folds=2, epochs=2, learning_rate=1e-3, stride=2, progress=False, cache_dir=str(tmp_path / "cache"))
    values.update(changes)
    return TrainConfig(**values)


def test_focal_loss_equals_the_textbook_formula():
    y = np.array([[1, 0, 1, 0]], np.float32)
    p = np.array([[0.9, 0.2, 0.3, 0.6]], np.float32)
    loss = float(focal_loss(TrainConfig())(y, p))
    alpha_t = np.where(y == 1, 0.79, 0.21)
    p_t = np.where(y == 1, p, 1 - p)
    assert loss == pytest.approx(float(np.mean(-alpha_t * (1 - p_t) ** 2 * np.log(p_t))), rel=1e-5)
    assert loss == pytest.approx(0.134509, abs=1e-6)
    plain = keras.losses.BinaryFocalCrossentropy(gamma=0.0)(y, p)
    bce = keras.losses.BinaryCrossentropy()(y, p)
    assert float(plain) == pytest.approx(float(bce), rel=1e-5)


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


@pytest.fixture(scope="module")
def full_run(dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    config = quick(tmp, holdout=("scan_005",))
    return tmp, config, train(dataset, tmp / "run", MODEL, config)


def test_full_run_writes_every_report_file_and_a_loadable_bundle(dataset, full_run):
    _, _, summary = full_run
    out = Path(summary["run"])
    report = Path(summary["report"])
    for name in REPORT_FILES:
        assert (report / name).stat().st_size > 0, name
    predictions = pd.read_csv(report / "predictions.csv")
    oof = predictions[predictions["fold"] != "holdout"]
    scans = {s.name: len(s) for s in load_dataset(dataset)}
    # Every non-holdout frame is scored exactly once out of fold.
    assert len(oof) == sum(n for name, n in scans.items() if name != "scan_005")
    assert not oof.duplicated(["scan", "frame"]).any()
    assert set(predictions.loc[predictions["fold"] == "holdout", "scan"]) == {"scan_005"}
    folds = pd.read_csv(out / "folds.csv")
    assert folds.groupby("scan")["fold"].nunique().max() == 1
    bundle = load_bundle(summary["bundle"])
    assert bundle.config == MODEL
    info = bundle.info
    assert "cross_validation" in info and info["holdout"] == ["scan_005"]
    assert 0.0 <= bundle.threshold <= 1.0
    metrics = pd.read_csv(report / "metrics.csv")
    assert {"mean", "std", "pooled", "holdout"} <= set(metrics["fold"].astype(str))
    assert "Mean ROC-AUC within each scan" in (report / "report.md").read_text()


def test_rerun_reuses_folds_and_refuses_other_settings(dataset, full_run):
    tmp, config, summary = full_run
    out = Path(summary["run"])
    stamps = [os.stat(p).st_mtime_ns for p in sorted(out.glob("folds/*/result.json"))]
    again = train(dataset, out, MODEL, config)
    assert [f["fold"] for f in again["folds"]] == [0, 1]
    assert [os.stat(p).st_mtime_ns for p in sorted(out.glob("folds/*/result.json"))] == stamps
    with pytest.raises(FetalheadError, match="made with another config"):
        train(dataset, out, MODEL, quick(tmp, holdout=("scan_005",), learning_rate=1e-2))


def test_evaluate_scores_equal_the_runtimes(dataset, full_run, tmp_path):
    from train.evaluate import evaluate

    tmp, _, summary = full_run
    result = evaluate(summary["bundle"], dataset, tmp_path / "eval", cache_dir=str(tmp / "cache"), progress=False)
    assert (Path(result["report"]) / "report.md").exists()
    bundle = load_bundle(summary["bundle"])
    runtime = bundle.runtime()
    scan = load_dataset(dataset)[0]
    expected = runtime.scan_scores(runtime.frame_features(scan.iter_frames()))
    got = result["predictions"].query("scan == @scan.name")["score"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_feature_cache_is_reused_keyed_and_rebuilt_when_corrupt(dataset, tmp_path):
    from models.cnn_lstm import build_feature_extractor, build_temporal_head
    from models.runtime import Runtime

    scans = load_dataset(dataset)[:2]
    extractor = build_feature_extractor(MODEL)
    runtime = Runtime(MODEL, extractor, build_temporal_head(MODEL, 64))
    first = FeatureCache(runtime, tmp_path)
    features = first.extract(scans, progress=False)
    total = sum(len(s) for s in scans)
    assert (first.hits, first.misses) == (0, total)
    second = FeatureCache(runtime, tmp_path)
    again = second.extract(scans, progress=False)
    assert (second.hits, second.misses) == (total, 0)
    for name in features:
        np.testing.assert_array_equal(features[name].features, again[name].features)
    entry = next(second.folder.rglob("*.npy"))
    entry.write_bytes(b"not an array")
    third = FeatureCache(runtime, tmp_path)
    third.extract(scans, progress=False)
    assert third.rebuilt == 1 and third.misses == 1
    other = ModelConfig(**{**MODEL.__dict__, "roi": "none"})
    assert FeatureCache(Runtime(other, extractor, runtime.training_head), tmp_path).key != first.key


def test_a_killed_run_resumes_with_the_same_folds(dataset, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "tools.cli", "train", str(dataset), "--out", str(out), "--backbone", "tiny",
            "--weights", "none", "--image-size", "48", "--folds", "2", "--epochs", "2", "--learning-rate", "1e-3",
            "--stride", "2", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    config = tmp_path / "small.toml"
    config.write_text("[model]\nlstm_units = [16, 8]\ndense_units = 8\n")
    args += ["--config", str(config)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "folds" / "fold_0" / "result.json"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert first.exists(), "the first fold did not finish before the deadline"
    assert not (out / "model.fhb").exists()
    folds_before = (out / "folds.csv").read_text()
    stamp = os.stat(first).st_mtime_ns
    summary = train(dataset, out, MODEL, quick(tmp_path))
    assert os.stat(first).st_mtime_ns == stamp  # the finished fold was not redone
    assert (out / "folds.csv").read_text() == folds_before
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    assert Path(summary["bundle"]).exists()
    assert not list(out.rglob("*.partial*")) and not list(out.rglob("*.tmp"))


def test_single_folds_merge_into_one_report(dataset, tmp_path):
    from train.cli import main

    for fold in range(2):
        train(dataset, tmp_path / f"machine{fold}", MODEL, quick(tmp_path, fold=fold, epochs=1))
    assert main(["merge", *(str(tmp_path / f"machine{i}") for i in range(2)), "--out", str(tmp_path / "all")]) == 0
    predictions = pd.read_csv(tmp_path / "all" / "report" / "predictions.csv")
    assert sorted(predictions["fold"].unique()) == [0, 1]
    assert len(predictions) == sum(len(s) for s in load_dataset(dataset))


def test_bad_data_stops_training_with_the_checks_messages(tmp_path):
    root = tmp_path / "bad"
    (root / "scan_a" / "frames").mkdir(parents=True)
    (root / "scan_a" / "labels.csv").write_text("frame,label\nframe_0.png,Head\n")
    with pytest.raises(FetalheadError) as info:
        train(root, tmp_path / "run", MODEL, quick(tmp_path))
    assert "scan_a" in str(info.value)


def test_it_learns_on_synthetic_scans(tmp_path):
    """A real learning check: frozen random tiny backbone, head trained per fold."""
    root = tmp_path / "scans"
    synth_dataset(root, SynthConfig(scans=6, frames=64, height=96, width=128, seed=11), progress=False)
    config = TrainConfig(folds=3, epochs=12, learning_rate=1e-3, stride=2, patience=4, final=False,
                         progress=False, cache_dir=str(tmp_path / "cache"))
    model = ModelConfig(backbone="tiny", weights="none", image_size=64, lstm_units=(32, 16), dense_units=16)
    summary = train(root, tmp_path / "run", model, config)
    predictions = pd.read_csv(Path(summary["report"]) / "predictions.csv")
    within = [binary_metrics(g["label"], g["score"])["roc_auc"] for _, g in predictions.groupby("scan")]
    pooled = binary_metrics(predictions["label"], predictions["score"])["roc_auc"]
    print(f"mean within-scan ROC-AUC {np.mean(within):.3f}, pooled out-of-fold ROC-AUC {pooled:.3f}")
    assert np.mean(within) > 0.9


def test_train_backbone_trains_without_the_cache(dataset, tmp_path):
    config = quick(tmp_path, train_backbone=True, epochs=1, final=False)
    summary = train(dataset, tmp_path / "run", MODEL, config)
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    assert not (tmp_path / "cache").exists()
    predictions = pd.read_csv(Path(summary["report"]) / "predictions.csv")
    assert len(predictions) == sum(len(s) for s in load_dataset(dataset))


def test_evaluate_command(dataset, full_run, tmp_path, capsys):
    from train.evaluate import main

    tmp, _, summary = full_run
    assert main([summary["bundle"], str(dataset), "--out", str(tmp_path / "eval"), "--cache-dir",
                 str(tmp / "cache"), "--no-progress"]) == 0
    assert "ROC-AUC" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.fhb"), str(dataset), "--out", str(tmp_path / "x")]) == 1
    assert "model bundle" in capsys.readouterr().err
