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
rather than missing. Live mode (SUB) keeps only the
newest frame of each stream from whatever is waiting, so latency stays
bounded however fast the source is; lossless mode (PULL) scores every frame
once, in order, batching whatever backlog is waiting.

Bad input never stops the worker: a message that does not decode, a frame
the model cannot take, or one that ZeroMQ refused for its size is dropped,
logged in one line (rate-limited per class, ``net.Throttled``) and counted
in the heartbeat as ``rejected.<class>``; the frames socket is a
``net.Inbox``, which reconnects what ZeroMQ closed. A stream whose frame
shape changes is scored on (the preprocessing resizes every frame) and gets
one ``warning`` Status.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import zmq

from models.settings import check, setting
from models.windows import RollingWindow
from stream import keys, net, protocol
from stream.keys import allow_setting, key_name_setting, keys_setting, server_key_setting

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

# Rejection classes of the worker's own, besides protocol.KINDS.
UNEXPECTED_TYPE = "unexpected_type"  # a valid message that has no business on the frames socket
BAD_IMAGE = "bad_image"  # a valid frame the model cannot take


def rejection_class(exc: Exception) -> str:
    """The short class of a rejected message, as counted in ``rejected.<class>``.

    A ProtocolError's own ``kind``; a ValueError from preprocessing (a frame
    the model cannot take) is ``bad_image``.
    """
    if isinstance(exc, protocol.ProtocolError):
        return exc.kind
    return BAD_IMAGE


@dataclasses.dataclass
class _StreamState:
    window: RollingWindow
    last_seq: int | None = None
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    shape: tuple[int, ...] | None = None
    shape_changes: int = 0


