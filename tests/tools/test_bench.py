"""The benchmark runs and reports every figure (tiny backbone, small run); no timing asserts."""

import json

from tools.bench import main


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
                     "feature extraction (one backbone pass)"):
        assert expected in figures
    assert any(f.startswith("live p99 latency") for f in figures)
    kfold = [row for row in rows if row["figure"].startswith("k-fold run, 5 folds x 50 epochs")]
    assert {row["baseline_name"] for row in kfold} == {"one backbone pass over the same frames",
                                                      "backbone inside every step (seed's way)"}
    for row in rows:
        assert row["value"] > 0
        if row["baseline"] is not None:
            assert row["ratio"] > 0
    assert "fetalhead bench" in capsys.readouterr().out
