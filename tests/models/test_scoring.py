"""models.scoring: streaming-equivalent scores of a scan, in batches and frame by frame."""

import numpy as np

from models.runtime import Runtime
from models.scoring import streaming_scores, window_scores
from models.windows import RollingWindow


def test_streaming_scores_are_the_last_position_of_each_window(tiny_config, tiny_models, rng):
    runtime = Runtime(tiny_config, *tiny_models)
    features = rng.normal(size=(20, runtime.feature_dim)).astype(np.float32)
    scores = runtime.scan_scores(features)
    windows = window_scores(features, runtime.score_windows, 8)
    assert windows.shape == (13, 8)
    np.testing.assert_allclose(scores[7:], windows[:, -1], atol=1e-6)
    np.testing.assert_allclose(scores[:7], windows[0, :7], atol=1e-6)
    # The worker's incremental view gives the same scores.
    rolling = RollingWindow(8, runtime.feature_dim)
    live = []
    for seq, row in enumerate(features):
        rolling.push(row, seq)
        live.append(runtime.score_windows(rolling.view()[None])[0, -1])
    np.testing.assert_allclose(live, scores, atol=1e-5)
    # A scan shorter than the window still gets a score per frame.
    assert runtime.scan_scores(features[:5]).shape == (5,)
    np.testing.assert_allclose(streaming_scores(features, runtime.score_windows, 8, batch_size=3), scores, atol=1e-6)
