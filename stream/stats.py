"""Small pure counters for stream consumers: event rates, latency percentiles, seq gaps.

No sockets and no clocks of their own: callers pass the time, so tests can
feed exact timestamps and memory stays bounded however long a stream runs.
"""

from __future__ import annotations

import collections
import math


class RateCounter:
    """Events per second over the last ``window_s`` seconds.

    ``add(t, n)`` records ``n`` events at time ``t`` (any monotonic-ish
    seconds, e.g. ``time.time()``); ``rate(now)`` is the count inside
    ``(now - window_s, now]`` divided by the span it covers. The span starts
    at the first event when the counter is younger than the window, so the
    first seconds of a stream do not read low.
    """

    def __init__(self, window_s: float = 2.0) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._first: float | None = None
        self._first_n = 0

    def add(self, t: float, n: int = 1) -> None:
        """Record ``n`` >= 0 events at time ``t``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if self._first is None:
            self._first, self._first_n = t, n
        self._events.append((t, n))
        self._expire(t)

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            self._events.popleft()

    def rate(self, now: float) -> float:
        """Events per second in the window ending at ``now``; 0.0 before any event."""
        self._expire(now)
        if self._first is None or not self._events:
            return 0.0
        count = sum(n for _, n in self._events)
        if now - self._first < self.window_s:
            # Younger than the window: the first event only marks where counting
            # starts (n events at 0, 0.1 .. 1.0 s are 10 intervals, not 11).
            span = now - self._first
            count -= self._first_n
        else:
            span = self.window_s
        return count / span if span > 0 else 0.0


class LatencyWindow:
    """Percentiles of the last ``size`` values (e.g. latencies in ms)."""

    def __init__(self, size: int = 1000) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._values: collections.deque[float] = collections.deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._values)

    def add(self, value: float) -> None:
        if math.isfinite(value):
            self._values.append(float(value))

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0..100, linear interpolation as numpy's default); None when empty."""
        if not 0 <= q <= 100:
            raise ValueError(f"q must be in [0, 100], got {q}")
        if not self._values:
            return None
        ordered = sorted(self._values)
        pos = (len(ordered) - 1) * q / 100
        lo = math.floor(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class GapCounter:
    """Counts seq numbers missing between consecutive messages of one stream.

    ``add(seq)`` returns how many seqs were skipped since the previous one.
    A seq at or below the previous one means the source restarted (a new
    capture counts from 0 again): the count carries on from there without a gap.
    """

    def __init__(self) -> None:
        self.last: int | None = None
        self.missing = 0
        self.restarts = 0

    def add(self, seq: int) -> int:
        skipped = 0
        if self.last is not None:
            if seq > self.last:
                skipped = seq - self.last - 1
            else:
                self.restarts += 1
        self.last = seq
        self.missing += skipped
        return skipped
