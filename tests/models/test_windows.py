"""models.windows: window indices, sliding views and the rolling window of a stream."""

import numpy as np
import pytest

from models.windows import RollingWindow, sliding, window_starts, windows


@pytest.mark.parametrize("n, window, stride, count", [
    (10, 8, 1, 3), (8, 8, 1, 1), (7, 8, 1, 0), (0, 8, 1, 0), (10, 1, 1, 10), (20, 8, 4, 4), (19, 8, 4, 3),
    (20, 8, 8, 2), (5, 1, 3, 2),
])
def test_windows_counts_and_stride(n, window, stride, count):
    w = windows(n, window, stride)
    assert w.shape == (count, window)
    assert np.issubdtype(w.dtype, np.integer)
    if count:
        np.testing.assert_array_equal(w[:, 0], np.arange(count) * stride)
        np.testing.assert_array_equal(np.diff(w, axis=1), 1)  # consecutive frames
        assert w.min() >= 0 and w.max() < n


@pytest.mark.parametrize("args, message", [
    ((10, 0), "window must be >= 1, got 0"), ((10, 8, 0), "stride must be >= 1, got 0"),
    ((-1, 8), "n_frames must be >= 0, got -1"),
])
def test_windows_validation(args, message):
    with pytest.raises(ValueError, match=message):
        windows(*args)


def test_window_starts_are_the_first_column_of_the_windows():
    for n, window, stride in ((20, 8, 1), (19, 8, 4), (7, 8, 1)):
        np.testing.assert_array_equal(window_starts(n, window, stride), windows(n, window, stride)[:, 0])


def test_sliding_views_rows_without_a_copy():
    features = np.arange(30, dtype=np.float32).reshape(10, 3)
    view = sliding(features, 4, stride=3)
    assert view.shape == (3, 4, 3) and np.shares_memory(view, features)
    np.testing.assert_array_equal(view, features[windows(10, 4, 3)])
    labels = np.arange(10, dtype=np.int8)
    np.testing.assert_array_equal(sliding(labels, 8), labels[windows(10, 8)])
    assert sliding(labels, 12).shape == (0, 12) and sliding(features, 12).shape == (0, 12, 3)


def test_rolling_window_tracks_warmup_and_gaps():
    window = RollingWindow(3, 2)
    window.push(np.ones(2), 0)
    assert window.warming_up and len(window) == 1
    window.push(np.ones(2), 1)
    window.push(np.ones(2) * 2, 2)
    assert not window.warming_up and not window.has_gap
    window.push(np.ones(2) * 5, 4)
    assert window.has_gap
    np.testing.assert_array_equal(window.view()[:, 0], [1, 2, 5])
    for seq in (5, 6):
        window.push(np.zeros(2), seq)
    assert not window.has_gap
