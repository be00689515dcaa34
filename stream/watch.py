"""``fetalhead watch``: a live table of every stream's scores and the worker's health.

``StreamBoard`` is the pure state that tests drive with protocol messages:
``update(msg)`` folds one message in, ``rows()`` gives one dict per stream,
``processes()`` the heartbeat figures of each process and ``warnings()`` what
a person should notice (a worker that went silent). ``render`` turns a board
into a rich table; ``watch`` is the socket shell around both.

``Subscription`` is the consumer side of the scores socket, shared with
``fetalhead record``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import zmq
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from models.config import check, load
from stream import keys, net, protocol
from stream.stats import GapCounter, LatencyWindow, RateCounter
from tools.cli import parser as make_parser, run

logger = logging.getLogger(__name__)

LABELS = ("Not-Head", "Head")
_BAR_WIDTH = 6
_DEAD_AFTER_S = protocol.HEARTBEAT_INTERVAL_S * protocol.HEARTBEAT_MISSES_DEAD
_WARN_EVERY_S = 5.0


def decision_label(decision: bool) -> str:
    """``Head`` or ``Not-Head``: the class names the bundle uses."""
    return LABELS[bool(decision)]


def check_stream_id(stream: str | None) -> None:
    """ConfigError unless ``stream`` is None or a valid data stream id."""
    if stream is None:
        return
    try:
        protocol.topic(stream)
    except protocol.ProtocolError as exc:
        check(False, f"stream: {exc}")
    check(not protocol.is_process_id(stream), f"stream: {stream!r} is a process id; data streams never start with '_'")


class Subscription:
    """A SUB socket on a scores address that hands out decoded messages.

    ``stream`` None takes every stream; otherwise that stream plus every
    process-level message (heartbeats, process status). Messages that do not
    decode are counted in ``rejected`` and logged (a warning per class every
    few seconds). ZeroMQ does not reconnect by itself after refusing an
    oversized message: that is logged and the socket reconnects at once; and
    after ``silence_s`` without any message (heartbeats make silence
    abnormal) it disconnects and connects again too. ``curve`` makes it a
    CURVE client (``stream.keys.client_keys``).
    """

    def __init__(self, addr: str, stream: str | None = None, *, hwm: int = net.DEFAULT_HWM,
                 max_size: int = protocol.DEFAULT_MAX_SIZE, silence_s: float = _DEAD_AFTER_S,
                 clock: Callable[[], float] = time.monotonic, curve: keys.ClientKeys | None = None) -> None:
        self.addr = addr
        self.max_size = max_size
        self.silence_s = silence_s
        self.clock = clock
        self.rejected = 0
        self.reconnects = 0
        subscribe = None if stream is None else [protocol.topic(stream), b"_"]
        self.sock = net.socket(zmq.SUB, connect=addr, hwm=hwm, max_size=max_size, subscribe=subscribe, curve=curve)
        self.connections = net.ConnectionWatch(self.sock)
        self._heard_at = clock()
        self._warned_at: dict[str, float] = {}

    def receive(self, timeout_s: float, limit: int = 1000) -> list[protocol.Message]:
        """What arrives within ``timeout_s`` seconds plus what is queued behind it, up to ``limit`` messages.

        The limit keeps a flood from starving the caller's display and stop checks.
        """
        messages: list[protocol.Message] = []
        data = net.recv(self.sock, timeout_s)
        now = self.clock()
        if data is not None:
            self._heard_at = now
        elif now - self._heard_at >= self.silence_s:
            self._reconnect()
        for endpoint, reason in self.connections.poll():
            self.rejected += 1
            if reason == "auth_failed":
                self._warn(reason, f"scores from {endpoint}: the CURVE handshake failed (is our key in the worker's "
                                   f"allow list, and --server-key the worker's key?)")
            else:
                self._warn(reason, f"scores from {endpoint}: a message over {self.max_size} bytes was refused "
                                   f"unread and the connection closed; reconnected")
                self._reconnect()
        taken = 0
        while data is not None:
            taken += 1
            try:
                messages.append(protocol.decode(data, max_size=self.max_size))
            except protocol.ProtocolError as exc:
                self.rejected += 1
                self._warn(exc.kind, f"rejected message ({exc.kind}): {exc}")
            if taken >= limit:
                break
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                data = None
        return messages

    def _warn(self, key: str, message: str) -> None:
        """A warning per ``key`` every few seconds: a flood of bad messages must not flood the log."""
        now = self.clock()
        if now - self._warned_at.get(key, -math.inf) >= _WARN_EVERY_S:
            self._warned_at[key] = now
            logger.warning("%s", message)

    def _reconnect(self) -> None:
        logger.debug("nothing on %s for %.1f s: reconnecting", self.addr, self.silence_s)
        try:
            self.sock.disconnect(self.addr)
        except zmq.ZMQError:
            # Already disconnected; connecting again is all that is needed.
            pass
        self.sock.connect(self.addr)
        self.reconnects += 1
        self._heard_at = self.clock()

    def close(self) -> None:
        self.connections.close()
        self.sock.close(linger=0)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
                 dead_after_s: float = _DEAD_AFTER_S, events: int = 5,
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
                "decision": decision_label(last.decision) if last else None,
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


# --- rendering ------------------------------------------------------------------------


def score_bar(score: float | None, width: int = _BAR_WIDTH) -> str:
    """``score`` in [0, 1] as a bar of block characters ``width`` wide."""
    if score is None:
        return " " * width
    filled = round(max(0.0, min(1.0, score)) * width)
    return "█" * filled + "░" * (width - filled)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _age(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.0f} min"


def _drops(row: dict) -> str:
    return f"{row['drops']}" + (f" ({row['lost']} lost)" if row["lost"] else "")


def render(board: StreamBoard, now: float | None = None) -> RenderableType:
    """The board as a rich table, one row per stream, then process health and recent events."""
    now = board.clock() if now is None else now
    table = Table(title="fetalhead streams", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
    for name, justify in (("stream", "left"), ("seq", "right"), ("score", "left"), ("decision", "left"),
                          ("fps in/out", "right"), ("ms p50/p99", "right"), ("drops", "right"),
                          ("flags", "left"), ("last", "right")):
        table.add_column(name, justify=justify)
    for row in board.rows(now):
        if row["decision"] is None:
            decision: Text | str = ""
        elif row["decision"] == LABELS[1]:
            decision = Text(row["decision"], style="bold black on green")
        else:
            decision = Text(row["decision"], style="dim")
        score = "" if row["score"] is None else f"{row['score']:.2f} {score_bar(row['score'])}"
        last = "ended" if row["ended"] else _age(row["age_s"])
        table.add_row(row["stream"], "-" if row["seq"] is None else str(row["seq"]), score, decision,
                      f"{row['fps_in']:.1f}/{row['fps_out']:.1f}",
                      f"{_ms(row['latency_p50_ms'])}/{_ms(row['latency_p99_ms'])}", _drops(row),
                      ",".join(row["flags"]), last)
    parts: list[RenderableType] = [table]
    for proc in board.processes(now):
        parts.append(Text(process_line(proc), style="red" if proc["dead"] else ""))
    for line in board.warnings(now):
        parts.append(Text(f"warning: {line}", style="bold red"))
    for event in board.events:
        style = {"error": "red", "warning": "yellow"}.get(event.level, "dim")
        parts.append(Text(f"{event.stream} {event.level}: {event.message}", style=style))
    return Group(*parts)


def process_line(proc: dict) -> str:
    """One line of a process's heartbeat figures; figures it does not report are left out."""
    if proc["loading"] and not proc["dead"]:
        since = "" if proc["uptime_s"] is None else f" ({proc['uptime_s']:.0f} s)"
        what = "loading its model" if proc["role"] == "worker" else "starting"
        return f"{proc['role']} pid {proc['pid']}: {what}{since}"
    parts = [f"{name} {proc[key]}" for name, key in (("in", "frames_in"), ("out", "frames_out"),
                                                       ("dropped", "dropped")) if proc[key] is not None]
    if proc["rejected_by"] or proc["role"] == "worker":
        detail = ", ".join(f"{k} {v}" for k, v in sorted(proc["rejected_by"].items()))
        parts.append(f"rejected {proc['rejected']}" + (f" ({detail})" if detail else ""))
    rates = [f"{proc[key]:.1f} fps {name}" for name, key in (("in", "fps_in"), ("out", "fps_out"))
             if proc[key] is not None]
    if proc["dead"]:
        rates.append(f"silent {proc['silent_s']:.0f} s")
    return f"{proc['role']} pid {proc['pid']}: " + ", ".join([" ".join(parts)] + rates if parts else rates)