class Scorer:
    """Per-stream rolling windows over one Runtime, with the worker's counters.

    runtime: a ``models.runtime.Runtime``; threshold in [0, 1] gives each
    score's decision; model_id names the model in every Score. ``events``
    collects Status messages for the caller to publish (and clear).
    Rejections are logged once per class every ``warn_interval_s`` seconds.
    """

    def __init__(self, runtime: Runtime, threshold: float, model_id: str, *, latency_samples: int = 4096,
                 warn_interval_s: float = 5.0) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.runtime = runtime
        self.threshold = float(threshold)
        self.model_id = model_id
        self.window = runtime.config.window
        self.streams: dict[str, _StreamState] = {}
        self.rejected: collections.Counter[str] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=latency_samples)
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.shape_changes = 0
        self.events: list[protocol.Status] = []
        self._warn = net.Throttled(logger, warn_interval_s)

    def _stream(self, stream: str) -> _StreamState:
        state = self.streams.get(stream)
        if state is None:
            state = self.streams[stream] = _StreamState(RollingWindow(self.window, self.runtime.feature_dim))
        return state

    def reject(self, exc: Exception, what: str = "message") -> str:
        """Count a rejected input and warn (rate-limited); returns its class."""
        key = rejection_class(exc)
        self.rejected[key] += 1
        self._warn.warning(key, f"rejected {what} ({key}): {exc}")
        return key

    def reject_connection(self, key: str, message: str) -> None:
        """Count a refused connection (``rejected.<key>``) and warn (rate-limited)."""
        self.rejected[key] += 1
        self._warn.warning(key, message)

    def drop(self, stream: str, count: int = 1) -> None:
        """Count ``count`` frames of ``stream`` that the caller skipped unscored."""
        state = self._stream(stream)
        state.frames_in += count
        state.dropped += count
        self.frames_in += count
        self.dropped += count

    def end(self, stream: str) -> None:
        """Forget ``stream`` (its end of stream arrived): window and per-stream counters."""
        self.streams.pop(stream, None)

    def score(self, frames: Sequence[protocol.Frame], t_received: float | Sequence[float]) -> list[protocol.Score]:
        """Scores of ``frames``, in their order; rejected frames are counted and left out.

        t_received: unix seconds when the frames arrived, one for all or one
        per frame. Frames of one stream must come in the order they are to
        be scored; a seq at or below the stream's previous one (the capture
        restarted) starts the stream's window afresh.
        """
        received = [float(t_received)] * len(frames) if np.isscalar(t_received) else list(t_received)
        if len(received) != len(frames):
            raise ValueError(f"t_received has {len(received)} times for {len(frames)} frames")
        accepted: list[tuple[protocol.Frame, float]] = []
        images = []
        for frame, t in zip(frames, received):
            state = self._stream(frame.stream)
            state.frames_in += 1
            self.frames_in += 1
            try:
                images.append(self.runtime.preprocess(frame.image()))
            except ValueError as exc:  # ProtocolError is a ValueError too
                self.reject(exc, f"frame {frame.stream}#{frame.seq}")
                continue
            self._check_shape(frame, state)
            accepted.append((frame, t))
        if not accepted:
            return []
        features = self.runtime.features(np.stack(images))

        windows: list[np.ndarray] = []
        flags: list[tuple[str, ...]] = []
        for (frame, _), row in zip(accepted, features):
            state = self.streams[frame.stream]
            if state.last_seq is not None and frame.seq <= state.last_seq:
                logger.info("stream %s: seq went back from %d to %d, restarting its window",
                            frame.stream, state.last_seq, frame.seq)
                state.window.reset()
            state.window.push(row, frame.seq)
            state.last_seq = frame.seq
            # A copy: the next push of the same stream in this batch shifts the buffer.
            windows.append(state.window.view().copy())
            flags.append(tuple(name for name, on in ((protocol.FLAG_WARMUP, state.window.warming_up),
                                                     (protocol.FLAG_GAP, state.window.has_gap)) if on))

        scores = self.runtime.score_newest(windows)

        t_scored = time.time()
        out = []
        for (frame, t), value, window, frame_flags in zip(accepted, scores, windows, flags):
            state = self.streams[frame.stream]
            state.frames_out += 1
            value = float(np.clip(value, 0.0, 1.0))
            latency = t_scored - frame.t_capture
            self.latencies.append(latency)
            out.append(protocol.Score(
                stream=frame.stream, seq=frame.seq, score=value, decision=value >= self.threshold,
                threshold=self.threshold, model=self.model_id, t_capture=frame.t_capture, t_received=t,
                t_scored=t_scored, latency=latency, flags=frame_flags, window=len(window),
                dropped=state.dropped))
        self.frames_out += len(out)
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
        """Counters for a heartbeat: totals, per stream and per rejection class; latency in seconds."""
        stats: dict[str, int | float] = {"frames_in": self.frames_in, "frames_out": self.frames_out,
                                         "dropped": self.dropped, "streams": len(self.streams),
                                         "shape_changes": self.shape_changes}
        for name, state in self.streams.items():
            stats[f"frames_out.{name}"] = state.frames_out
            stats[f"dropped.{name}"] = state.dropped
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
    ``keys`` turns CURVE on for both sockets (see ``stream.keys``): the
    worker's key pair ``key_name`` (default ``worker``), clients allowed
    from ``allow``, the capture's public key ``server_key`` (default
    ``keys/capture.key``).
    """

    sub: tuple[str, ...] = setting((net.DEFAULT_PUB,), "frame addresses to connect to (several captures in live mode)")
    pub: str = setting(net.DEFAULT_SCORES, "scores address to bind")
    mode: Literal["live", "lossless"] = setting(
        "live", "live: SUB, newest frame per stream; lossless: PULL, every frame in order")
    max_batch: int = setting(16, "most frames scored in one batch", flag="batch")
    heartbeat_s: float = setting(protocol.HEARTBEAT_INTERVAL_S, "seconds between heartbeats", flag="heartbeat")
    max_message_size: int = setting(protocol.DEFAULT_MAX_SIZE, "bytes; larger messages are refused",
                                    shown="64 MiB")
    forward_frames: bool = setting(False, "also publish each frame on the scores socket, before its score")
    allow_remote: bool = setting(False, "allow binding a non-loopback scores address (encrypted only with --keys)")
    exit_after_eos: int = setting(0, "exit after this many ends of stream; 0 runs until stopped")
    silence_s: float = setting(protocol.DEAD_AFTER_S, "seconds without any message before the frame socket "
                                                      "reconnects", flag="silence")
    warn_interval_s: float = setting(5.0, "seconds between warnings of one rejection class (all are counted)",
                                     flag="warn-interval")
    keys: Path | None = keys_setting()
    key_name: str | None = key_name_setting("worker")
    allow: Path | None = allow_setting()
    server_key: Path | None = server_key_setting("capture")

    def __post_init__(self) -> None:
        keys.check_options(self.keys, key_name=self.key_name, allow=self.allow, server_key=self.server_key)
        check(len(self.sub) >= 1, "sub: needs at least one address")
        check(self.max_batch >= 1, f"max_batch: must be >= 1, got {self.max_batch}")
        check(self.heartbeat_s > 0, f"heartbeat_s: must be > 0, got {self.heartbeat_s}")
        check(self.max_message_size >= 1024, f"max_message_size: must be >= 1024 bytes, got {self.max_message_size}")
        check(self.exit_after_eos >= 0, f"exit_after_eos: must be >= 0, got {self.exit_after_eos}")
        check(self.silence_s > 0, f"silence_s: must be > 0, got {self.silence_s}")
        check(self.warn_interval_s >= 0, f"warn_interval_s: must be >= 0, got {self.warn_interval_s}")


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
    """One worker's receive -> score -> publish loop, from a frames ``net.Inbox`` to the scores socket."""

    def __init__(self, scorer: Scorer, config: WorkerConfig, out: zmq.Socket, stop: threading.Event,
                 max_frames: int | None) -> None:
        self.scorer = scorer
        self.config = config
        self.out = out
        self.stop = stop
        self.max_frames = max_frames
        self.live = config.mode == "live"
        self.ends = 0
        self.backlog = 0
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
            wait = max(0.0, min(_POLL_S, self._beat_at + self.config.heartbeat_s - time.monotonic()))
            if inbox.wait(wait):
                self.handle(self.drain(inbox.sock))
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
        """Decode in arrival order; frames wait in ``pending`` until a flush scores them together."""
        pending: dict[object, _Pending] = {}
        for raw, t_received in messages:
            try:
                msg = protocol.decode(raw.buffer, max_size=self.config.max_message_size)
            except protocol.ProtocolError as exc:
                self.scorer.reject(exc)
                continue
            if isinstance(msg, protocol.Frame):
                # Live keeps the newest frame of each stream; lossless keeps all.
                key = msg.stream if self.live else len(pending)
                if key in pending:
                    self.scorer.drop(msg.stream)
                    del pending[key]
                pending[key] = _Pending(msg, raw, t_received)
            elif isinstance(msg, protocol.EndOfStream):
                self.flush(list(pending.values()))
                pending.clear()
                self.out.send(raw, copy=False)
                self.scorer.end(msg.stream)
                self.ends += 1
                logger.info("stream %s ended (%s) after seq %s", msg.stream, msg.reason, msg.last_seq)
            elif isinstance(msg, (protocol.Heartbeat, protocol.Status)):
                # Upstream health and events reach viewers through the one scores socket.
                self.out.send(raw, copy=False)
            else:
                self.scorer.reject(protocol.ProtocolError(
                    f"unexpected {msg.TYPE} message on the frames socket (stream {msg.stream!r})", UNEXPECTED_TYPE))
        self.flush(list(pending.values()))

    def flush(self, pending: list[_Pending]) -> None:
        """Score ``pending`` in one batch and publish (frame, if forwarded, then) score, in order."""
        if not pending:
            return
        scores = self.scorer.score([p.frame for p in pending], [p.t_received for p in pending])
        # Scores come in input order with rejected frames left out, so walk both lists.
        it = iter(scores)
        score = next(it, None)
        for item in pending:
            if score is None or (score.stream, score.seq) != (item.frame.stream, item.frame.seq):
                continue
            if self.config.forward_frames:
                self.out.send(item.raw, copy=False)
            self.out.send(protocol.encode(score))
            score = next(it, None)
        for event in self.scorer.events:
            self.out.send(protocol.encode(event))
        self.scorer.events.clear()

    def heartbeat(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._beat_at, 1e-9)
        frames_in, frames_out = self.scorer.frames_in, self.scorer.frames_out
        stats = self.scorer.stats()
        stats.update({"fps_in": (frames_in - self._beat_counts[0]) / elapsed,
                      "fps_out": (frames_out - self._beat_counts[1]) / elapsed,
                      "backlog": self.backlog, "ends": self.ends, "uptime_s": now - self._started})
        self._beat_at, self._beat_counts = now, (frames_in, frames_out)
        beat = protocol.Heartbeat(WORKER_ID, "worker", os.getpid(), time.time(), stats)
        self.out.send(protocol.encode(beat))


