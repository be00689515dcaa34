"""The worker: score every frame of the subscribed streams with a model bundle.

``Scorer`` is the pure core that tests drive without sockets: frames in,
Score messages out. Each frame goes through the one shared preprocessing and
the backbone once, batched across all frames given together; its features
join its stream's ``RollingWindow`` and the temporal head scores the window
ending at it. The score is the head's last position, so a stream's scores
equal ``Runtime.scan_scores`` of the same frames offline.

``serve`` is the socket shell around it. It binds its scores socket first
and, while the model loads and warms up (seconds on a CPU), publishes
heartbeats marked ``loading``, so a watcher knows the worker is starting
rather than missing; a stop signal abandons the load at once. Live mode
(SUB) keeps only the newest frame of each stream and scores the streams that
have waited longest, at most ``max_batch`` frames per backbone call, so
latency and memory stay bounded however fast the sources or how many the
streams; lossless mode (PULL) scores every frame once, in order, batching
whatever backlog is waiting.

Bad input never stops the worker: a message that does not decode, a frame
the model cannot take, or one that ZeroMQ refused for its size is dropped,
logged in one line (rate-limited per class, ``net.Throttled``) and counted
in the heartbeat as ``rejected.<class>``; so is anything else that fails on
one message or batch (``internal``). The frames socket is a ``net.Inbox``,
which reconnects what ZeroMQ closed. A stream whose frame shape changes is
scored on (the preprocessing resizes every frame) and gets one ``warning``
Status. Per-stream state is bounded: at most ``max_streams`` streams (frames
of further new ones are rejected as ``too_many_streams``), each forgotten
``stream_idle_s`` after its last frame, and the heartbeat carries per-stream
figures for a few streams only.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import zmq

from models.episodes import EpisodeEvent, EpisodeTracker
from models.errors import ConfigError
from models.settings import check, setting
from models.verdict import DEFAULT_HOLD, check_hold
from models.windows import RollingWindow
from stream import keys, net, protocol
from stream.hub import parse_shard, shard_of
from stream.keys import allow_setting, key_name_setting, keys_setting, server_key_setting
from stream.saliency import SaliencyThread, parse_mode

if TYPE_CHECKING:
    from models.bundle import Bundle
    from models.runtime import Runtime

logger = logging.getLogger(__name__)

WORKER_ID = protocol.process_id("worker")
# Only the worker's own scores socket waits on close: the last scores and the
# end of stream must leave before a worker that exits after them.
_SCORES_LINGER_MS = 500
# Bounds one live drain, so a flood cannot starve heartbeats and stop checks.
_MAX_DRAIN = 10_000
_POLL_S = 0.05
# Per-stream figures go into a heartbeat for this many streams at most (the most
# recently seen): a decoder takes maps of 1,024 keys, a worker may hold more streams.
_STATS_STREAMS = 32
# Names of forgotten streams in one log line, at most.
_NAMES_LOGGED = 5

# Rejection classes of the worker's own, besides protocol.KINDS.
UNEXPECTED_TYPE = "unexpected_type"  # a valid message that has no business on the frames socket
BAD_IMAGE = "bad_image"  # a valid frame the model cannot take
TOO_MANY_STREAMS = "too_many_streams"  # a frame of a new stream while max_streams streams are held
SPOOFED = "spoofed"  # a heartbeat or status in a worker's name, arriving on the frames socket
INTERNAL = "internal"  # anything else that failed on one message or batch: a bug, counted and survived
NOT_OURS = "not_ours"  # lossless: a frame of a stream outside --streams/--shard, PUSHed here and so lost


def rejection_class(exc: Exception) -> str:
    """The short class of a rejected message, as counted in ``rejected.<class>``.

    A ProtocolError's own ``kind``; a ValueError from preprocessing (a frame
    the model cannot take) is ``bad_image``; anything else is ``internal``.
    """
    if isinstance(exc, protocol.ProtocolError):
        return exc.kind
    if isinstance(exc, ValueError):
        return BAD_IMAGE
    return INTERNAL


def _one_line(exc: BaseException, *, with_type: bool) -> str:
    """The first line of ``exc``'s text; naming its type where the type is news (an internal error)."""
    lines = str(exc).strip().splitlines()
    text = lines[0][:200] if lines else ""
    if not with_type:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _in_a_workers_name(msg: protocol.Heartbeat | protocol.Status) -> bool:
    """A process-level message that claims to come from a worker: none can arrive upstream of one."""
    if msg.stream == WORKER_ID or msg.stream.startswith(WORKER_ID + "."):
        return True
    return isinstance(msg, protocol.Heartbeat) and msg.role == "worker"


@dataclasses.dataclass
class _StreamState:
    window: RollingWindow
    seen_at: float  # the scorer's clock at its last frame
    last_seq: int | None = None  # seq of its last frame in the window
    seen_seq: int | None = None  # seq of its last frame received
    frames_in: int = 0
    frames_out: int = 0
    missed: int = 0  # frames never scored since its first one here: dropped, rejected or lost
    shape: tuple[int, ...] | None = None
    shape_changes: int = 0


