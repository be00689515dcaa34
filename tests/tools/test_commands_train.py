"""The surface of the model, synth, data, train and evaluate commands: usage errors, config files, -v anywhere."""

from __future__ import annotations

import pytest

from tests.train.test_data import good_dataset
from tools.commands import data, model, train


@pytest.fixture
def dataset(tmp_path):
    return good_dataset(tmp_path / "data")


def run_check(capsys, root, *flags: str) -> tuple[int, str]:
    code = data.main(["check", str(root), *flags])
    return code, capsys.readouterr().out


def test_missing_dataset_is_one_line_and_exit_1(capsys, tmp_path):
    assert data.main(["check", str(tmp_path / "nowhere")]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"fetalhead: error: {tmp_path / 'nowhere'}: not found"


def test_command_line_usage_errors_exit_2(capsys, dataset):
    for argv in ([], ["check"], ["validate", str(dataset)], ["check", str(dataset), "--window", "x"]):
        with pytest.raises(SystemExit) as info:
            data.main(argv)
        assert info.value.code == 2
    assert data.main(["check", str(dataset), "--window", "0"]) == 1
    assert "window: must be >= 1, got 0" in capsys.readouterr().err


def test_config_file_and_verbose_after_the_subcommand(capsys, tmp_path, dataset):
    config = tmp_path / "fh.toml"
    config.write_text("[data]\nwindow = 12\n")
    code, out = run_check(capsys, dataset, "--config", str(config), "-v")
    assert code == 1 and "shorter than the window of 12" in out
    code, out = run_check(capsys, dataset, "--config", str(config), "--window", "4")
    assert code == 0


def test_model_info_counts_without_pretrained_weights_and_reads_the_model_table(capsys, tmp_path):
    config = tmp_path / "fh.toml"
    config.write_text("[model]\nbackbone = \"tiny\"\nimage_size = 64\ndense_units = 4\n")
    assert model.main(["info", "--config", str(config), "--lstm-units", "8,4"]) == 0
    out = capsys.readouterr().out
    assert "CNN-LSTM (tiny, weights none)" in out and "feature size: 64" in out
    # 8,4 LSTMs and a dense layer of 4: fewer parameters than the defaults' 256,128 and 64.
    trainable = int(out.split("trainable parameters:")[1].split()[0].replace(",", ""))
    assert 0 < trainable < 5_000


def test_model_export_of_a_missing_bundle_is_one_line(capsys, tmp_path):
    assert model.main(["export", str(tmp_path / "missing.fhb"), str(tmp_path / "m.keras")]) == 1
    assert capsys.readouterr().err.strip() == f"fetalhead: error: model bundle {tmp_path / 'missing.fhb'}: not found"


def test_train_seed_flag_is_the_trainings_not_the_models(monkeypatch, tmp_path):
    seen = {}

    def fake_train(data_root, out, model_config, train_config, progress):
        seen.update(model=model_config, train=train_config)
        return {"run": str(out), "folds": [], "cross_validation": None, "bundle": None, "report": None,
                "warnings": []}

    monkeypatch.setattr("train.kfold.train", fake_train)
    config = tmp_path / "fh.toml"
    config.write_text("[model]\nseed = 3\n[train]\nfolds = 3\n")
    assert train.main([str(tmp_path), "--out", str(tmp_path / "run"), "--seed", "9", "--holdout", "a,b",
                       "--holdout", "c", "--no-early-stopping", "--backbone", "tiny", "--no-progress",
                       "--config", str(config)]) == 0
    assert (seen["model"].seed, seen["model"].backbone) == (3, "tiny")
    assert (seen["train"].seed, seen["train"].folds, seen["train"].holdout) == (9, 3, ("a", "b", "c"))
    assert not seen["train"].early_stopping and not seen["train"].progress


def test_train_merge_needs_a_run_folder(capsys, tmp_path):
    assert train.main(["merge", str(tmp_path), "--out", str(tmp_path / "all")]) == 1
    assert capsys.readouterr().err.strip() == (f"fetalhead: error: run folder {tmp_path}: no run.json "
                                               "(not a fetalhead training run)")
    with pytest.raises(SystemExit) as info:
        train.main(["merge", str(tmp_path)])
    assert info.value.code == 2


@pytest.mark.slow
def test_a_run_that_did_not_learn_says_so_on_screen_and_in_the_report(capsys, tmp_path):
    from train.synth import SynthConfig, synth_dataset

    data = tmp_path / "data"
    # Enough windows per fold that the epochs' batch noise stays under the 5 % a falling loss must beat.
    synth_dataset(data, SynthConfig(scans=4, frames=64, height=64, width=80))
    out = tmp_path / "run"
    assert train.main([str(data), "--out", str(out), "--backbone", "tiny", "--weights", "none", "--image-size", "48",
                       "--folds", "2", "--epochs", "3", "--no-early-stopping", "--learning-rate", "1e-9",
                       "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    warning = "the training loss of fold 0 did not fall"
    assert f"warning: {warning}" in printed and "the learning rate (1e-09) may be too low" in printed
    report = (out / "report" / "report.md").read_text()
    assert f"**Warning:** {warning}" in report and "Trained with Adam at learning rate 1e-09" in report


def test_model_info_of_a_bundle_reads_its_metadata_without_building_the_model(capsys, monkeypatch, tmp_path,
                                                                             tiny_config, tiny_models):
    from models.bundle import save

    monkeypatch.setenv("COLUMNS", "250")  # one table row per line, so that each figure is one string

    info = {"trained_on": [f"scan_{i:02d}" for i in range(10)], "holdout": ["scan_10"], "final_epochs": 7,
            "threshold_rule": "youden on pooled out-of-fold per-frame scores",
            "train_config": {"learning_rate": 1e-3, "batch_size": 8, "folds": 5, "train_backbone": True},
            "cross_validation": {"folds_mean": dict.fromkeys(("accuracy", "precision", "recall", "f1", "roc_auc",
                                                              "pr_auc"), 0.9),
                                 "folds_std": dict.fromkeys(("accuracy", "precision", "recall", "f1", "roc_auc",
                                                             "pr_auc"), 0.01),
                                 "pooled_out_of_fold": dict.fromkeys(("accuracy", "precision", "recall", "f1",
                                                                      "roc_auc", "pr_auc"), 0.88),
                                 "mean_within_scan_roc_auc": 0.97, "threshold": 0.42}}
    path = save(tmp_path / "m.fhb", tiny_config, *tiny_models, threshold=0.42, info=info)
    assert model.main(["info", str(path)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("tiny (from random weights)", "64 x 64 px, window of 8 frames", "0.4200, youden on pooled",
                     "calibration │ none", "Adam 0.001, batch 8, 5 folds, final model 7 epochs, backbone trained",
                     "10 scans: scan_00", "and 2 more", "held out │ scan_10", "roc_auc 0.900 ± 0.010",
                     "pooled out of fold │ accuracy 0.880", "mean within-scan ROC-AUC │ 0.970", "keras_backend"):
        assert expected in text, expected
    bare = save(tmp_path / "bare.fhb", tiny_config, *tiny_models)
    assert model.main(["info", str(bare)]) == 0
    assert "not recorded: this bundle was not made by fetalhead train" in " ".join(capsys.readouterr().out.split())
    assert model.main(["info", str(tmp_path / "nope.fhb")]) == 1
    assert capsys.readouterr().err.strip() == f"fetalhead: error: model bundle {tmp_path / 'nope.fhb'}: not found"
