"""The models and training-and-data sections of tools.render: what model info, train, evaluate, synth and data check print."""

from __future__ import annotations

import io
import math
from pathlib import Path

from rich.console import Console

from models.config import ModelConfig
from tests.train.test_data import alternating, write_scan
from tools.render import (print_check_report, print_evaluation, print_export, print_fold_table, print_merge,
                          print_model_summary, print_synth_summary, print_training)
from train.data import check_dataset, load_dataset
from train.metrics import METRIC_NAMES


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, highlight=False, soft_wrap=True), out


def metrics(value: float) -> dict[str, float]:
    return {name: value for name in METRIC_NAMES}


FOLDS = [{"fold": i, "val_scans": ["a", "b"], "threshold": 0.4 + i / 10, "at_threshold": metrics(0.8 + i / 10)}
         for i in range(2)]
SUMMARY = {"folds_mean": metrics(0.85), "folds_std": metrics(0.05), "pooled_out_of_fold": metrics(0.875),
           "threshold": 0.45}


def test_the_fold_table_has_every_metric_and_the_summary_rows():
    c, out = console()
    print_fold_table(FOLDS, SUMMARY, c)
    text = out.getvalue()
    for name in METRIC_NAMES:
        assert name in text
    assert "0.900" in text and "0.850 ± 0.050" in text and "pooled" in text and "0.450" in text
    c, out = console()
    print_fold_table(FOLDS[:1], None, c)
    assert "pooled" not in out.getvalue() and "0.800" in out.getvalue()


def test_training_says_where_the_bundle_and_report_are_or_how_to_merge():
    c, out = console()
    print_training({"run": "r", "folds": FOLDS, "cross_validation": SUMMARY, "bundle": "r/model.fhb",
                    "report": "r/report", "warnings": []}, None, c)
    assert "model bundle: r/model.fhb" in out.getvalue() and "report: r/report/report.md" in out.getvalue()
    assert "warning" not in out.getvalue()
    c, out = console()
    print_training({"run": "r", "folds": FOLDS[:1], "cross_validation": None, "bundle": None, "report": None,
                    "warnings": []}, 0, c)
    assert "fold 0 done in r; combine folds with `fetalhead train merge`" in out.getvalue()


def test_training_ends_with_each_warning_on_its_own_line():
    c, out = console()
    warnings = ["the cross-validated pooled ROC-AUC is 0.41, below chance [0.5]", "the loss did not fall"]
    print_training({"run": "r", "folds": FOLDS, "cross_validation": SUMMARY, "bundle": "r/model.fhb",
                    "report": "r/report", "warnings": warnings}, None, c)
    lines = out.getvalue().splitlines()
    assert lines[-2:] == [f"warning: {w}" for w in warnings]


def test_merge_says_how_to_train_the_final_model():
    c, out = console()
    print_merge({"run": "all", "folds": FOLDS, "cross_validation": SUMMARY, "report": "all/report",
                 "data_root": "/data [1]"}, c)
    text = out.getvalue()
    assert "report: all/report/report.md" in text
    assert "final model: run `fetalhead train /data [1] --out all` (finished folds are reused)" in text


def test_evaluation_line():
    c, out = console()
    print_evaluation({"metrics": {"frames": 40, "threshold": 0.5, **metrics(0.75), "roc_auc": math.nan},
                      "episodes": {"truth": 3, "found": 2, "missed": 1, "false": 0, "split": 0, "predicted": 2,
                                   "start_delay": 1.5, "end_delay": -0.5, "hold": 2},
                      "report": Path("e")}, c)
    assert out.getvalue().startswith("40 frames, threshold 0.500: accuracy 0.750")
    assert "ROC-AUC nan" in out.getvalue() and "report: e/report.md" in out.getvalue()
    assert ("head episodes: 2 of 3 found, 1 missed, 0 false, 0 split; delay +1.5 frames at the start, -0.5 at the "
            "end") in out.getvalue()


def test_model_summary_and_export(tiny_config):
    from models.cnn_lstm import ModelSummary

    c, out = console()
    print_model_summary(tiny_config, ModelSummary([("frames", "(None, 8)", 0), ("lstm_1", "(None, None, 16)", 5184)],
                                                  64, 5184, 0), c)
    text = out.getvalue()
    assert "CNN-LSTM (tiny, weights none)" in text and "5,184" in text and "feature size: 64" in text
    c, out = console()
    print_export(Path("m.keras"), ModelConfig(backbone="tiny", image_size=64), c)
    assert out.getvalue().strip() == ("wrote m.keras: frames (batch, 8, 64, 64, 3) preprocessed by models.preprocess "
                                      "-> scores (batch, 8)")


def test_synth_summary_counts_formats_and_classes(tmp_path):
    from train.synth import SynthConfig

    root = tmp_path / "data"
    write_scan(root, "a", [1, 0, 0, 0, 1, 0, 0, 0, 0, 0], seed=1)
    write_scan(root, "b", [0] * 10, seed=2)
    c, out = console()
    print_synth_summary(root, SynthConfig(frames=10, height=64, width=64), load_dataset(root, window=1), c)
    text = out.getvalue()
    assert f"wrote 2 scans (2 as PNG frames, 0 as MJPG video) of 10 frames 64x64 to {root}" in text
    assert "Head 2 (10.0 %), Not-Head 18 (90.0 %)" in text


def test_problem_paths_with_brackets_print_as_they_are(tmp_path):
    root = tmp_path / "data"
    scan = write_scan(root, "scan [red]", alternating(8))
    (scan / "frames" / "frame_0001.png").write_bytes(b"")
    c, out = console()
    print_check_report(check_dataset(root), root, c)
    text = out.getvalue()
    assert f"{scan / 'frames' / 'frame_0001.png'}: empty file" in text and "NOT OK: 2 fatal problems" in text