class Scorer:
    """Per-stream rolling windows over one Runtime, with the worker's counters.

    runtime: a ``models.runtime.Runtime``; threshold in [0, 1] gives each
    score's decision; model_id names the model in every Score. ``events``
    collects Status messages for the caller to publish (and clear).
    Rejections are logged once per class every ``warn_interval_s`` seconds.
    At most ``max_streams`` streams are held (``admit``); ``expire`` forgets
    those without a frame for ``idle_s`` seconds of ``clock``.
    """

    def __init__(self, runtime: Runtime, threshold: float, model_id: str, *, latency_samples: int = 4096,
                 warn_interval_s: float = 5.0, max_streams: int = 256, idle_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        if not idle_s > 0:
            raise ValueError(f"idle_s must be > 0, got {idle_s}")
        self.runtime = runtime
        self.threshold = float(threshold)
        self.model_id = model_id
        self.window = runtime.config.window
        self.max_streams = max_streams
        self.idle_s = idle_s
        self.clock = clock
        # Least recently seen first: expiry looks at the front, heartbeats at the back.
        self.streams: collections.OrderedDict[str, _StreamState] = collections.OrderedDict()
        self.rejected: collections.Counter[str] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=latency_samples)
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.lost = 0
        self.expired = 0
        self.shape_changes = 0
        self.events: list[protocol.Status] = []
        # The feature window of each score the last ``score`` call returned, in order (for saliency).
        self.scored_windows: list[np.ndarray] = []
        # (stream, seq, count) of the frames missed during the current ``score`` call: a score's
        # ``dropped`` leaves out those after it in the same batch.
        self._missed_now: list[tuple[str, int, int]] = []
        self._warn = net.Throttled(logger, warn_interval_s)

    def _new_state(self, stream: str) -> _StreamState:
        state = self.streams[stream] = _StreamState(RollingWindow(self.window, self.runtime.feature_dim), self.clock())
        return state

    def admit(self, frame: protocol.Frame) -> bool:
        """Take note of ``frame`` as received; False (counted, logged) when its stream is new and
        ``max_streams`` streams are held already.

        Frames missing from the seqs received of a stream count as lost.
        Noting the same frame twice changes nothing.
        """
        state = self.streams.get(frame.stream)
        if state is None:
            if len(self.streams) >= self.max_streams:
                self.rejected[TOO_MANY_STREAMS] += 1
                self._warn.warning(TOO_MANY_STREAMS, (
                    f"rejected frame {frame.stream}#{frame.seq} ({TOO_MANY_STREAMS}): a new stream, and "
                    f"{self.max_streams} streams are held (max_streams); a stream is forgotten at its end of "
                    f"stream or {self.idle_s:g} s after its last frame (stream_idle_s)"))
                return False
            state = self._new_state(frame.stream)
        else:
            state.seen_at = self.clock()
            self.streams.move_to_end(frame.stream)
        if state.seen_seq is not None and frame.seq > state.seen_seq + 1:
            lost = frame.seq - state.seen_seq - 1
            state.missed += lost
            self.lost += lost
            self._missed_now.append((frame.stream, frame.seq, lost))
        state.seen_seq = frame.seq
        return True

    def reject(self, exc: Exception, what: str = "message", *, key: str | None = None, count: int = 1) -> str:
        """Count ``count`` rejected inputs and warn (rate-limited); returns their class.

        ``key`` overrides the class ``rejection_class`` gives ``exc``.
        """
        key = key or rejection_class(exc)
        self.rejected[key] += count
        text = _one_line(exc, with_type=key == INTERNAL)
        self._warn.warning(key, f"rejected {what} ({key}): {text}")
        return key

    def reject_connection(self, key: str, message: str) -> None:
        """Count a refused connection (``rejected.<key>``) and warn (rate-limited)."""
        self.rejected[key] += 1
        self._warn.warning(key, message)

    def drop(self, stream: str, count: int = 1) -> None:
        """Count ``count`` frames of ``stream`` that the caller took (``admit``) and then skipped unscored."""
        state = self.streams.get(stream) or self._new_state(stream)
        state.frames_in += count
        state.missed += count
        self.frames_in += count
        self.dropped += count

    def end(self, stream: str) -> None:
        """Forget ``stream`` (its end of stream arrived): window and per-stream counters."""
        self.streams.pop(stream, None)

    def expire(self, now: float | None = None) -> list[str]:
        """Forget the streams without a frame for ``idle_s`` (a capture killed before its end of stream).

        Each gets an ``info`` Status in ``events``; returns their ids.
        """
        now = self.clock() if now is None else now
        gone = []
        while self.streams:
            stream, state = next(iter(self.streams.items()))
            if now - state.seen_at < self.idle_s:
                break
            del self.streams[stream]
            gone.append(stream)
        if gone:
            self.expired += len(gone)
            t = time.time()
            for stream in gone:
                self.events.append(protocol.Status(stream, "info", (
                    f"stream {stream}: no frame for {self.idle_s:g} s, forgotten (its window and counters); "
                    f"a new frame starts it afresh"), t))
            more = f" and {len(gone) - _NAMES_LOGGED} more" if len(gone) > _NAMES_LOGGED else ""
            logger.info("forgot %d idle stream(s), no frame for %g s: %s%s", len(gone), self.idle_s,
                        ", ".join(gone[:_NAMES_LOGGED]), more)
        return gone

    def _unscored(self, frame: protocol.Frame, exc: Exception, key: str | None = None) -> None:
        self.streams[frame.stream].missed += 1
        self._missed_now.append((frame.stream, frame.seq, 1))
        self.reject(exc, f"frame {frame.stream}#{frame.seq}", key=key)

    def _rows(self, fn: Callable[[list], Any], items: list, frames: list[protocol.Frame]) -> list:
        """``fn(items)`` as a list of rows; if that call fails, ``fn`` on each item alone, so that only
        a frame whose own call fails is lost (rejected, its row None) and not its whole batch."""
        try:
            return list(fn(items))
        except Exception as exc:  # the model's own failure on some input: not the other frames' fault
            if len(items) == 1:
                self._unscored(frames[0], exc, INTERNAL)
                return [None]
        rows = []
        for item, frame in zip(items, frames):
            try:
                rows.append(fn([item])[0])
            except Exception as exc:
                self._unscored(frame, exc, INTERNAL)
                rows.append(None)
        return rows

    def score(self, frames: Sequence[protocol.Frame], t_received: float | Sequence[float]) -> list[protocol.Score]:
        """Scores of ``frames``, in their order; rejected frames are counted and left out.

        t_received: unix seconds when the frames arrived, one for all or one
        per frame. Frames of one stream must come in the order they are to
        be scored; a seq at or below the stream's previous one (the capture
        restarted) starts the stream's window afresh. The first score of a
        window begun at a seq above 0 (a worker that started or restarted
        while the stream ran) is flagged ``gap``: what came before is
        unknown here.
        """
        received = [float(t_received)] * len(frames) if np.isscalar(t_received) else list(t_received)
        if len(received) != len(frames):
            raise ValueError(f"t_received has {len(received)} times for {len(frames)} frames")
        accepted: list[tuple[protocol.Frame, float]] = []
        images = []
        self._missed_now = []
        for frame, t in zip(frames, received):
            if not self.admit(frame):
                continue
            state = self.streams[frame.stream]
            state.frames_in += 1
            self.frames_in += 1
            try:
                images.append(self.runtime.preprocess(frame.image()))
            except Exception as exc:  # ProtocolError and ValueError: the frame's fault; anything else: internal
                self._unscored(frame, exc)
                continue
            self._check_shape(frame, state)
            accepted.append((frame, t))
        if not accepted:
            return []
        features = self._rows(lambda batch: self.runtime.features(np.stack(batch)), images,
                              [frame for frame, _ in accepted])

        kept: list[tuple[protocol.Frame, float]] = []
        windows: list[np.ndarray] = []
        flags: list[tuple[str, ...]] = []
        for (frame, t), row in zip(accepted, features):
            if row is None:
                continue
            state = self.streams[frame.stream]
            restarted = state.last_seq is not None and frame.seq <= state.last_seq
            if restarted:
                logger.info("stream %s: seq went back from %d to %d, restarting its window",
                            frame.stream, state.last_seq, frame.seq)
                state.window.reset()
            begun_late = (state.last_seq is None or restarted) and frame.seq > 0
            state.window.push(row, frame.seq)
            state.last_seq = frame.seq
            # A copy: the next push of the same stream in this batch shifts the buffer.
            windows.append(state.window.view().copy())
            flags.append(tuple(name for name, on in ((protocol.FLAG_WARMUP, state.window.warming_up),
                                                     (protocol.FLAG_GAP, state.window.has_gap or begun_late))
                               if on))
            kept.append((frame, t))
        if not kept:
            return []
        values = self._rows(self.runtime.score_newest, windows, [frame for frame, _ in kept])

        t_scored = time.time()
        out = []
        scored_windows = []
        for (frame, t), value, window, frame_flags in zip(kept, values, windows, flags):
            if value is None:
                continue
            state = self.streams[frame.stream]
            value = float(np.clip(value, 0.0, 1.0))
            latency = t_scored - frame.t_capture
            try:
                score = protocol.Score(
                    stream=frame.stream, seq=frame.seq, score=value, decision=value >= self.threshold,
                    threshold=self.threshold, model=self.model_id, t_capture=frame.t_capture, t_received=t,
                    t_scored=t_scored, latency=latency, flags=frame_flags, window=len(window),
                    dropped=state.missed - sum(count for stream, seq, count in self._missed_now
                                               if stream == frame.stream and seq > frame.seq))
            except protocol.ProtocolError as exc:  # a model that gave NaN
                self._unscored(frame, exc, INTERNAL)
                continue
            state.frames_out += 1
            self.latencies.append(latency)
            out.append(score)
            scored_windows.append(window)
        self.frames_out += len(out)
        self.scored_windows = scored_windows
        return out

    def _check_shape(self, frame: protocol.Frame, state: _StreamState) -> None:
        """Count a change of the stream's frame shape; the first of each stream becomes a warning Status.

        Scoring goes on: preprocessing crops and resizes every frame to the
        model's input, so a probe that changes depth or zoom keeps working;
        but the window then mixes both sizes, which a person should know.
        """
        previous, state.shape = state.shape, frame.shape
        if previous is None or previous == frame.shape:
            return
        state.shape_changes += 1
        self.shape_changes += 1
        if state.shape_changes == 1:
            message = (f"stream {frame.stream}: frame shape changed from {previous} to {frame.shape} at seq "
                       f"{frame.seq}; still scored (each frame is resized to the model's input), reported once")
            logger.warning("%s", message)
            self.events.append(protocol.Status(frame.stream, "warning", message, time.time()))

    def stats(self) -> dict[str, int | float]:
        """Counters for a heartbeat: totals, per rejection class, and per stream for the
        ``_STATS_STREAMS`` most recently seen; latency in seconds."""
        stats: dict[str, int | float] = {"frames_in": self.frames_in, "frames_out": self.frames_out,
                                         "dropped": self.dropped, "lost": self.lost, "streams": len(self.streams),
                                         "streams_expired": self.expired, "shape_changes": self.shape_changes}
        for name, state in itertools.islice(reversed(self.streams.items()), _STATS_STREAMS):
            stats[f"frames_out.{name}"] = state.frames_out
            stats[f"dropped.{name}"] = state.missed
        for key, count in self.rejected.items():
            stats[f"rejected.{key}"] = count
        if self.latencies:
            p50, p99 = np.percentile(np.fromiter(self.latencies, float), [50, 99])
            stats["latency_p50"], stats["latency_p99"] = float(p50), float(p99)
        return stats


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Settings of ``fetalhead worker`` (a ``[worker]`` TOML table).

    ``sub`` lists the frame addresses to connect to (several captures in
    live mode). ``exit_after_eos`` 0 runs until stopped. ``silence_s``: with
    no message at all for this long, reconnect the frame socket (a fallback:
    a connection ZeroMQ closed after refusing an oversized message is
    reconnected as soon as that is seen). A flood of bad messages is logged
    once per rejection class every ``warn_interval_s`` (all are counted).
    At most ``max_streams`` streams are scored at once; a stream is
    forgotten ``stream_idle_s`` after its last frame.
    ``keys`` turns CURVE on for both sockets (see ``stream.keys``): the
    worker's key pair ``key_name`` (default ``worker``), clients allowed
    from ``allow``, the capture's public key ``server_key`` (default
    ``keys/capture.key``).
    ``streams`` and ``shard`` make it one of several workers (stream.hub,
    docs/protocol.md "Several workers"): it scores only the streams it
    ``owns``, and its heartbeats carry ``process_id`` (``_worker.NAME``,
    NAME by default the shard as ``0of2``) so a consumer tells the workers apart.
    ``saliency`` (``stream.saliency.parse_mode``) publishes LayerCAM heat
    maps of chosen frames, computed in a process of their own at the lowest CPU priority.
    """

    sub: tuple[str, ...] = setting((net.DEFAULT_PUB,), "frame addresses to connect to (several captures in live mode)")
    pub: str = setting(net.DEFAULT_SCORES, "scores address to bind")
    mode: Literal["live", "lossless"] = setting(
        "live", "live: SUB, newest frame per stream; lossless: PULL, every frame in order")
    max_batch: int = setting(16, "most frames scored in one batch", flag="batch")
    heartbeat_s: float = setting(protocol.HEARTBEAT_INTERVAL_S, "seconds between heartbeats", flag="heartbeat")
    max_message_size: int = setting(protocol.DEFAULT_MAX_SIZE, "bytes; larger messages are refused",
                                    shown="64 MiB")
    max_streams: int = setting(256, "most streams scored at once; frames of further new streams are rejected")
    stream_idle_s: float = setting(60.0, "seconds without a frame after which a stream is forgotten",
                                   flag="stream-idle")
    forward_frames: bool = setting(False, "also publish each frame on the scores socket, before its score")
    saliency: str = setting("off", "publish LayerCAM heat maps (saliency messages) of: off, best (each head "
                                   "episode's best frame) or 'every N' (every N-th frame); never delays scores")
    allow_remote: bool = setting(False, "allow binding a non-loopback scores address (encrypted only with --keys)")
    exit_after_eos: int = setting(0, "exit after this many ends of stream; 0 runs until stopped")
    silence_s: float = setting(protocol.DEAD_AFTER_S, "seconds without any message before the frame socket "
                                                      "reconnects", flag="silence")
    warn_interval_s: float = setting(5.0, "seconds between warnings of one rejection class (all are counted)",
                                     flag="warn-interval")
    streams: tuple[str, ...] = setting((), "score only these stream ids (live: SUB topics, other streams never "
                                           "arrive)", shown="all")
    hold: int = setting(DEFAULT_HOLD, "frames at or above (below) the threshold before a head episode starts "
                                      "(ends), the live verdict's hysteresis (docs/verdict.md)")
    shard: str = setting("", "I/N: score only the streams whose CRC-32 of the UTF-8 id mod N is I", shown="all")
    name: str | None = setting(None, "this worker's name in its heartbeats (_worker.NAME)",
                               shown="the shard, e.g. 0of2; none without one")
    keys: Path | None = keys_setting()
    key_name: str | None = key_name_setting("worker")
    allow: Path | None = allow_setting()
    server_key: Path | None = server_key_setting("capture")

    @functools.cached_property
    def _shard(self) -> tuple[int, int] | None:
        return parse_shard(self.shard)

    @property
    def process_id(self) -> str:
        """The stream id of this worker's heartbeats: ``_worker``, or ``_worker.NAME``."""
        name = self.name
        if name is None and self._shard is not None:
            name = "{}of{}".format(*self._shard)
        return WORKER_ID if name is None else protocol.process_id("worker", name)

    def owns(self, stream: str) -> bool:
        """Whether data stream ``stream`` is in this worker's subset (``streams`` and ``shard``)."""
        if self.streams and stream not in self.streams:
            return False
        return self._shard is None or shard_of(stream, self._shard[1]) == self._shard[0]

    def __post_init__(self) -> None:
        keys.check_options(self.keys, key_name=self.key_name, allow=self.allow, server_key=self.server_key)
        check_hold(self.hold)
        for stream in self.streams:
            try:
                protocol.topic(stream)
            except protocol.ProtocolError as exc:
                raise ConfigError(f"streams: {exc}") from None
            check(not protocol.is_process_id(stream), f"streams: {stream!r} is a process id, not a data stream")
        parse_shard(self.shard)
        try:
            self.process_id
        except protocol.ProtocolError as exc:
            raise ConfigError(f"name: {exc}") from None
        check(len(self.sub) >= 1, "sub: needs at least one address")
        check(self.max_batch >= 1, f"max_batch: must be >= 1, got {self.max_batch}")
        check(self.heartbeat_s > 0, f"heartbeat_s: must be > 0, got {self.heartbeat_s}")
        check(self.max_message_size >= 1024, f"max_message_size: must be >= 1024 bytes, got {self.max_message_size}")
        check(self.max_streams >= 1, f"max_streams: must be >= 1, got {self.max_streams}")
        check(self.stream_idle_s > 0, f"stream_idle_s: must be > 0, got {self.stream_idle_s}")
        check(self.exit_after_eos >= 0, f"exit_after_eos: must be >= 0, got {self.exit_after_eos}")
        check(self.silence_s > 0, f"silence_s: must be > 0, got {self.silence_s}")
        check(self.warn_interval_s >= 0, f"warn_interval_s: must be >= 0, got {self.warn_interval_s}")
        try:
            parse_mode(self.saliency)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    """What one ``serve`` run did."""

    frames_in: int
    frames_out: int
    dropped: int
    rejected: dict[str, int]
    ends: int
    elapsed_s: float


