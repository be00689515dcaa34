"""train.report: the report folder written from hand-made predictions, no training."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from models.bundle import Calibration
from models.config import ModelConfig
from models.episodes import episode_metrics
from train.calibration import brier_score, expected_calibration_error
from train.config import TrainConfig
from train.metrics import binary_metrics, choose_threshold
from train.report import MAX_TIMELINES, curve_groups, episode_summary, metrics_table, write_report

MODEL = ModelConfig(backbone="tiny", weights="none", image_size=48, lstm_units=(16, 8), dense_units=8)


def scan(name: str, fold, heads: list[tuple[int, int]], rng, frames: int = 40, noise: float = 0.25) -> pd.DataFrame:
    """One scan's predictions: Head on the frame ranges ``heads``, scores the labels plus noise."""
    labels = np.zeros(frames, int)
    for first, last in heads:
        labels[first:last + 1] = 1
    scores = np.clip(0.15 + 0.7 * labels + rng.normal(0, noise, frames), 0, 1)
    return pd.DataFrame({"scan": name, "frame": np.arange(frames), "label": labels, "score": scores, "fold": fold})


def fold_result(fold: int, predictions: pd.DataFrame) -> dict:
    return {"fold": fold, "at_0.5": binary_metrics(predictions["label"], predictions["score"], 0.5),
            "at_threshold": binary_metrics(predictions["label"], predictions["score"], 0.45)}


@pytest.fixture
def run(tmp_path):
    """A run folder with two folds' out-of-fold predictions, a holdout scan and the folds' histories."""
    rng = np.random.default_rng(7)
    folds = [pd.concat([scan("scan_a", 0, [(5, 14), (25, 30)], rng), scan("scan_b", 0, [(10, 20)], rng)]),
             scan("scan_c", 1, [(0, 8), (20, 35)], rng)]
    oof = pd.concat(folds, ignore_index=True)
    holdout = scan("scan_h", "holdout", [(12, 27)], rng, noise=0.4)
    for i in range(2):
        history = pd.DataFrame({"epoch": range(6), "loss": np.linspace(1, 0.4, 6),
                                "val_loss": [0.9, 0.7, 0.5 + 0.1 * i, 0.55, 0.6, 0.65]})
        (tmp_path / "folds" / f"fold_{i}").mkdir(parents=True)
        history.to_csv(tmp_path / "folds" / f"fold_{i}" / "history.csv", index=False)
    pd.DataFrame({"scan": ["scan_a", "scan_b", "scan_c", "scan_h"], "fold": [0, 0, 1, "holdout"]}).to_csv(
        tmp_path / "folds.csv", index=False)
    results = [fold_result(i, f) for i, f in enumerate(folds)]
    return tmp_path, results, oof, holdout, choose_threshold(oof["label"], oof["score"])


def test_the_report_shows_every_file_it_writes_and_no_placeholders(run):
    out, results, oof, holdout, threshold = run
    folder = write_report(out, MODEL, TrainConfig(threshold_rule="f1"), results, oof, threshold, holdout)
    assert folder == out / "report"
    written = {p.name for p in folder.iterdir()}
    assert {"reliability.png", "timelines.png", "curves.png", "roc.png", "pr.png", "calibration.csv",
            "folds.csv"} <= written
    text = (folder / "report.md").read_text()
    listed = text.split("Files: ")[1].split(".\n")[0].split(", ")
    assert sorted(listed) == sorted(written)
    for wrong in ("<NA>", "nan", "(none weights)", "fold holdout"):
        assert wrong not in text, wrong
    assert "(random weights)" in text
    assert "maximises F1" in text and "Youden" not in text
    assert "model's own sigmoid outputs, not calibrated" in text
    pooled = metrics_table(results, oof, threshold, holdout).query("fold == 'pooled'").iloc[0]
    assert f"{100 * pooled['accuracy']:.1f} %" in text.split("90.6 %")[1].split("\n")[0]
    assert "lowest validation loss (the weights kept)" in text


