"""Head episodes: the runs of frames in which the shown verdict is Head, and the best frame of each.

An episode is what a person sees as "head in view": it begins where the
smoothed verdict (``models.verdict.Hysteresis``, the one implementation the
live view, ``watch`` and the recorder use) turns Head and ends where it turns
back, both back-dated to the first score of the run that turned it, so
``first_seq`` is the first frame of the episode and ``last_seq`` the last
Head-scored frame before it ended. The best frame is the episode's peak
score (the first such frame on a tie): the frame the model is surest of.

What breaks an episode is what resets the verdict: a seq at or below the
previous one (a restarted source), the end of the stream, or ``close()``
(the worker calls it when a stream expires). Scores flagged ``warmup`` or
``gap`` count like any other, as they do in the verdict, so an episode
agrees frame for frame with what the live view shows; frames never scored
(missing seqs) neither break nor extend one. ``docs/verdict.md`` has the
rule in words.

``EpisodeTracker`` follows one stream score by score (the worker);
``episodes`` runs it over a whole sequence (offline); ``episode_metrics``
compares the episodes of scores with the runs of Head labels. Pure: no I/O.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import numbers
from typing import Sequence

import numpy as np

from models.verdict import DEFAULT_HOLD, Hysteresis, check_hold

START = "start"
END = "end"
KINDS = (START, END)


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class EpisodeEvent:
    """An episode began (``kind`` "start") or ended ("end").

    ``first_seq`` / ``t_first`` are its first frame and that frame's time,
    ``last_seq`` / ``t_last`` its last Head-scored frame (None on start).
    ``peak_score`` / ``peak_seq`` are the highest score so far (on start:
    of the frames that turned the verdict) and ``best_seq`` the frame chosen
    as the episode's best, the peak. Times are whatever the caller fed
    (unix seconds in the worker), None when it fed none.
    """

    kind: str
    stream: str
    first_seq: int
    last_seq: int | None
    peak_score: float
    peak_seq: int
    best_seq: int
    t_first: float | None
    t_last: float | None


@dataclasses.dataclass
class _Open:
    first_seq: int
    t_first: float | None
    peak_score: float
    peak_seq: int
    last_seq: int
    t_last: float | None

    def event(self, kind: str, stream: str) -> EpisodeEvent:
        ended = kind == END
        return EpisodeEvent(kind, stream, self.first_seq, self.last_seq if ended else None, self.peak_score,
                            self.peak_seq, self.peak_seq, self.t_first, self.t_last if ended else None)


class EpisodeTracker:
    """The episodes of one stream, fed its scores in seq order.

    ``feed`` returns the events that score caused (none, a start, an end,
    or an end then a start when the seq went back); ``close`` ends an open
    episode at its last Head frame and starts the stream over.
    """

    def __init__(self, stream: str, threshold: float, hold: int = DEFAULT_HOLD) -> None:
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"stream must be a non-empty string, got {stream!r}")
        if not (_number(threshold) and 0.0 <= threshold <= 1.0):
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        check_hold(hold)
        self.stream = stream
        self.threshold = float(threshold)
        self.hold = hold
        self._verdict = Hysteresis(hold)
        # The latest scores while no episode is open: the run that turns the verdict is at most ``hold`` long.
        self._recent: collections.deque[tuple[int, float, float | None]] = collections.deque(maxlen=hold)
        self._open: _Open | None = None

    @property
    def open(self) -> bool:
        """An episode has started and not ended."""
        return self._open is not None

    def feed(self, seq: int, score: float, t: float | None) -> list[EpisodeEvent]:
        """Fold in the score of frame ``seq`` (at time ``t``, or None); returns the events it caused."""
        if not (_number(score) and math.isfinite(score) and 0.0 <= score <= 1.0):
            raise ValueError(f"score of {self.stream}#{seq} must be a number in [0, 1], got {score!r}")
        score = float(score)
        events = []
        if self._verdict.last_seq is not None and seq <= self._verdict.last_seq:
            events += self.close()
        head = score >= self.threshold
        verdict = self._verdict.update(seq, head, 0.0 if t is None else t)
        if self._open is None:
            self._recent.append((seq, score, t))
            if verdict.changed:
                run = [item for item in self._recent if item[0] >= verdict.since_seq]
                # max keeps the first of equal scores: the earliest frame wins a tie, as inside an episode.
                peak_seq, peak_score, _ = max(run, key=lambda item: item[1])
                self._open = _Open(run[0][0], run[0][2], peak_score, peak_seq, seq, t)
                self._recent.clear()
                events.append(self._open.event(START, self.stream))
            return events
        episode = self._open
        if head:
            episode.last_seq, episode.t_last = seq, t
            if score > episode.peak_score:
                episode.peak_score, episode.peak_seq = score, seq
        if verdict.changed:
            events.append(episode.event(END, self.stream))
            self._open = None
        return events

    def close(self) -> list[EpisodeEvent]:
        """End the open episode, if any (end of stream, an expired stream, a restart); the stream starts over."""
        events = [self._open.event(END, self.stream)] if self._open is not None else []
        self._open = None
        self._recent.clear()
        self._verdict.reset()
        return events


def episodes(seqs: Sequence[int], scores: Sequence[float], threshold: float, hold: int = DEFAULT_HOLD,
             times: Sequence[float] | None = None, *, stream: str = "scan") -> list[EpisodeEvent]:
    """The episodes of one stream's scores, offline: its "end" events in order, the last closed at the end.

    ``seqs`` int (N,) in increasing order (a seq going back starts over, as
    live), ``scores`` float (N,) in [0, 1], ``times`` (N,) or None.
    """
    if len(seqs) != len(scores) or (times is not None and len(times) != len(seqs)):
        raise ValueError(f"seqs, scores and times must have one entry per frame, got {len(seqs)}, {len(scores)}"
                         f" and {'none' if times is None else len(times)}")
    tracker = EpisodeTracker(stream, threshold, hold)
    events: list[EpisodeEvent] = []
    for i, (seq, score) in enumerate(zip(seqs, scores)):
        events += tracker.feed(int(seq), float(score), None if times is None else float(times[i]))
    events += tracker.close()
    return [e for e in events if e.kind == END]


def _runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in a bool (N,) array."""
    edges = np.diff(np.concatenate([[False], labels, [False]]).astype(np.int8))
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


