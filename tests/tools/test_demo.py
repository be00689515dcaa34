"""The README's main job, shrunk: synthetic data -> k-fold -> live replay through real processes."""

import pandas as pd
import pytest

from tools.commands.demo import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_live_scores_equal_offline(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["--out", str(out), "--scans", "4", "--frames", "24", "--folds", "2", "--epochs", "1", "--no-watch"])
    # rich wraps long lines at 80 columns when not on a terminal.
    printed = " ".join(capsys.readouterr().out.split())
    assert code == 0, printed
    assert "equal within 1e-5" in printed
    scores = pd.read_csv(out / "scores.csv")
    assert sorted(scores["seq"]) == list(range(24))
    for name in ("model.fhb", "report/report.md", "report/roc.png"):
        assert (out / "run" / name).exists(), name
    assert (out / "annotated.mp4").stat().st_size > 0
    assert "scores.csv" in printed
