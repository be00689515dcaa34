"""train.evaluate: a bundle scored on scans gives the runtime's own streaming scores; and its command."""

from pathlib import Path

import numpy as np
import pytest

from models.bundle import load as load_bundle
from models.episodes import episode_metrics
from tools.commands.evaluate import main
from train.data import load_dataset
from train.evaluate import evaluate

# Slow tier: every test here trains whole k-fold runs.
pytestmark = pytest.mark.slow


def test_evaluate_scores_equal_the_runtimes(phantom, full_run, tmp_path):
    tmp, _, summary, _ = full_run
    result = evaluate(summary["bundle"], phantom, tmp_path / "eval", cache_dir=str(tmp / "cache"))
    # Written into --out itself, not a report/ folder under it; only the files it wrote are listed.
    assert Path(result["report"]) == tmp_path / "eval" and not (tmp_path / "eval" / "report").exists()
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "folds.csv" not in text and "## Episodes" in text
    bundle = load_bundle(summary["bundle"])
    assert bundle.info["threshold_rule"] in text
    ordered = result["predictions"].sort_values(["scan", "frame"])
    figures = episode_metrics(ordered["label"], ordered["score"], bundle.threshold, groups=ordered["scan"])
    assert {k: result["episodes"][k] for k in figures} == pytest.approx(figures, nan_ok=True)
    runtime = bundle.runtime()
    scan = load_dataset(phantom)[0]
    expected = runtime.scan_scores(runtime.frame_features(scan.iter_frames()))
    got = result["predictions"].query("scan == @scan.name")["score"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_evaluate_command(phantom, full_run, tmp_path, capsys):
    tmp, _, summary, _ = full_run
    assert main([summary["bundle"], str(phantom), "--out", str(tmp_path / "eval"), "--cache-dir",
                 str(tmp / "cache"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ROC-AUC" in printed and "head episodes: " in printed
    assert (tmp_path / "eval" / "report.md").exists()
    assert main([str(tmp_path / "missing.fhb"), str(phantom), "--out", str(tmp_path / "x")]) == 1
    assert "model bundle" in capsys.readouterr().err
