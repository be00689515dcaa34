"""The benchmark runs and reports every figure (tiny backbone, small run); no timing asserts."""

import json

from tools.bench import main


def test_bench_prints_every_figure_with_its_baseline(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["--backbones", "tiny", "--image-size", "64", "--frames", "12", "--live-seconds", "2",
                 "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    figures = {row["figure"] for row in rows}
    for expected in ("one frame, compiled path", "worker per frame (received -> published)",
                     "per frame, rolling feature buffer", "lossless replay throughput",
                     "head epoch step on cached features", "feature extraction"):
        assert expected in figures
    assert any(f.startswith("live p99 latency") for f in figures)
    for row in rows:
        assert row["value"] > 0
        if row["baseline"] is not None:
            assert row["ratio"] > 0
    assert "fetalhead bench" in capsys.readouterr().out
