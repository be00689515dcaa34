"""The viewer's state and loop: every stream's scores and every process's health (``fetalhead watch``).

``StreamBoard`` is the pure state that tests drive with protocol messages:
``update(msg)`` folds one message in, ``rows()`` gives one dict per stream
(with the smoothed verdict of ``stream.consumer.StreamVerdicts`` and the
last seconds of scores), ``processes()`` the heartbeat figures of each
process, ``recent_events()`` the status messages still worth showing and
``alerts()`` what a person should notice (a worker that went silent).
``watch`` is the socket shell: it folds what a ``net.Subscriber`` receives
into the board and hands the board to a ``BoardView``, which draws it
(``tools.render``); nothing here draws.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Callable, Protocol

from models.classes import class_name
from models.settings import check, setting
from models.verdict import DEFAULT_HOLD, Verdict
from stream import consumer, protocol
from stream.consumer import ConsumerConfig, StreamVerdicts
from stream.stats import GapCounter, LatencyWindow, RateCounter

logger = logging.getLogger(__name__)

# The most often a view is handed the board: a flood of messages must not redraw the table for each.
_VIEW_EVERY_S = 0.1
# Scores kept for a stream's history however fast it runs (120 fps for 10 s).
_HISTORY_POINTS = 1200


@dataclasses.dataclass
class _Stream:
    """What the board knows about one data stream."""

    name: str
    seen_at: float
    fps_in: RateCounter
    fps_out: RateCounter
    latency: LatencyWindow
    gaps: GapCounter = dataclasses.field(default_factory=GapCounter)
    last: protocol.Score | None = None
    scores: int = 0
    # The worker forgets a stream's drop count when the stream ends; drops of
    # earlier runs of the same stream id are kept here.
    dropped_before: int = 0
    lost: int = 0
    lost_at_start: int = 0
    ended: bool = False
    end_reason: str | None = None
    verdict: Verdict | None = None
    # (t_capture, score) of the last history_s seconds, oldest first.
    history: collections.deque[tuple[float, float]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=_HISTORY_POINTS))


@dataclasses.dataclass(frozen=True)
class _Event:
    """A status message as the board received it: ``number`` counts every status since the start."""

    status: protocol.Status
    received_at: float
    number: int


@dataclasses.dataclass
class _Process:
    """The latest heartbeat of one process."""

    beat: protocol.Heartbeat
    seen_at: float


class StreamBoard:
    """State of a watcher: per-stream scores, verdicts, rates, latency, drops; per-process heartbeats.

    ``clock`` gives unix seconds (messages' own times are unix seconds);
    every method takes an optional ``now`` so tests can feed exact times.
    Drops of a stream are the worker's own count (``Score.dropped``) plus
    ``lost``: seqs missing between consecutive scores that the worker's count
    does not explain (frames lost before the worker, or scores lost on the
    way here), and the frames lost before the first score of a run, as
    ``stream.consumer.lost_at_start`` tells them (also ``lost_at_start``).
    Every score goes through one ``Hysteresis`` per stream (``hold``
    frames): the verdict shown. ``history_s`` seconds of scores are kept
    per stream for a sparkline.

    Status messages are events for a person, and an old one must not read
    as current: the last ``events`` are kept, each for ``event_max_age_s``
    seconds after it arrived, and the end of a stream drops those about it
    (the stream's own and its capture's), since its row now says it ended.
    """

    def __init__(self, *, rate_window_s: float = 2.0, latency_samples: int = 1000,
                 dead_after_s: float = protocol.DEAD_AFTER_S, events: int = 5, event_max_age_s: float = 60.0,
                 hold: int = DEFAULT_HOLD, history_s: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not dead_after_s > 0:
            raise ValueError(f"dead_after_s must be > 0, got {dead_after_s}")
        if not event_max_age_s > 0:
            raise ValueError(f"event_max_age_s must be > 0, got {event_max_age_s}")
        if not history_s > 0:
            raise ValueError(f"history_s must be > 0, got {history_s}")
        self.rate_window_s = rate_window_s
        self.latency_samples = latency_samples
        self.dead_after_s = dead_after_s
        self.event_max_age_s = event_max_age_s
        self.history_s = history_s
        self.clock = clock
        self.started_at = clock()
        self.streams: dict[str, _Stream] = {}
        self.procs: dict[str, _Process] = {}
        self.verdicts = StreamVerdicts(hold)
        self._events: collections.deque[_Event] = collections.deque(maxlen=events)
        self._event_count = 0
        self.messages = 0

    @property
    def hold(self) -> int:
        return self.verdicts.hold

    def _stream(self, name: str, now: float) -> _Stream:
        state = self.streams.get(name)
        if state is None:
            state = self.streams[name] = _Stream(name, now, RateCounter(self.rate_window_s),
                                                 RateCounter(self.rate_window_s), LatencyWindow(self.latency_samples))
        return state

    def update(self, msg: protocol.Message, now: float | None = None) -> None:
        """Fold one message in; frames are ignored (a watcher only reads their scores)."""
        now = self.clock() if now is None else now
        self.messages += 1
        if isinstance(msg, protocol.Score):
            self._score(msg, now)
        elif isinstance(msg, protocol.EndOfStream):
            state = self._stream(msg.stream, now)
            state.ended, state.end_reason, state.seen_at = True, msg.reason, now
            self.verdicts.end(msg.stream)
            # Not protocol.process_id: that refuses the id of a stream too long to have a capture id of its own.
            about = {msg.stream, f"_capture.{msg.stream}"}
            self._events = collections.deque((e for e in self._events if e.status.stream not in about),
                                             maxlen=self._events.maxlen)
        elif isinstance(msg, protocol.Heartbeat):
            self.procs[msg.stream] = _Process(msg, now)
        elif isinstance(msg, protocol.Status):
            self._event_count += 1
            self._events.append(_Event(msg, now, self._event_count))

    def _score(self, msg: protocol.Score, now: float) -> None:
        state = self._stream(msg.stream, now)
        previous = state.last
        # After an end of stream, or when seq went back, the source started again.
        new_run = previous is None or msg.seq <= previous.seq or state.ended
        skipped = state.gaps.add(msg.seq)
        if new_run:
            state.fps_in.add(now, 1)
            if previous is not None and msg.dropped < previous.dropped:
                state.dropped_before += previous.dropped
            state.history.clear()
            lost = consumer.lost_at_start(msg)
            state.lost += lost
            state.lost_at_start += lost
        else:
            state.fps_in.add(now, msg.seq - previous.seq)
            explained = max(0, msg.dropped - previous.dropped)
            state.lost += max(0, skipped - explained)
        state.fps_out.add(now)
        state.latency.add(msg.latency * 1000.0)
        state.verdict = self.verdicts.update(msg)
        state.history.append((msg.t_capture, msg.score))
        while state.history and state.history[0][0] < msg.t_capture - self.history_s:
            state.history.popleft()
        state.last, state.seen_at = msg, now
        state.scores += 1
        state.ended, state.end_reason = False, None

    @property
    def all_ended(self) -> bool:
        """True when at least one stream was seen and every stream seen has ended."""
        return bool(self.streams) and all(s.ended for s in self.streams.values())

    def rows(self, now: float | None = None) -> list[dict]:
        """One dict per stream, sorted by stream id.

        Keys: ``stream``, ``seq``, ``score``, ``decision`` (the raw decision of
        the last score, ``Head``/``Not-Head``, None before a score),
        ``verdict`` (the smoothed verdict after it, what to show),
        ``in_view_s`` (seconds the head has been in view: from the frame where
        the Head verdict began to the last one scored, capture's clock; None
        when the verdict is Not-Head, before a score and after the stream
        ended), ``history`` (tuple of (age_s, score) of the last
        ``history_s`` seconds, oldest first, age_s >= 0 before the last
        score), ``threshold``, ``model``, ``flags`` (tuple), ``scores``
        (count), ``fps_in`` (frames the source produced per second, from the
        seq advance, scored or not), ``fps_out`` (scores per second),
        ``latency_p50_ms``, ``latency_p99_ms`` (capture to score; None before
        a score), ``dropped`` (worker), ``lost`` (``lost_at_start``
        included), ``lost_at_start``, ``drops`` (dropped + lost),
        ``restarts`` (times seq went back), ``age_s`` (since the stream's
        last message), ``ended``, ``end_reason``.
        """
        now = self.clock() if now is None else now
        rows = []
        for name in sorted(self.streams):
            s = self.streams[name]
            last = s.last
            dropped = s.dropped_before + (last.dropped if last else 0)
            verdict = s.verdict
            in_view = (last.t_capture - verdict.since_t
                       if last is not None and verdict is not None and verdict.head and not s.ended else None)
            newest = last.t_capture if last else 0.0
            rows.append({
                "stream": name,
                "seq": last.seq if last else None,
                "score": last.score if last else None,
                "decision": class_name(last.decision) if last else None,
                "verdict": class_name(verdict.head) if verdict else None,
                "in_view_s": None if in_view is None else max(0.0, in_view),
                "history": tuple((newest - t, value) for t, value in s.history),
                "threshold": last.threshold if last else None,
                "model": last.model if last else None,
                "flags": last.flags if last else (),
                "scores": s.scores,
                "fps_in": s.fps_in.rate(now),
                "fps_out": s.fps_out.rate(now),
                "latency_p50_ms": s.latency.percentile(50),
                "latency_p99_ms": s.latency.percentile(99),
                "dropped": dropped,
                "lost": s.lost,
                "lost_at_start": s.lost_at_start,
                "drops": dropped + s.lost,
                "restarts": s.gaps.restarts,
                "age_s": max(0.0, now - s.seen_at),
                "ended": s.ended,
                "end_reason": s.end_reason,
            })
        return rows

    def processes(self, now: float | None = None) -> list[dict]:
        """One dict per process that sent a heartbeat, sorted by id.

        Keys: ``id`` (``_worker``, ``_capture.<name>``), ``role``, ``pid``,
        ``silent_s`` (since its last heartbeat), ``dead`` (silent for
        ``dead_after_s`` or longer), ``finished`` (a capture whose stream
        has ended: its silence is expected), ``loading`` (still starting
        up, for ``uptime_s``), ``frames_in``, ``frames_out``,
        ``dropped``, ``rejected`` (sum of every ``rejected.<class>``),
        ``rejected_by`` (class -> count), ``fps_in``, ``fps_out``, and
        ``stats`` (the whole heartbeat map). Missing figures are None.
        """
        now = self.clock() if now is None else now
        out = []
        for pid_name in sorted(self.procs):
            proc = self.procs[pid_name]
            stats = proc.beat.stats
            rejected_by = {k.partition(".")[2]: int(v) for k, v in stats.items() if k.startswith("rejected.")}
            silent = max(0.0, now - proc.seen_at)
            out.append({
                "id": pid_name, "role": proc.beat.role, "pid": proc.beat.pid,
                "silent_s": silent, "dead": silent >= self.dead_after_s, "finished": self._finished(pid_name),
                "loading": proc.beat.loading, "uptime_s": stats.get("uptime_s"),
                "frames_in": stats.get("frames_in"), "frames_out": stats.get("frames_out"),
                "dropped": stats.get("dropped"), "rejected": sum(rejected_by.values()),
                "rejected_by": rejected_by, "fps_in": stats.get("fps_in"), "fps_out": stats.get("fps_out"),
                "stats": dict(stats),
            })
        return out

    def recent_events(self, now: float | None = None) -> list[dict]:
        """The status messages still worth showing, oldest first (see the class doc).

        Keys: ``stream``, ``level``, ``message``, ``t`` (the sender's time),
        ``age_s`` (since it arrived here), ``number`` (1 for the first status
        the board received, +1 for each after it, so a log prints each once).
        """
        now = self.clock() if now is None else now
        return [{"stream": e.status.stream, "level": e.status.level, "message": e.status.message,
                 "t": e.status.t, "age_s": max(0.0, now - e.received_at), "number": e.number}
                for e in self._fresh_events(now)]

    @property
    def events(self) -> list[protocol.Status]:
        """The Status messages of ``recent_events`` now."""
        return [e.status for e in self._fresh_events(self.clock())]

    def _fresh_events(self, now: float) -> list[_Event]:
        return [e for e in self._events if now - e.received_at < self.event_max_age_s]

    def _finished(self, proc_id: str) -> bool:
        """A capture whose stream has ended is expected to fall silent."""
        name = proc_id.partition(".")[2]
        state = self.streams.get(name)
        return bool(name) and state is not None and state.ended

    def alerts(self, now: float | None = None) -> dict[str, str]:
        """What a person should act on, as a stable key (e.g. ``silent:_worker``) -> one line.

        The key stays the same while the condition lasts and the line's
        figures change, so a log can print each alert once.
        """
        now = self.clock() if now is None else now
        alerts = {}
        roles = set()
        for proc in self.processes(now):
            roles.add(proc["role"])
            if proc["dead"] and not self._finished(proc["id"]):
                alerts[f"silent:{proc['id']}"] = (f"{proc['role']} ({proc['id']}, pid {proc['pid']}) "
                                                  f"silent for {proc['silent_s']:.0f} s")
        waited = now - self.started_at
        if "worker" not in roles and waited >= self.dead_after_s and not self.all_ended:
            alerts["no-worker"] = f"no worker heartbeat in {waited:.0f} s: is the worker running and publishing here?"
        return alerts

    def warnings(self, now: float | None = None) -> list[str]:
        """The lines of ``alerts``: silent processes, no worker at all."""
        return list(self.alerts(now).values())


@dataclasses.dataclass(frozen=True)
class WatchConfig(ConsumerConfig):
    """Settings of ``fetalhead watch`` (a ``[watch]`` TOML table).

    The consumer's settings (``stream.consumer.ConsumerConfig``: address,
    stream, receive queue, verdict hold, CURVE keys), and ``interval_s``:
    how often a non-terminal output prints its lines.
    """

    interval_s: float = setting(1.0, "seconds between lines when the output is not a terminal", flag="interval")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.interval_s > 0, f"interval_s: must be > 0, got {self.interval_s}")


class BoardView(Protocol):
    """What ``watch`` hands the board to: ``update`` while it runs, ``close`` once at the end."""

    def update(self, board: StreamBoard) -> None: ...

    def close(self, board: StreamBoard) -> None: ...


def watch(config: WatchConfig, stop_event: threading.Event | None, view: BoardView, *,
          board: StreamBoard | None = None) -> StreamBoard:
    """Fold the messages on ``config.sub`` into a board until stopped (or every stream ended, with ``until_eos``).

    ``view.update(board)`` is called at most every 0.1 s while messages
    arrive or time passes, ``view.close(board)`` once on the way out.
    The board's verdicts hold ``config.hold`` frames unless ``board`` is
    given. Returns the board with everything seen.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    board = board if board is not None else StreamBoard(hold=config.hold)
    with consumer.subscriber(config) as sub:
        logger.debug("watching %s (%s)", config.sub, config.stream or "every stream")
        shown_at = -_VIEW_EVERY_S
        try:
            while not (stop.is_set() or (config.until_eos and board.all_ended)):
                for msg in sub.receive(_VIEW_EVERY_S):
                    board.update(msg)
                if time.monotonic() - shown_at >= _VIEW_EVERY_S:
                    shown_at = time.monotonic()
                    view.update(board)
        finally:
            view.close(board)
    return board
