"""train.kfold: whole k-fold runs on small synthetic scans with the tiny backbone, resumed, refused, learning."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.bundle import load as load_bundle
from models.config import ModelConfig
from models.errors import FetalheadError
from tests.train.conftest import MODEL, quick
from train.config import TrainConfig
from train.data import load_dataset
from train.kfold import learning_warnings, train
from train.metrics import binary_metrics
from train.synth import SynthConfig, synth_dataset

REPORT_FILES = ("config.toml", "folds.csv", "metrics.csv", "per_scan.csv", "predictions.csv",
                "classification_report.txt", "roc.png", "pr.png", "confusion.png", "curves.png", "report.md")

# Slow tier: every test here trains whole k-fold runs.
pytestmark = pytest.mark.slow


def test_full_run_writes_every_report_file_and_a_loadable_bundle(phantom, full_run):
    _, _, summary, _ = full_run
    out = Path(summary["run"])
    report = Path(summary["report"])
    for name in REPORT_FILES:
        assert (report / name).stat().st_size > 0, name
    predictions = pd.read_csv(report / "predictions.csv")
    oof = predictions[predictions["fold"] != "holdout"]
    scans = {s.name: len(s) for s in load_dataset(phantom)}
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
    text = (report / "report.md").read_text()
    assert "Mean ROC-AUC within each scan" in text
    assert f"Trained with Adam at learning rate {info['train_config']['learning_rate']:g} (frozen backbone)" in text
    assert all(f"**Warning:** {w}." in text for w in summary["warnings"])


def test_by_default_the_bundle_is_the_fold_heads_averaged_and_calibrated_out_of_fold(phantom, full_run):
    from models.cnn_lstm import head_members
    from models.runtime import Runtime
    from train.calibration import fit_platt
    from train.kfold import fold_head, from_features, score_scans
    from train.cache import FeatureCache

    tmp, config, summary, _ = full_run
    out = Path(summary["run"])
    bundle = load_bundle(summary["bundle"])
    assert head_members(bundle.head) == config.folds and not (out / "final").exists()
    raw_oof = pd.concat([pd.read_csv(out / "folds" / f"fold_{i}" / "predictions.csv") for i in range(config.folds)])
    # The calibration is Platt's fit to the raw out-of-fold scores; the calibrated rule puts the threshold at 0.5.
    expected = fit_platt(raw_oof["label"].to_numpy(), raw_oof["score"].to_numpy())
    assert (bundle.calibration.slope, bundle.calibration.intercept) == pytest.approx(
        (expected.slope, expected.intercept))
    assert bundle.threshold == 0.5 and summary["cross_validation"]["threshold"] == 0.5
    # The held-out scan, as the report has it, is the calibrated mean of the fold heads' scores.
    holdout = [s for s in load_dataset(phantom) if s.name == "scan_005"]
    runtime = bundle.runtime()
    data = [from_features(f) for f in FeatureCache(runtime, config.cache_dir).extract(holdout).values()]
    results = [{"fold": i} for i in range(config.folds)]
    members = [score_scans(Runtime(MODEL, bundle.extractor, fold_head(out, r, MODEL, runtime.feature_dim, config)),
                           data)["score"].to_numpy() for r in results]
    reported = pd.read_csv(Path(summary["report"]) / "predictions.csv")
    reported = reported[reported["fold"] == "holdout"].sort_values("frame")["score"].to_numpy()
    np.testing.assert_allclose(reported, bundle.calibration.apply(np.mean(members, axis=0)), atol=1e-5)
    text = (Path(summary["report"]) / "report.md").read_text()
    assert f"mean score of the {config.folds} fold models' heads" in text and "The scores shown are calibrated" in text


def test_bundle_heads_final_trains_the_final_model(phantom, tmp_path):
    from models.cnn_lstm import head_members

    summary = train(phantom, tmp_path / "run", MODEL, quick(tmp_path, bundle_heads="final", calibrate=False,
                                                             threshold_rule="youden"))
    bundle = load_bundle(summary["bundle"])
    assert head_members(bundle.head) == 1 and bundle.calibration is None
    assert (tmp_path / "run" / "final" / "history.csv").exists()
    assert bundle.info["heads"].startswith("the final model, trained on all 6 non-holdout scans")


def test_the_run_returns_its_cross_validation_and_reports_its_progress(full_run):
    _, config, summary, progress = full_run
    assert summary["cross_validation"] == load_bundle(summary["bundle"]).info["cross_validation"]
    extraction = progress.tasks[0]
    assert extraction.description == "features tiny" and extraction.completed == extraction.total == 240
    packs = progress.tasks[1:]
    assert packs and all(task.closed and 1 <= task.completed <= config.epochs for task in packs)
    assert any("loss" in note for task in packs for note in task.notes)


def test_rerun_reuses_folds_and_refuses_other_settings(phantom, full_run):
    tmp, config, summary, _ = full_run
    out = Path(summary["run"])
    stamps = [os.stat(p).st_mtime_ns for p in sorted(out.glob("folds/*/result.json"))]
    again = train(phantom, out, MODEL, config)
    assert [f["fold"] for f in again["folds"]] == [0, 1]
    assert [os.stat(p).st_mtime_ns for p in sorted(out.glob("folds/*/result.json"))] == stamps
    with pytest.raises(FetalheadError, match="made with another config"):
        train(phantom, out, MODEL, quick(tmp, holdout=("scan_005",), learning_rate=1e-2))


def test_a_killed_run_resumes_with_the_same_folds(phantom, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "tools.cli", "train", str(phantom), "--out", str(out), "--backbone", "tiny",
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
    summary = train(phantom, out, MODEL, quick(tmp_path))
    assert os.stat(first).st_mtime_ns == stamp  # the finished fold was not redone
    assert (out / "folds.csv").read_text() == folds_before
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    assert Path(summary["bundle"]).exists()
    assert not list(out.rglob("*.partial*")) and not list(out.rglob("*.tmp"))


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
    synth_dataset(root, SynthConfig(scans=6, frames=64, height=96, width=128, seed=11))
    config = TrainConfig(folds=3, epochs=12, learning_rate=1e-3, stride=2, patience=4, final=False,
                         cache_dir=str(tmp_path / "cache"))
    model = ModelConfig(backbone="tiny", weights="none", image_size=64, lstm_units=(32, 16), dense_units=16)
    summary = train(root, tmp_path / "run", model, config)
    predictions = pd.read_csv(Path(summary["report"]) / "predictions.csv")
    within = [binary_metrics(g["label"], g["score"])["roc_auc"] for _, g in predictions.groupby("scan")]
    pooled = binary_metrics(predictions["label"], predictions["score"])["roc_auc"]
    print(f"mean within-scan ROC-AUC {np.mean(within):.3f}, pooled out-of-fold ROC-AUC {pooled:.3f}")
    assert np.mean(within) > 0.9


def test_train_backbone_trains_without_the_cache(phantom, tmp_path):
    config = quick(tmp_path, train_backbone=True, epochs=1, final=False)
    summary = train(phantom, tmp_path / "run", MODEL, config)
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    assert not (tmp_path / "cache").exists()
    predictions = pd.read_csv(Path(summary["report"]) / "predictions.csv")
    assert len(predictions) == sum(len(s) for s in load_dataset(phantom))


def cross_validation(within=0.9, pooled=0.9):
    return {"mean_within_scan_roc_auc": within, "pooled_out_of_fold": {"roc_auc": pooled}}


def history(*losses):
    return pd.DataFrame({"epoch": range(len(losses)), "loss": losses, "val_loss": losses})


def test_a_model_that_learnt_gets_no_warning():
    assert learning_warnings(cross_validation(), {"fold 0": history(0.2, 0.1, 0.05)}, 1e-3) == []


@pytest.mark.parametrize("within, pooled, words", [
    (0.33, 0.4, "mean within-scan ROC-AUC is 0.33, below chance"),
    (0.55, 0.9, "mean within-scan ROC-AUC is 0.55, near chance"),
    (float("nan"), 0.52, "pooled ROC-AUC is 0.52, near chance"),
])
def test_auc_near_or_below_chance_is_one_warning_naming_the_figure(within, pooled, words):
    (warning,) = learning_warnings(cross_validation(within, pooled), {}, 1e-5)
    assert words in warning and "--learning-rate (this run: 1e-05)" in warning


def test_a_loss_that_did_not_fall_is_named_per_fold():
    warnings = learning_warnings(cross_validation(), {"fold 0": history(0.2, 0.199, 0.198),
                                                      "fold 1": history(0.2, 0.1), "fold 2": history(0.2)}, 1e-5)
    assert warnings == ["the training loss of fold 0 did not fall (0.2 at the first epoch, 0.198 at best): "
                        "the learning rate (1e-05) may be too low"]
