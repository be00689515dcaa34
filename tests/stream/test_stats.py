"""The consumers' pure counters: rates, latency percentiles, seq gaps."""

import numpy as np
import pytest

from stream.stats import GapCounter, LatencyWindow, RateCounter


def test_rate_counter_counts_intervals_and_forgets_old_events():
    rate = RateCounter(window_s=2.0)
    for i in range(11):  # 10 intervals in 1 s
        rate.add(100.0 + i * 0.1)
    assert rate.rate(101.0) == pytest.approx(10.0)
    for i in range(11, 31):
        rate.add(100.0 + i * 0.1)
    assert rate.rate(103.0) == pytest.approx(10.0)
    assert rate.rate(110.0) == 0.0


def test_latency_window_matches_numpy_and_is_bounded():
    window = LatencyWindow(size=100)
    values = np.random.default_rng(0).exponential(20.0, 250)
    for v in values:
        window.add(float(v))
    assert len(window) == 100
    for q in (50, 99):
        assert window.percentile(q) == pytest.approx(np.percentile(values[-100:], q))
    assert LatencyWindow().percentile(50) is None


def test_gap_counter_counts_holes_and_restarts():
    gaps = GapCounter()
    assert [gaps.add(s) for s in (0, 1, 4, 5, 0, 2)] == [0, 0, 2, 0, 0, 1]
    assert gaps.missing == 3 and gaps.restarts == 1
