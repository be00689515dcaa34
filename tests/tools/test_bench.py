"""The benchmark runs and reports every figure (tiny backbone, small run); no timing asserts."""

import json

import pytest

from tools.bench import Row, combine
from tools.commands.bench import main


@pytest.mark.slow
def test_bench_prints_every_figure_with_its_baseline(tmp_path, capsys):
    path = tmp_path / "bench.json"
    settings = tmp_path / "bench.toml"
    settings.write_text("[bench]\ntrain_scans = 5\ntrain_frames = 16\ntrain_xla = \"off\"\n"
                        "frame_height = 120\nframe_width = 160\nreplay_frames = 24\n")
    assert main(["--backbones", "tiny", "--image-size", "64", "--frames", "12", "--live-seconds", "2",
                 "--config", str(settings), "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    figures = {row["figure"] for row in rows}
    for expected in ("one frame, compiled path", "worker per frame (received -> published)",
                     "per frame, rolling feature buffer", "lossless replay throughput",
                     "feature extraction (one backbone pass)", "one frame scored by 5 fold heads averaged"):
        assert expected in figures
    assert any(f.startswith("live p99 latency") for f in figures)
    (view,) = [row for row in rows if row["section"] == "view" and row["unit"] == "ms" and "per frame" in row["figure"]]
    assert view["baseline_name"] == "the same worker without a viewer"
    assert any(row["figure"] == "images the browser got" for row in rows)
    kfold = [row for row in rows if row["figure"].startswith("k-fold run, 5 folds x 50 epochs")]
    assert {row["baseline_name"] for row in kfold} == {"one backbone pass over the same frames",
                                                      "backbone inside every step (seed's way)"}
    for row in rows:
        # A stream may drop no frame at all; every other figure is a time, a rate or a size.
        assert row["value"] >= 0 if "frames dropped" in row["figure"] else row["value"] > 0, row
        if row["baseline"] is not None:
            assert row["ratio"] > 0
    assert "fetalhead bench" in capsys.readouterr().out


def test_repeats_report_the_median_run_and_the_ratios_range(tmp_path):
    path = tmp_path / "bench.json"
    assert main(["--backbones", "tiny", "--image-size", "64", "--sections", "backbones", "--repeats", "3",
                 "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())
    assert row["runs"] == 3
    assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
    assert len(row["ratios"]) == 3 and row["ratio"] in row["ratios"]
    assert row["ratio"] == row["value"] / row["baseline"]


def test_combine_takes_the_median_run_of_each_figure():
    def runs(*ratios, figure="f", baseline=10.0):
        return [Row("stream", "tiny", figure, r * baseline, "ms", baseline, "b") for r in ratios]

    first = runs(1.2) + [Row("stream", "tiny", "start-up", 9.0, "s")] + runs(0.5, figure="g")
    second = runs(1.0, baseline=20.0) + [Row("stream", "tiny", "start-up", 7.0, "s")]
    third = runs(1.5) + [Row("stream", "tiny", "start-up", 8.0, "s")] + runs(0.7, figure="g")
    f, startup, g = combine([first, second, third])
    # The whole median run, its own baseline with it: not a median value over another run's baseline.
    assert (f.ratio, f.baseline, f.runs, f.ratio_min, f.ratio_max) == (1.2, 10.0, 3, 1.0, 1.5)
    assert f.ratios == (1.2, 1.0, 1.5)
    assert (startup.value, startup.runs, startup.ratio_min) == (8.0, 3, None)
    # Missing from one run: combined over the two that have it, the upper of the middle two.
    assert (g.figure, g.runs, g.ratio, g.ratio_min, g.ratio_max) == ("g", 2, 0.7, 0.5, 0.7)


def test_repeats_below_one_is_a_one_line_error(capsys):
    assert main(["--repeats", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "fetalhead: error: bench.repeats: must be >= 1, got 0"