def test_pooled_curve_is_out_of_fold_only_and_holdout_has_its_own(run):
    _, results, oof, holdout, threshold = run
    groups = dict(curve_groups(oof, holdout))
    assert list(groups) == ["fold 0", "fold 1", "pooled", "holdout"]
    table = metrics_table(results, oof, threshold, holdout).set_index("fold")
    for name in ("pooled", "holdout"):
        group = groups[name]
        assert skm.roc_auc_score(group["label"], group["score"]) == pytest.approx(table.loc[name, "roc_auc"])
    assert set(groups["pooled"]["scan"]) == {"scan_a", "scan_b", "scan_c"}
    # An evaluation has one "fold": its curve is pooled alone, not drawn twice.
    assert [name for name, _ in curve_groups(oof.assign(fold="eval"))] == ["pooled"]


def test_calibration_table_holds_the_ece_and_brier_of_each_set(run):
    out, results, oof, holdout, threshold = run
    calibration = Calibration(slope=1.3, intercept=-0.2, fitted_on="pooled out-of-fold scores")
    folder = write_report(out, MODEL, TrainConfig(), results, oof, threshold, holdout, calibration=calibration)
    table = pd.read_csv(folder / "calibration.csv").set_index("set")
    text = (folder / "report.md").read_text()
    section = text.split("## Calibration")[1].split("##")[0]
    for name, frame in (("pooled", oof), ("holdout", holdout)):
        ece = expected_calibration_error(frame["label"], frame["score"])
        brier = brier_score(frame["label"], frame["score"])
        assert table.loc[name, "ece"] == pytest.approx(ece)
        assert f"| {name} | {len(frame)} | {ece:.4f} | {brier:.4f} |" in section
    assert f"The scores shown are calibrated: {calibration.describe()}." in text


def test_episode_figures_are_episode_metrics_per_scan(run):
    out, results, oof, holdout, threshold = run
    shuffled = oof.sample(frac=1, random_state=0)
    episodes = episode_summary(shuffled, threshold)
    ordered = oof.sort_values(["scan", "frame"])
    expected = episode_metrics(ordered["label"], ordered["score"], threshold, groups=ordered["scan"])
    assert {k: episodes[k] for k in expected} == pytest.approx(expected, nan_ok=True)
    folder = write_report(out, MODEL, TrainConfig(), results, oof, threshold, holdout, episodes=episodes)
    section = (folder / "report.md").read_text().split("## Episodes")[1].split("##")[0]
    row = (f"| {expected['truth']} | {expected['found']} | {expected['missed']} | {expected['false']} | "
           f"{expected['split']} | {expected['predicted']} | {expected['start_delay']:.4f} | "
           f"{expected['end_delay']:.4f} |")
    assert row in section
    assert pd.read_csv(folder / "episodes.csv").iloc[0]["found"] == expected["found"]


def test_an_evaluation_writes_into_its_folder_and_lists_only_its_files(run, tmp_path):
    out, _, oof, _, threshold = run
    target = tmp_path / "eval"
    evaluated = oof.assign(fold="eval")
    folder = write_report(target, MODEL, None, [], evaluated, threshold, folder=target,
                          threshold_rule="youden on pooled out-of-fold per-frame scores",
                          episodes=episode_summary(evaluated, threshold))
    assert folder == target and (target / "report.md").exists() and not (target / "report").exists()
    text = (target / "report.md").read_text()
    assert "folds.csv" not in text and "curves.png" not in text
    assert "youden on pooled out-of-fold per-frame scores (Youden's rule" in text
    assert "## Episodes" in text


def test_timelines_are_capped_and_say_how_many_were_left_out(tmp_path):
    rng = np.random.default_rng(1)
    count = MAX_TIMELINES + 3
    oof = pd.concat([scan(f"scan_{i:02d}", i % 2, [(5, 15)], rng, frames=20) for i in range(count)],
                    ignore_index=True)
    results = [fold_result(i, oof[oof["fold"] == i]) for i in range(2)]
    folder = write_report(tmp_path, MODEL, TrainConfig(), results, oof, 0.5)
    text = (folder / "report.md").read_text()
    assert "; 3 better scans left out (per_scan.csv has every scan)" in text
    assert len(pd.read_csv(folder / "per_scan.csv")) == count