@dataclasses.dataclass
class _Pending:
    frame: protocol.Frame
    raw: zmq.Frame
    t_received: float


class _Loop:
    """One worker's receive -> score -> publish loop, from a frames ``net.Inbox`` to the scores socket.

    Whatever fails on one message, batch or heartbeat is counted
    (``rejected.internal``), logged and left behind: the loop goes on.
    """

    def __init__(self, scorer: Scorer, config: WorkerConfig, out: zmq.Socket, stop: threading.Event,
                 max_frames: int | None, saliency: SaliencyThread | None = None) -> None:
        self.scorer = scorer
        self.saliency = saliency
        self.config = config
        self.out = out
        self.stop = stop
        self.max_frames = max_frames
        self.live = config.mode == "live"
        self.other_streams = 0  # messages of streams outside this worker's subset, skipped (lossless frames: rejected)
        self.ends = 0
        self.backlog = 0
        # Live: the newest unscored frame of each stream, streams in the order they began to wait.
        self.waiting: dict[str, _Pending] = {}
        # Head episodes of each scored stream, by the verdict's hysteresis, forgotten with the stream.
        self.episodes: dict[str, EpisodeTracker] = {}
        self._started = time.monotonic()
        self._beat_at = self._started
        self._beat_counts = (0, 0)

    def done(self) -> bool:
        return (self.stop.is_set()
                or 0 < self.config.exit_after_eos <= self.ends
                or (self.max_frames is not None and self.scorer.frames_out >= self.max_frames))

    def run(self, inbox: net.Inbox) -> None:
        self.heartbeat()
        while not self.done():
            # Frames waiting to be scored: only look for more, do not wait for them.
            wait = 0.0 if self.waiting else max(
                0.0, min(_POLL_S, self._beat_at + self.config.heartbeat_s - time.monotonic()))
            if inbox.wait(wait):
                self.handle(self.drain(inbox.sock))
            if self.waiting:
                self.score_waiting()
            if time.monotonic() - self._beat_at >= self.config.heartbeat_s:
                self.heartbeat()

    def closed(self, endpoint: str, reason: str) -> None:
        """The inbox's report of a connection ZeroMQ closed for good: count it and say why in one line."""
        if reason == net.AUTH_FAILED:
            self.scorer.reject_connection(
                reason, f"frames from {endpoint}: the CURVE handshake failed (is the capture's "
                        f"allow list holding our key, and --server-key the capture's key?)")
        else:
            self.scorer.reject(protocol.ProtocolError(
                f"a message from {endpoint} over max_message_size ({self.config.max_message_size} bytes): ZeroMQ "
                f"refused it unread and closed the connection; reconnected", protocol.KIND_OVERSIZED))

    def drain(self, sock: zmq.Socket) -> list[tuple[zmq.Frame, float]]:
        """(message, unix time received): everything ready now (live), or up to max_batch messages (lossless)."""
        limit = _MAX_DRAIN if self.live else self.config.max_batch
        messages = []
        while len(messages) < limit:
            try:
                messages.append((sock.recv(zmq.NOBLOCK, copy=False), time.time()))
            except zmq.Again:
                break
        self.backlog = len(messages) - 1
        return messages

    def handle(self, messages: list[tuple[zmq.Frame, float]]) -> None:
        """Take each message in arrival order; lossless frames wait in ``pending`` for one batch."""
        pending: list[_Pending] = []
        for raw, t_received in messages:
            try:
                self.take(raw, t_received, pending)
            except Exception as exc:  # one message must never stop the worker
                self.scorer.reject(exc, "message", key=INTERNAL)
        self.flush(pending)

    def take(self, raw: zmq.Frame, t_received: float, pending: list[_Pending]) -> None:
        """Decode one message and act on it: a frame waits, an end of stream follows its stream's scores."""
        try:
            msg = protocol.decode(raw.buffer, max_size=self.config.max_message_size)
        except protocol.ProtocolError as exc:
            self.scorer.reject(exc)
            return
        if not protocol.is_process_id(msg.stream) and not self.config.owns(msg.stream):
            self.other_stream(msg)
            return
        if isinstance(msg, protocol.Frame):
            if not self.live:
                pending.append(_Pending(msg, raw, t_received))
            elif self.scorer.admit(msg):
                if msg.stream in self.waiting:
                    self.scorer.drop(msg.stream)
                # Assigning keeps the stream's place in the queue: a fast stream is not sent to the back.
                self.waiting[msg.stream] = _Pending(msg, raw, t_received)
        elif isinstance(msg, protocol.EndOfStream):
            if self.live:
                last = self.waiting.pop(msg.stream, None)
                self.flush([last] if last is not None else [])
            else:
                self.flush(pending)
                pending.clear()
            self.end_episodes([msg.stream])
            self.out.send(raw, copy=False)
            self.scorer.end(msg.stream)
            self.ends += 1
            logger.info("stream %s ended (%s) after seq %s", msg.stream, msg.reason, msg.last_seq)
        elif isinstance(msg, (protocol.Heartbeat, protocol.Status)):
            if _in_a_workers_name(msg):
                # Consumers would take it for this worker's own word.
                self.scorer.reject(protocol.ProtocolError(
                    f"{msg.TYPE} in a worker's name (stream {msg.stream!r}) on the frames socket, not forwarded",
                    SPOOFED))
            else:
                # Upstream health and events reach viewers through the one scores socket.
                self.out.send(raw, copy=False)
        else:
            self.scorer.reject(protocol.ProtocolError(
                f"unexpected {msg.TYPE} message on the frames socket (stream {msg.stream!r})", UNEXPECTED_TYPE))

    def other_stream(self, msg: protocol.Message) -> None:
        """A message of a stream outside this worker's subset: live, its own worker takes it (a hub or a
        capture sends every stream to every worker of a shard), so it is only counted; lossless, a PUSH gave
        it to this worker alone, so a frame is lost and rejected."""
        if self.live or not isinstance(msg, protocol.Frame):
            self.other_streams += 1
            return
        self.scorer.reject(protocol.ProtocolError(
            f"frame {msg.stream}#{msg.seq}: stream not in this worker's --streams/--shard, lost (a lossless "
            f"capture pushes each frame to one worker: connect only the worker of its shard)", NOT_OURS))

    def score_waiting(self) -> None:
        """Live: score the streams that have waited longest, at most max_batch frames in one call."""
        streams = list(itertools.islice(self.waiting, self.config.max_batch))
        self.flush([self.waiting.pop(stream) for stream in streams])
        self.backlog = len(self.waiting)

    def flush(self, pending: list[_Pending]) -> None:
        """Score ``pending`` in one batch and publish (frame, if forwarded, then) score, in order."""
        if pending:
            try:
                self._publish(pending, self.scorer.score([p.frame for p in pending], [p.t_received for p in pending]))
            except Exception as exc:  # the Scorer survives its model; this is for what it cannot foresee
                self.scorer.reject(exc, f"batch of {len(pending)} frames", key=INTERNAL, count=len(pending))
        self.publish_events()

    def _publish(self, pending: list[_Pending], scores: list[protocol.Score]) -> None:
        # Scores come in input order with rejected frames left out, so walk both lists.
        it = iter(scores)
        windows = iter(self.scorer.scored_windows)
        score = next(it, None)
        for item in pending:
            if score is None or (score.stream, score.seq) != (item.frame.stream, item.frame.seq):
                continue
            if self.config.forward_frames:
                self.out.send(item.raw, copy=False)
            self.out.send(protocol.encode(score))
            window = next(windows)
            if self.saliency is not None:
                self.saliency.offer(item.frame, window, score)
            tracker = self.episodes.get(score.stream)
            if tracker is None:
                tracker = self.episodes[score.stream] = EpisodeTracker(score.stream, score.threshold, self.config.hold)
            self.send_episodes(tracker.feed(score.seq, score.score, score.t_capture))
            score = next(it, None)

    def send_episodes(self, events: list[EpisodeEvent]) -> None:
        if self.saliency is not None:
            self.saliency.episodes(events)
        for event in events:
            self.out.send(protocol.encode(protocol.Episode(
                **dataclasses.asdict(event), threshold=self.scorer.threshold, model=self.scorer.model_id)))

    def end_episodes(self, streams: Iterable[str]) -> None:
        """Close the open episodes of streams that ended or were forgotten, and forget their trackers."""
        for stream in streams:
            tracker = self.episodes.pop(stream, None)
            if tracker is not None:
                self.send_episodes(tracker.close())

    def publish_events(self) -> None:
        for event in self.scorer.events:
            self.out.send(protocol.encode(event))
        self.scorer.events.clear()
        if self.saliency is not None:
            for heat in self.saliency.results():
                self.out.send(protocol.encode(heat))

    def heartbeat(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._beat_at, 1e-9)
        frames_in, frames_out = self.scorer.frames_in, self.scorer.frames_out
        self._beat_at, counts, self._beat_counts = now, self._beat_counts, (frames_in, frames_out)
        try:
            self.scorer.expire()
            self.end_episodes([s for s in self.episodes if s not in self.scorer.streams])
            self.publish_events()
            stats = self.scorer.stats()
            stats.update({"fps_in": (frames_in - counts[0]) / elapsed, "fps_out": (frames_out - counts[1]) / elapsed,
                          "backlog": self.backlog, "ends": self.ends, "uptime_s": now - self._started,
                          "other_streams": self.other_streams})
            if self.saliency is not None:
                stats.update(self.saliency.stats())
            beat = protocol.Heartbeat(self.config.process_id, "worker", os.getpid(), time.time(), stats)
            self.out.send(protocol.encode(beat))
        except Exception as exc:  # a heartbeat that cannot be made must not end the scoring
            self.scorer.reject(exc, "heartbeat", key=INTERNAL)


