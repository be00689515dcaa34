"""The viewer's state and loop: every stream's scores and every process's health (``fetalhead watch``).

``StreamBoard`` is the pure state that tests drive with protocol messages:
``update(msg)`` folds one message in, ``rows()`` gives one dict per stream,
``processes()`` the heartbeat figures of each process and ``alerts()`` what
a person should notice (a worker that went silent). ``watch`` is the socket
shell: it folds what a ``net.Subscriber`` receives into the board and hands
the board to a ``BoardView``, which draws it (``tools.render``); nothing
here draws.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Protocol

from models.classes import class_name
from models.settings import check, setting
from stream import keys, net, protocol
from stream.keys import key_name_setting, keys_setting, server_key_setting
from stream.stats import GapCounter, LatencyWindow, RateCounter

logger = logging.getLogger(__name__)

# The most often a view is handed the board: a flood of messages must not redraw the table for each.
_VIEW_EVERY_S = 0.1


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
    ended: bool = False
    end_reason: str | None = None


@dataclasses.dataclass
class _Process:
    """The latest heartbeat of one process."""

    beat: protocol.Heartbeat
    seen_at: float


class StreamBoard:
    """State of a watcher: per-stream scores, rates, latency, drops; per-process heartbeats.

    ``clock`` gives unix seconds (messages' own times are unix seconds);
    every method takes an optional ``now`` so tests can feed exact times.
    Drops of a stream are the worker's own count (``Score.dropped``) plus
    ``lost``: seqs missing between consecutive scores that the worker's count
    does not explain (frames lost before the worker, or scores lost on the
    way here).
    """

    def __init__(self, *, rate_window_s: float = 2.0, latency_samples: int = 1000,
                 dead_after_s: float = protocol.DEAD_AFTER_S, events: int = 5,
                 clock: Callable[[], float] = time.time) -> None:
        if not dead_after_s > 0:
            raise ValueError(f"dead_after_s must be > 0, got {dead_after_s}")
        self.rate_window_s = rate_window_s
        self.latency_samples = latency_samples
        self.dead_after_s = dead_after_s
        self.clock = clock
        self.started_at = clock()
        self.streams: dict[str, _Stream] = {}
        self.procs: dict[str, _Process] = {}
        self.events: collections.deque[protocol.Status] = collections.deque(maxlen=events)
        self.messages = 0

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
        elif isinstance(msg, protocol.Heartbeat):
            self.procs[msg.stream] = _Process(msg, now)
        elif isinstance(msg, protocol.Status):
            self.events.append(msg)

    def _score(self, msg: protocol.Score, now: float) -> None:
        state = self._stream(msg.stream, now)
        previous = state.last
        restarted = previous is not None and msg.seq <= previous.seq
        skipped = state.gaps.add(msg.seq)
        if previous is None or restarted:
            state.fps_in.add(now, 1)
            if restarted and msg.dropped < previous.dropped:
                state.dropped_before += previous.dropped
        else:
            state.fps_in.add(now, msg.seq - previous.seq)
            explained = max(0, msg.dropped - previous.dropped)
            state.lost += max(0, skipped - explained)
        state.fps_out.add(now)
        state.latency.add(msg.latency * 1000.0)
        state.last, state.seen_at = msg, now
        state.scores += 1
        # Scores after an end of stream: the source started again.
        state.ended, state.end_reason = False, None

    @property
    def all_ended(self) -> bool:
        """True when at least one stream was seen and every stream seen has ended."""
        return bool(self.streams) and all(s.ended for s in self.streams.values())

    def rows(self, now: float | None = None) -> list[dict]:
        """One dict per stream, sorted by stream id.

        Keys: ``stream``, ``seq``, ``score``, ``decision`` (``Head``/``Not-Head``,
        None before a score), ``threshold``, ``model``, ``flags`` (tuple),
        ``scores`` (count), ``fps_in`` (frames the source produced per second,
        from the seq advance, scored or not), ``fps_out`` (scores per second),
        ``latency_p50_ms``, ``latency_p99_ms`` (capture to score; None before
        a score), ``dropped`` (worker), ``lost``, ``drops`` (their sum),
        ``restarts`` (times seq went back), ``age_s`` (since the stream's last
        message), ``ended``, ``end_reason``.
        """
        now = self.clock() if now is None else now
        rows = []
        for name in sorted(self.streams):
            s = self.streams[name]
            last = s.last
            dropped = s.dropped_before + (last.dropped if last else 0)
            rows.append({
                "stream": name,
                "seq": last.seq if last else None,
                "score": last.score if last else None,
                "decision": class_name(last.decision) if last else None,
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
        ``dead_after_s`` or longer), ``loading`` (still starting up, for
        ``uptime_s``), ``frames_in``, ``frames_out``,
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
                "silent_s": silent, "dead": silent >= self.dead_after_s,
                "loading": proc.beat.loading, "uptime_s": stats.get("uptime_s"),
                "frames_in": stats.get("frames_in"), "frames_out": stats.get("frames_out"),
                "dropped": stats.get("dropped"), "rejected": sum(rejected_by.values()),
                "rejected_by": rejected_by, "fps_in": stats.get("fps_in"), "fps_out": stats.get("fps_out"),
                "stats": dict(stats),
            })
        return out

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
class WatchConfig:
    """Settings of ``fetalhead watch`` (a ``[watch]`` TOML table).

    ``stream`` None shows every stream. ``interval_s`` is how often a
    non-terminal output prints its lines; ``hwm`` the receive queue in messages.
    ``keys`` makes it a CURVE client (see ``stream.keys``): key pair
    ``key_name`` (default ``client``), the worker's public key ``server_key``
    (default ``keys/worker.key``).
    """

    sub: str = setting(net.DEFAULT_SCORES, "scores address to connect to")
    stream: str | None = setting(None, "show only this stream", shown="every stream")
    until_eos: bool = setting(False, "exit when every stream seen has ended, instead of running until Ctrl-C")
    interval_s: float = setting(1.0, "seconds between lines when the output is not a terminal", flag="interval")
    hwm: int = setting(64, "receive queue in messages")
    keys: Path | None = keys_setting()
    key_name: str | None = key_name_setting("client")
    server_key: Path | None = server_key_setting("worker")

    def __post_init__(self) -> None:
        keys.check_options(self.keys, key_name=self.key_name, server_key=self.server_key)
        protocol.check_stream_id(self.stream)
        check(self.interval_s > 0, f"interval_s: must be > 0, got {self.interval_s}")
        check(self.hwm >= 1, f"hwm: must be >= 1, got {self.hwm}")


class BoardView(Protocol):
    """What ``watch`` hands the board to: ``update`` while it runs, ``close`` once at the end."""

    def update(self, board: StreamBoard) -> None: ...

    def close(self, board: StreamBoard) -> None: ...


def watch(config: WatchConfig, stop_event: threading.Event | None, view: BoardView, *,
          board: StreamBoard | None = None) -> StreamBoard:
    """Fold the messages on ``config.sub`` into a board until stopped (or every stream ended, with ``until_eos``).

    ``view.update(board)`` is called at most every 0.1 s while messages
    arrive or time passes, ``view.close(board)`` once on the way out.
    Returns the board with everything seen.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    board = board if board is not None else StreamBoard()
    curve = keys.client_keys(config.keys, config.key_name or "client", "worker", config.server_key)
    with net.Subscriber(config.sub, config.stream, hwm=config.hwm, curve=curve) as sub:
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