class LoadingHeartbeats:
    """Heartbeats marked ``loading`` on ``out``, from a thread, for the length of a ``with`` block.

    The block owns no use of ``out``: the thread does until the block ends,
    and the join on leaving it hands the socket back to the caller's thread.
    """

    def __init__(self, out: zmq.Socket, interval_s: float) -> None:
        self.out = out
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
            self.out.send(protocol.encode(protocol.Heartbeat(WORKER_ID, "worker", os.getpid(), time.time(), stats)))
            if self._stop.wait(self.interval_s):
                return


def serve(bundle: str | Path | Bundle, config: WorkerConfig = WorkerConfig(),
          stop_event: threading.Event | None = None, max_frames: int | None = None) -> WorkerStats:
    """Score frames from ``config.sub`` and publish scores on ``config.pub`` until stopped.

    bundle: a bundle path or a loaded Bundle; the model is rebuilt from the
    bundle's own config. Stops when ``stop_event`` is set, after
    ``max_frames`` scores, or after ``config.exit_after_eos`` ends of stream.
    """
    name = config.key_name or "worker"
    server = keys.server_keys(config.keys, name, config.allow)
    client = keys.client_keys(config.keys, name, "capture", config.server_key)
    net.check_bind_address(config.pub, allow_remote=config.allow_remote, log_remote=False)
    kind = zmq.SUB if config.mode == "live" else zmq.PULL
    # Lossless needs room for a full batch to form in the queue; live wants a short queue of fresh frames.
    hwm = net.DEFAULT_HWM if config.mode == "live" else max(net.DEFAULT_HWM, 2 * config.max_batch)
    with net.socket(zmq.PUB, bind=config.pub, hwm=4 * hwm, linger=_SCORES_LINGER_MS,
                    allow_remote=config.allow_remote, curve=server) as out:
        with LoadingHeartbeats(out, config.heartbeat_s):
            # Importing Keras is the longest part of a start-up: heartbeats say "loading" meanwhile.
            from models.bundle import Bundle, load as load_bundle

            if not isinstance(bundle, Bundle):
                bundle = load_bundle(bundle)
            runtime = bundle.runtime()
            # Trace every compiled path now, not on the first frames of a stream.
            runtime.warm_up()
        scorer = Scorer(runtime, bundle.threshold, bundle.model_id, warn_interval_s=config.warn_interval_s)
        stop = stop_event if stop_event is not None else threading.Event()
        started = time.monotonic()
        loop = _Loop(scorer, config, out, stop, max_frames)
        with net.Inbox(kind, config.sub, on_closed=loop.closed, silence_s=config.silence_s, hwm=hwm,
                       max_size=config.max_message_size, curve=client) as inbox:
            logger.info("worker %s (%s, threshold %.3f): %s from %s, scores on %s", bundle.model_id,
                        bundle.config.backbone, bundle.threshold, config.mode, ", ".join(config.sub), config.pub)
            try:
                loop.run(inbox)
            except KeyboardInterrupt:
                logger.info("worker interrupted")
            loop.heartbeat()
    logger.info("worker: %d frames in, %d scored, %d dropped, %d rejected", scorer.frames_in,
                scorer.frames_out, scorer.dropped, sum(scorer.rejected.values()))
    return WorkerStats(scorer.frames_in, scorer.frames_out, scorer.dropped, dict(scorer.rejected), loop.ends,
                       time.monotonic() - started)
