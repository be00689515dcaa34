"""Windows of consecutive frames: the one place their indices and views are made.

Training windows (``window_starts``, ``windows``), the many-to-many view of a
scan (``sliding``) and a live stream's rolling buffer (``RollingWindow``) all
come from here, so training, evaluation and the worker cut frames the same way.
"""

from __future__ import annotations

import numpy as np


def window_starts(n_frames: int, window: int, stride: int = 1) -> np.ndarray:
    """First frame of every window of ``window`` consecutive frames inside one scan: int64 (n_windows,).

    Starts are 0, stride, 2*stride ... while the window fits, so a tail shorter
    than a stride may be in no window; a scan shorter than the window has none.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    return np.arange(0, max(n_frames - window + 1, 0), stride, dtype=np.int64)


def windows(n_frames: int, window: int, stride: int = 1) -> np.ndarray:
    """Frame indexes of every window (see ``window_starts``): int64 (n_windows, window).

    Row k is ``start_k + [0, 1, ... window-1]``; a scan shorter than the window
    gives shape (0, window). Call it per scan: windows never cross scans.
    """
    return window_starts(n_frames, window, stride)[:, None] + np.arange(window, dtype=np.int64)[None, :]


def sliding(values: np.ndarray, window: int, stride: int = 1) -> np.ndarray:
    """Every window of ``window`` consecutive rows of ``values``, as a read-only view without a copy.

    values: (N, ...) per-frame rows (features (N, F), labels (N,)). Returns
    (n_windows, window, ...), window k starting at row k * stride; a scan
    shorter than the window gives (0, window, ...).
    """
    values = np.asarray(values)
    if len(values) < window:
        return np.zeros((0, window, *values.shape[1:]), values.dtype)
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)
    # sliding_window_view puts the window axis last: (n, ..., window) -> (n, window, ...).
    return np.moveaxis(view, -1, 1)[::stride]


class RollingWindow:
    """The last ``window`` feature vectors of one stream, with gap tracking.

    Push each frame's features with its sequence number; ``view()`` is the
    (k, F) window to score, k <= window, newest last.
    """

    def __init__(self, window: int, feature_dim: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._buffer = np.zeros((window, feature_dim), np.float32)
        self._seqs = np.full(window, -1, np.int64)
        self._count = 0

    def push(self, features: np.ndarray, seq: int) -> None:
        """Add one frame's float32 (F,) features; the oldest leaves a full window."""
        if self._count == self.window:
            self._buffer[:-1] = self._buffer[1:]
            self._seqs[:-1] = self._seqs[1:]
            self._buffer[-1] = features
            self._seqs[-1] = seq
        else:
            self._buffer[self._count] = features
            self._seqs[self._count] = seq
            self._count += 1

    def reset(self) -> None:
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def view(self) -> np.ndarray:
        """float32 (k, F): the frames behind the newest score, oldest first."""
        return self._buffer[:self._count]

    @property
    def warming_up(self) -> bool:
        return self._count < self.window

    @property
    def has_gap(self) -> bool:
        """True when sequence numbers inside the window are not consecutive."""
        seqs = self._seqs[:self._count]
        return bool(self._count > 1 and np.any(np.diff(seqs) != 1))
