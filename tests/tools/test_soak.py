"""The soak tool: its verdict on synthetic windows, and a short real run through child processes."""

from __future__ import annotations

import sys

import pytest

from models.errors import ConfigError
from tools.commands.soak import main
from tools.soak import SoakConfig, Window, judge, summarise

MiB = 2**20


@pytest.fixture(scope="module")
def tiny_bundle_path(tmp_path_factory, tiny_config, tiny_models):
    from models.bundle import save

    extractor, head = tiny_models
    return save(tmp_path_factory.mktemp("bundle") / "tiny.fhb", tiny_config, extractor, head)


def window(name, worker_mib, p99_ms, scores=100):
    return Window(name, {"worker": worker_mib * MiB, "capture": 100 * MiB}, p99_ms / 2, p99_ms, scores, 10.0)


def test_steady_runs_pass_and_creep_fails_with_its_figures():
    config = SoakConfig(minutes=10, max_growth=20, max_drift_ms=50)
    assert judge(window("start", 500, 20), window("end", 590, 60), config) == []
    problems = judge(window("start", 500, 20), window("end", 650, 90, scores=0), config)
    assert problems == ["no scores in the last 10 s",
                        "worker memory grew 30.0 % (500 -> 650 MiB), more than 20 %",
                        "p99 latency drifted up 70 ms (20 -> 90 ms), more than 50 ms"]


def test_windows_take_the_median_memory_and_latency_percentiles():
    samples = [(t, "worker", (500 + t) * MiB) for t in range(10)]
    latencies = [(t / 10, 0.010 + (t % 10) / 1000) for t in range(100)]
    w = summarise("start", samples, latencies, 2.0, 5.0)
    assert w.rss == {"worker": 503.5 * MiB} and w.scores == 31
    assert w.latency_p50_ms == pytest.approx(14.0) and w.latency_p99_ms == pytest.approx(19.0)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="leaves no room"):
        SoakConfig(minutes=0.01)
    with pytest.raises(ConfigError, match="max_growth: must be >= 0"):
        SoakConfig(max_growth=-1)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_short_soak_through_real_processes_holds_steady(tiny_bundle_path, capsys):
    # Seven seconds at 30 fps (the full run is fetalhead soak --minutes 10); thresholds
    # loose enough for a busy 2-core test machine.
    code = main(["--minutes", "0.12", "--model", str(tiny_bundle_path), "--max-growth", "25",
                 "--max-drift-ms", "500"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "OK" in out and "worker RSS" in out and "capture" in out
    start, end = [line for line in out.splitlines() if line.strip("│ ").startswith(("start", "end"))]
    assert "-" not in start.replace("│", " ").split()[1:]