def row_line(row: dict) -> str:
    """One plain-text line of a stream row, for logs and non-terminal output."""
    score = "-" if row["score"] is None else f"{row['score']:.2f}"
    state = f" ended ({row['end_reason']})" if row["ended"] else ""
    flags = f" [{','.join(row['flags'])}]" if row["flags"] else ""
    return (f"{row['stream']} seq {row['seq'] if row['seq'] is not None else '-'} score {score} "
            f"{row['decision'] or '-'}{flags} in/out {row['fps_in']:.1f}/{row['fps_out']:.1f} fps "
            f"p50/p99 {_ms(row['latency_p50_ms'])}/{_ms(row['latency_p99_ms'])} ms drops {_drops(row)}{state}")


# --- the command ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WatchConfig:
    """Settings of ``fetalhead watch`` (a ``[watch]`` TOML table).

    ``stream`` None shows every stream. ``interval_s`` is how often a
    non-terminal output prints its lines; ``hwm`` the receive queue in messages.
    ``keys`` makes it a CURVE client (see ``stream.keys``): key pair
    ``key_name`` (default ``client``), the worker's public key ``server_key``
    (default ``keys/worker.key``).
    """

    sub: str = net.DEFAULT_SCORES
    stream: str | None = None
    until_eos: bool = False
    interval_s: float = 1.0
    hwm: int = 64
    keys: Path | None = None
    key_name: str | None = None
    server_key: Path | None = None

    def __post_init__(self) -> None:
        keys.check_options(self.keys, key_name=self.key_name, server_key=self.server_key)
        check_stream_id(self.stream)
        check(self.interval_s > 0, f"interval_s: must be > 0, got {self.interval_s}")
        check(self.hwm >= 1, f"hwm: must be >= 1, got {self.hwm}")


