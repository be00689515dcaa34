"""The hold study: a run's out-of-fold scores smoothed with each hold, against the labels."""

import pandas as pd
import pytest

from tools.hold_study import hold_table, main


def predictions():
    # One scan: labels Head for frames 4..11; the scores cross the threshold with a one-frame blip at 1 and 8.
    scores = [0.1, 0.9, 0.1, 0.2, 0.8, 0.9, 0.7, 0.8, 0.3, 0.9, 0.8, 0.9, 0.2, 0.1, 0.1, 0.2]
    labels = [0] * 4 + [1] * 8 + [0] * 4
    return pd.DataFrame({"scan": "s", "frame": range(16), "label": labels, "score": scores, "fold": 0})


def test_hold_removes_one_frame_blips_at_the_cost_of_delay():
    table = hold_table(predictions(), 0.5, [1, 2]).set_index("hold")
    frames = 16
    # Raw: up at 1, down at 2, up at 4, down at 8, up at 9, down at 12 -> 6 changes against the labels' 2.
    assert table.loc[1, "flips_per_100"] == pytest.approx(100 * 6 / frames)
    assert table.loc[1, "label_flips_per_100"] == pytest.approx(100 * 2 / frames)
    assert table.loc[1, "spurious_per_100"] == pytest.approx(100 * 4 / frames)
    # Hold 2: up at 5, down at 13: the blips are gone, each change one frame late.
    assert table.loc[2, "flips_per_100"] == pytest.approx(100 * 2 / frames)
    assert table.loc[2, "spurious_per_100"] == 0
    assert table.loc[1, "delay_frames"] == 0 and table.loc[2, "delay_frames"] == 1
    assert table.loc[2, "accuracy"] == pytest.approx(14 / 16)


def test_the_command_reads_a_runs_threshold_and_says_what_is_missing(tmp_path, capsys):
    report = tmp_path / "run" / "report"
    report.mkdir(parents=True)
    predictions().to_csv(report / "predictions.csv", index=False)
    (report / "report.md").write_text("Decision threshold: **0.5000** (youden rule ...)\n")
    assert main([str(tmp_path / "run"), "--holds", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "threshold 0.5000" in out
    with pytest.raises(SystemExit, match="predictions.csv: not found"):
        main([str(tmp_path / "nope")])
