"""The verdict a person sees: per-frame decisions smoothed by hysteresis.

A raw decision (score at or above the threshold) flickers when the score
hovers near the threshold, and a verdict that flickers on a screen or in a
recording is one nobody trusts. ``Hysteresis`` turns the verdict to Head
after ``hold`` consecutive Head decisions and back to Not-Head after
``hold`` consecutive Not-Head ones; ``hold`` 1 is the raw decision. A
change is back-dated to the first decision of the run that caused it, so
"head in view since" and an episode's first and last frames are where the
head came and went, not ``hold`` frames later.

This is the one implementation: the web view, ``watch``, the recorder's
CSV and video all fold the same scores through it, so they agree frame
for frame. Raw scores and decisions in the protocol are never smoothed.

``DEFAULT_HOLD`` (2) was chosen on the demo's out-of-fold scores: it
removes as many spurious changes as any hold up to 6, for one frame of
delay; ``docs/verdict.md`` has the measurement.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from models.settings import check

DEFAULT_HOLD = 2
MAX_HOLD = 1000


def check_hold(hold: int, name: str = "hold") -> None:
    """ConfigError unless ``hold`` is an int in [1, MAX_HOLD]."""
    check(isinstance(hold, int) and not isinstance(hold, bool) and 1 <= hold <= MAX_HOLD,
          f"{name}: must be an integer in [1, {MAX_HOLD}], got {hold!r}")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The smoothed verdict after one decision.

    ``head`` is the verdict; ``changed`` says this decision turned it;
    ``since_seq`` / ``since_t`` are where the current verdict began (the
    first decision of the run that turned it; the first decision seen when
    it never turned); ``pending`` counts the latest decisions that disagree
    with the verdict (0 .. hold - 1).
    """

    head: bool
    changed: bool
    since_seq: int
    since_t: float
    pending: int


class Hysteresis:
    """The smoothed verdict of one stream, fed one decision at a time, in seq order.

    A seq at or below the previous one means the source started again: the
    verdict starts over at Not-Head. Missing seqs (frames never scored) do
    not break a run: the decisions are counted, not the frames.
    """

    def __init__(self, hold: int = DEFAULT_HOLD) -> None:
        check_hold(hold)
        self.hold = hold
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next decision starts at Not-Head."""
        self.head = False
        self.last_seq: int | None = None
        self.since_seq: int | None = None
        self.since_t: float | None = None
        self._run = 0
        self._run_seq = 0
        self._run_t = 0.0

    def update(self, seq: int, decision: bool, t: float) -> Verdict:
        """Fold in the raw decision on frame ``seq`` at time ``t`` (seconds); returns the verdict after it."""
        if self.last_seq is not None and seq <= self.last_seq:
            self.reset()
        self.last_seq = seq
        if self.since_seq is None:
            self.since_seq, self.since_t = seq, t
        changed = False
        if bool(decision) == self.head:
            self._run = 0
        else:
            if self._run == 0:
                self._run_seq, self._run_t = seq, t
            self._run += 1
            if self._run >= self.hold:
                self.head, changed = not self.head, True
                self.since_seq, self.since_t = self._run_seq, self._run_t
                self._run = 0
        return Verdict(self.head, changed, self.since_seq, self.since_t, self._run)


def smooth(decisions: Iterable[bool], hold: int = DEFAULT_HOLD) -> np.ndarray:
    """The smoothed verdicts of one stream's decisions in order, as a bool array (the offline form)."""
    machine = Hysteresis(hold)
    return np.array([machine.update(i, d, float(i)).head for i, d in enumerate(decisions)], dtype=bool)


def flips(verdicts: Iterable[bool]) -> int:
    """How many times a verdict sequence changes."""
    v = np.asarray(list(verdicts), dtype=bool)
    return int(np.count_nonzero(v[1:] != v[:-1])) if v.size else 0