def watch(config: WatchConfig = WatchConfig(), stop_event: threading.Event | None = None, *,
          console: Console | None = None, board: StreamBoard | None = None) -> StreamBoard:
    """Show the scores on ``config.sub`` until stopped (or every stream ended, with ``until_eos``).

    On a terminal the table updates in place; elsewhere (a pipe, a log file)
    a line per changed stream is printed every ``interval_s`` and the full
    table once at the end. Returns the board with everything seen.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    if console is None:
        console = Console()
        if not console.is_terminal and "COLUMNS" not in os.environ:
            # rich assumes 80 columns without a terminal, too narrow for the table in a log.
            console = Console(width=160)
    board = board if board is not None else StreamBoard()

    def done() -> bool:
        return stop.is_set() or (config.until_eos and board.all_ended)

    curve = keys.client_keys(config.keys, config.key_name or "client", "worker", config.server_key)
    with Subscription(config.sub, config.stream, hwm=config.hwm, curve=curve) as sub:
        logger.debug("watching %s (%s)", config.sub, config.stream or "every stream")
        if console.is_terminal:
            with Live(render(board), console=console, auto_refresh=False, transient=False) as live:
                while not done():
                    for msg in sub.receive(0.1):
                        board.update(msg)
                    live.update(render(board), refresh=True)
                live.update(render(board), refresh=True)
        else:
            printed: dict[str, int] = {}
            alerted: set[str] = set()
            next_print = time.monotonic() + config.interval_s
            while not done():
                for msg in sub.receive(0.1):
                    board.update(msg)
                if time.monotonic() >= next_print:
                    next_print += config.interval_s
                    for row in board.rows():
                        if printed.get(row["stream"]) != row["scores"]:
                            printed[row["stream"]] = row["scores"]
                            console.print(row_line(row), highlight=False, soft_wrap=True)
                    # A log gets each alert once, when it starts, not every interval.
                    alerts = board.alerts()
                    for key in alerts.keys() - alerted:
                        console.print(f"warning: {alerts[key]}", highlight=False, soft_wrap=True)
                    alerted = set(alerts)
            console.print(render(board))
    return board


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("watch", "Live view of the scores of every stream and of the worker's health.")
    p.add_argument("--sub", help=f"scores address to connect to (default {net.DEFAULT_SCORES})")
    p.add_argument("--stream", help="show only this stream (default: every stream)")
    p.add_argument("--until-eos", action="store_true", default=None,
                   help="exit when every stream seen has ended (default: run until Ctrl-C)")
    p.add_argument("--interval", type=float, dest="interval_s",
                   help="seconds between lines when the output is not a terminal (default 1)")
    keys.add_flags(p, name="client", client="worker")
    p.add_argument("--config", help="TOML file with a [watch] table")
    args = p.parse_args(argv)
    overrides = {"sub": args.sub, "stream": args.stream, "until_eos": args.until_eos, "interval_s": args.interval_s,
                 "keys": args.keys, "key_name": args.key_name, "server_key": args.server_key}

    def work() -> int:
        config = load(WatchConfig, "watch", args.config, overrides)
        with net.process_scope() as stop:
            watch(config, stop)
        return 0

    return run(work, verbose=args.verbose)
