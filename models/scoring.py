"""Per-frame scores from feature sequences, the same offline and live.

A live worker scores frame t with the head run over the window ending at t
and takes the last position. Before a full window exists, frame t < W - 1 is
scored over frames 0..t; the LSTMs are causal, so that equals position t of
the scan's first full window. ``streaming_scores`` computes exactly these
scores in batches; ``models.windows.RollingWindow`` is the worker's incremental form.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from models.windows import sliding

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""float32 (B, T, F) feature windows -> float32 (B, T) per-position scores."""


def streaming_scores(features: np.ndarray, score_windows: ScoreFn, window: int,
                     *, batch_size: int = 256) -> np.ndarray:
    """Streaming-equivalent per-frame scores of one scan.

    features: float32 (N, F), one row per frame in order. Returns float32 (N,).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    features = np.asarray(features, np.float32)
    n = len(features)
    if n == 0:
        return np.zeros(0, np.float32)
    if n < window:
        return np.asarray(score_windows(features[None]), np.float32)[0]
    windows = sliding(features, window)
    out = np.empty(n, np.float32)
    for start in range(0, len(windows), batch_size):
        scores = np.asarray(score_windows(np.ascontiguousarray(windows[start:start + batch_size])), np.float32)
        if start == 0:
            out[:window - 1] = scores[0, :window - 1]
        out[window - 1 + start:window - 1 + start + len(scores)] = scores[:, -1]
    return out


def newest_scores(windows: Sequence[np.ndarray], score_windows: ScoreFn, window: int) -> np.ndarray:
    """The score of the newest frame of each window: float32 (k_i, F), 1 <= k_i <= window -> float32 (B,).

    Windows are padded at the end to ``window`` frames, which changes nothing
    before the padding (the LSTMs are causal), so every call has one shape
    and a compiled head compiles once.
    """
    batch = np.zeros((len(windows), window, windows[0].shape[-1]), np.float32)
    for i, w in enumerate(windows):
        batch[i, :len(w)] = w
    scores = np.asarray(score_windows(batch), np.float32)
    return scores[np.arange(len(windows)), [len(w) - 1 for w in windows]]


def window_scores(features: np.ndarray, score_windows: ScoreFn, window: int, stride: int = 1) -> np.ndarray:
    """Scores of every window of ``window`` frames (the seed's many-to-many view).

    features: float32 (N, F). Returns float32 (n_windows, window).
    """
    windows = sliding(np.asarray(features, np.float32), window, stride)
    if len(windows) == 0:
        return np.zeros((0, window), np.float32)
    return np.asarray(score_windows(np.ascontiguousarray(windows)), np.float32)