class LoadingHeartbeats:
    """Heartbeats marked ``loading`` on ``out``, from a thread, for the length of a ``with`` block.

    The block owns no use of ``out``: the thread does until the block ends,
    and the join on leaving it hands the socket back to the caller's thread.
    """

    def __init__(self, out: zmq.Socket, interval_s: float, process_id: str = WORKER_ID) -> None:
        self.out = out
        self.process_id = process_id
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="loading-heartbeats", daemon=True)

    def __enter__(self) -> "LoadingHeartbeats":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            stats = {"loading": 1, "uptime_s": time.monotonic() - self._started}
            beat = protocol.Heartbeat(self.process_id, "worker", os.getpid(), time.time(), stats)
            self.out.send(protocol.encode(beat))
            if self._stop.wait(self.interval_s):
                return


class _Abandoned(Exception):
    """A stop signal came while the model loaded: the load is given up."""


@contextlib.contextmanager
def _signals_abandon(stop: threading.Event) -> Iterator[None]:
    """Within the block, a SIGINT or SIGTERM that the process handles in Python also ends the block.

    Loading a model (importing Keras, building, tracing) takes seconds in
    calls that never look at ``stop``, so a handler that only sets it
    (``net.signal_stop``) would be heard once loading is over. Here the
    handler runs as before, sets ``stop`` and raises ``_Abandoned``. Signals
    left to the operating system keep their default, and outside the main
    thread (where Python runs no handlers) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous = {sig: handler for sig, handler in previous.items() if callable(handler)}
    active = True

    def abandon(signum: int, frame: Any) -> None:
        previous[signum](signum, frame)
        stop.set()
        if active:
            raise _Abandoned(signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, abandon)
    try:
        yield
    finally:
        # A signal from here on must not interrupt the restoring.
        active = False
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _load(bundle: str | Path | Bundle, stop: threading.Event) -> tuple[Bundle, Runtime] | None:
    """The bundle and its warmed-up runtime; None when ``stop`` was set meanwhile."""
    # Importing Keras is the longest part of a start-up: heartbeats say "loading" meanwhile.
    from models.bundle import Bundle, load as load_bundle

    if stop.is_set():
        return None
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if stop.is_set():
        return None
    runtime = bundle.runtime()
    if stop.is_set():
        return None
    # Trace every compiled path now, not on the first frames of a stream.
    runtime.warm_up()
    return bundle, runtime


def serve(bundle: str | Path | Bundle, config: WorkerConfig = WorkerConfig(),
          stop_event: threading.Event | None = None, max_frames: int | None = None) -> WorkerStats:
    """Score frames from ``config.sub`` and publish scores on ``config.pub`` until stopped.

    bundle: a bundle path or a loaded Bundle; the model is rebuilt from the
    bundle's own config. Stops when ``stop_event`` is set, after
    ``max_frames`` scores, or after ``config.exit_after_eos`` ends of stream.
    A stop while the model loads ends the load at once when it comes as a
    signal (in the main thread), else at the next step of the load.
    """
    name = config.key_name or "worker"
    server = keys.server_keys(config.keys, name, config.allow)
    client = keys.client_keys(config.keys, name, "capture", config.server_key)
    net.check_bind_address(config.pub, allow_remote=config.allow_remote, log_remote=False)
    kind = zmq.SUB if config.mode == "live" else zmq.PULL
    # Lossless: room for the next batch to form while one is scored, and no more; whatever
    # is queued here is lost if the worker is killed (docs/protocol.md, section 5).
    # Live wants a short queue of fresh frames.
    hwm = net.DEFAULT_HWM if config.mode == "live" else config.max_batch
    # Live: the streams' topics, and "_" for upstream heartbeats and status. A shard is no topic
    # prefix: its worker takes every stream and skips the others (_Loop.other_stream).
    subscribe = None
    if config.mode == "live" and config.streams:
        subscribe = [protocol.topic(stream) for stream in config.streams] + [b"_"]
    # Scores: room for a few batches of frames and scores for each consumer.
    scores_hwm = 4 * (net.DEFAULT_HWM if config.mode == "live" else max(net.DEFAULT_HWM, 2 * config.max_batch))
    stop = stop_event if stop_event is not None else threading.Event()
    with net.socket(zmq.PUB, bind=config.pub, hwm=scores_hwm, linger=_SCORES_LINGER_MS,
                    allow_remote=config.allow_remote, curve=server) as out:
        loaded = None
        with LoadingHeartbeats(out, config.heartbeat_s, config.process_id):
            try:
                with _signals_abandon(stop):
                    loaded = _load(bundle, stop)
            except _Abandoned as exc:
                logger.info("worker: %s while loading its model, stopped", exc)
            mode, every = parse_mode(config.saliency)
            # Its explaining process loads and traces for seconds: while the heartbeats still say loading.
            saliency = None if loaded is None or mode == "off" else SaliencyThread(
                loaded[1], mode, every, threshold=loaded[0].threshold, warn_interval_s=config.warn_interval_s)
        if loaded is None:
            logger.info("worker stopped before its model was ready")
            return WorkerStats(0, 0, 0, {}, 0, 0.0)
        bundle, runtime = loaded
        scorer = Scorer(runtime, bundle.threshold, bundle.model_id, warn_interval_s=config.warn_interval_s,
                        max_streams=config.max_streams, idle_s=config.stream_idle_s)
        started = time.monotonic()
        loop = _Loop(scorer, config, out, stop, max_frames, saliency)
        with contextlib.ExitStack() as running:
            if saliency is not None:
                running.enter_context(saliency)
            inbox = running.enter_context(net.Inbox(
                kind, config.sub, on_closed=loop.closed, silence_s=config.silence_s, hwm=hwm,
                max_size=config.max_message_size, subscribe=subscribe, curve=client))
            logger.info("worker %s (%s, threshold %.3f): %s from %s, scores on %s", bundle.model_id,
                        bundle.config.backbone, bundle.threshold, config.mode, ", ".join(config.sub), config.pub)
            if config.streams or config.shard:
                logger.info("worker %s takes streams %s, shard %s", config.process_id,
                            ",".join(config.streams) or "all", config.shard or "all")
            try:
                loop.run(inbox)
            except KeyboardInterrupt:
                logger.info("worker interrupted")
            if saliency is not None:
                saliency.finish()
            loop.heartbeat()
    logger.info("worker: %d frames in, %d scored, %d dropped, %d lost, %d rejected", scorer.frames_in,
                scorer.frames_out, scorer.dropped, scorer.lost, sum(scorer.rejected.values()))
    return WorkerStats(scorer.frames_in, scorer.frames_out, scorer.dropped, dict(scorer.rejected), loop.ends,
                       time.monotonic() - started)