def episode_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float, hold: int = DEFAULT_HOLD,
                    groups: Sequence | None = None) -> dict:
    """Episode-level figures of ``scores`` against the runs of Head in ``labels``.

    ``labels`` (N,) 1/True for Head; ``scores`` float (N,) in [0, 1], frames
    in order; ``groups`` (N,) scan ids, or None for one scan: episodes never
    cross a scan, and each scan's frames must be contiguous and in order.
    A truth episode (a run of Head labels) is **found** when a predicted
    episode overlaps it by at least one frame, else **missed**; a predicted
    episode that overlaps none is **false**. ``split`` counts the extra
    predicted episodes on truth episodes found more than once. Delays are in
    frames, positive when late: ``start_delay`` is the first overlapping
    predicted episode's first frame minus the truth's, ``end_delay`` the last
    overlapping one's last frame minus the truth's, each a mean over found
    episodes (NaN when none). Predicted edges are back-dated (see the module
    doc): live, a start is announced ``hold - 1`` frames after its first frame.
    Returns {"truth", "predicted", "found", "missed", "false", "split" (ints),
    "start_delay", "end_delay" (floats)}.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=float)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels and scores must be two (N,) arrays of one length, got shapes {labels.shape} "
                         f"and {scores.shape}")
    if groups is None:
        bounds = [(0, len(labels))]
    else:
        groups = np.asarray(groups)
        if groups.shape != labels.shape:
            raise ValueError(f"groups must have one entry per frame, got shape {groups.shape} for {labels.shape}")
        change = np.flatnonzero(groups[1:] != groups[:-1]) + 1
        starts = np.concatenate([[0], change]).astype(int)
        if len(set(groups[starts].tolist())) != len(starts):
            raise ValueError("groups: each scan's frames must be contiguous")
        bounds = list(zip(starts.tolist(), np.concatenate([change, [len(labels)]]).astype(int).tolist()))
    counts = dict.fromkeys(("truth", "predicted", "found", "missed", "false", "split"), 0)
    start_delays: list[int] = []
    end_delays: list[int] = []
    for lo, hi in bounds:
        truth = _runs(labels[lo:hi])
        predicted = [(e.first_seq, e.last_seq) for e in episodes(range(hi - lo), scores[lo:hi], threshold, hold)]
        counts["truth"] += len(truth)
        counts["predicted"] += len(predicted)
        hits = [[p for p in predicted if p[0] <= t_last and p[1] >= t_first] for t_first, t_last in truth]
        for (t_first, t_last), overlapping in zip(truth, hits):
            if not overlapping:
                counts["missed"] += 1
                continue
            counts["found"] += 1
            counts["split"] += len(overlapping) - 1
            start_delays.append(overlapping[0][0] - t_first)
            end_delays.append(overlapping[-1][1] - t_last)
        counts["false"] += sum(1 for p in predicted if not any(p[0] <= t[1] and p[1] >= t[0] for t in truth))
    return {**counts,
            "start_delay": float(np.mean(start_delays)) if start_delays else math.nan,
            "end_delay": float(np.mean(end_delays)) if end_delays else math.nan}
