"""The capture: publish the frames of one open ``stream.sources.Source`` as protocol messages.

The socket loop is a thin shell around three pure pieces that tests call
directly: ``Pacer`` (when the next frame is due), ``protocol.frame_message``
(frame -> message) and ``supervise.Backoff`` (how long to wait before
reopening a device that failed).

Modes: ``live`` binds a PUB socket; a slow subscriber loses frames rather
than delaying them. ``lossless`` binds a PUSH socket that one worker
connects to with PULL; a full queue blocks the send, so the worker's pace
becomes the capture's pace and no frame is ever dropped. A PUSH socket holds
its first frame until a worker has connected, so a lossless stream loses
nothing however late the worker starts; a live PUB publishes from its first
frame, and subscribers that connect later miss what went before (frames are
expendable in live mode).

Problems of the source (a device lost and retried, frames of a damaged file
left out, a file that ends early) go out as ``status`` messages on the
frames socket as well as to the log; frames left out are a gap in ``seq``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import zmq

from models.settings import check, setting
from stream import keys, net, protocol
from stream.keys import allow_setting, key_name_setting, keys_setting
from stream.sources import Source, SourceError
from stream.supervise import Backoff

logger = logging.getLogger(__name__)

# How often a blocked send or a sleep looks at the stop event; bounds the
# time a stop request waits.
_POLL_S = 0.05
# After a stop, the end of stream waits this long for room in the queue, then gives
# up: the worker may be gone. A lossless stream that ended by itself waits as long as
# the worker needs, like its frames did.
_EOS_TIMEOUT_S = 2.0
# How long closing waits for queued messages to leave: in lossless mode the
# last frames and the end of stream are queued when the loop ends.
_LINGER_MS = {"live": 1000, "lossless": 5000}


class Pacer:
    """When the next frame is due, for a source played at ``fps`` frames a second.

    Deadlines advance by one period from the previous deadline, so timing
    errors do not accumulate; after a stall of more than one period the
    schedule restarts from now instead of bursting to catch up. ``fps`` None
    means as fast as the consumer takes them.
    """

    def __init__(self, fps: float | None) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 or None, got {fps}")
        self.period = 1.0 / fps if fps else 0.0
        self._due: float | None = None

    def due_in(self, now: float) -> float:
        """Seconds from ``now`` until the next frame is due; 0 when it is due."""
        if self._due is None:
            return 0.0
        return max(0.0, self._due - now)

    def sent(self, now: float) -> None:
        """Record that a frame went out at ``now``."""
        if self._due is None or now - self._due > self.period:
            self._due = now + self.period
        else:
            self._due += self.period


@dataclasses.dataclass(frozen=True)
class CaptureConfig:
    """Settings of ``fetalhead capture`` (a ``[capture]`` TOML table).

    ``stream`` None uses the source's name; ``fps`` None the source's own
    rate; ``hwm`` None picks 4 frames in lossless mode (backpressure
    reaches the capture quickly) and 16 in live mode; ``max_frames`` None
    is no limit. ``fps`` and ``loop`` are also how the command opens its
    source. ``on_bad_frame`` says what a frame that the source had to leave
    out does: ``skip`` goes on after it, ``stop`` ends the stream there.
    A device that fails is reopened after ``retry_initial_s``, doubling up
    to ``retry_max_s`` while it keeps failing. ``keys`` turns CURVE on for
    the frames socket (see ``stream.keys``): the capture's key pair
    ``key_name`` (default ``capture``), clients allowed from ``allow``.
    """

    pub: str = setting(net.DEFAULT_PUB, "address to bind")
    mode: Literal["live", "lossless"] = setting(
        "live", "live: PUB, slow consumers miss frames; lossless: PUSH to one worker, nothing dropped")
    stream: str | None = setting(None, "stream id", shown="the source's name")
    encoding: Literal["raw", "jpeg", "png"] = setting("raw", "pixel encoding on the wire")
    fps: float | None = setting(None, "frame rate to play at", shown="the source's own")
    fast: bool = setting(False, "as fast as the consumer takes frames")
    loop: bool = setting(False, "replay a file or scan folder endlessly")
    heartbeat_s: float = setting(protocol.HEARTBEAT_INTERVAL_S, "seconds between heartbeats", flag="heartbeat")
    hwm: int | None = setting(None, "send queue in frames", shown="4 lossless, 16 live")
    allow_remote: bool = setting(False, "allow binding a non-loopback address (frames are encrypted only with --keys)")
    max_frames: int | None = setting(None, "stop after this many frames", shown="no limit")
    on_bad_frame: Literal["skip", "stop"] = setting(
        "skip", "a frame of a file or scan folder that cannot be read: skip it (a gap in seq) or end the stream")
    retry_initial_s: float = setting(0.5, "seconds before reopening a device that failed", flag="retry-initial")
    retry_max_s: float = setting(8.0, "longest wait between reopening tries (the wait doubles up to it)",
                                 flag="retry-max")
    keys: Path | None = keys_setting()
    key_name: str | None = key_name_setting("capture")
    allow: Path | None = allow_setting()

    def __post_init__(self) -> None:
        keys.check_options(self.keys, key_name=self.key_name, allow=self.allow)
        check(self.fps is None or self.fps > 0, f"fps: must be > 0, got {self.fps}")
        check(not (self.fast and self.fps is not None), "fast: --fast and --fps exclude each other")
        check(self.heartbeat_s > 0, f"heartbeat_s: must be > 0, got {self.heartbeat_s}")
        check(self.hwm is None or self.hwm >= 1, f"hwm: must be >= 1, got {self.hwm}")
        check(self.max_frames is None or self.max_frames >= 1, f"max_frames: must be >= 1, got {self.max_frames}")
        check(0 < self.retry_initial_s <= self.retry_max_s,
              f"retry_initial_s: must be > 0 and <= retry_max_s, got {self.retry_initial_s} and {self.retry_max_s}")
        protocol.check_stream_id(self.stream)

    @property
    def queue_size(self) -> int:
        return self.hwm if self.hwm is not None else (4 if self.mode == "lossless" else 16)


@dataclasses.dataclass(frozen=True)
class CaptureStats:
    """What one capture run sent: frame count, last seq, source failures, why it ended."""

    stream: str
    frames_out: int
    last_seq: int | None
    source_errors: int
    reason: str
    elapsed_s: float


class _Publisher:
    """The capture's socket: frames, ends of stream, statuses and heartbeats.

    Sends that must arrive (lossless frames and statuses, the end of stream)
    wait for room in the queue but give up when ``stop`` is set; heartbeats
    never wait.
    """

    def __init__(self, sock: zmq.Socket, stream: str, stop: threading.Event, heartbeat_s: float, *,
                 lossless: bool = False) -> None:
        self.sock = sock
        self.lossless = lossless
        self.stream = stream
        self.stop = stop
        self.heartbeat_s = heartbeat_s
        self.frames_out = 0
        self.source_errors = 0
        self.last_seq: int | None = None
        self._started = time.monotonic()
        self._beat_at = self._started
        self._beat_frames = 0
        self._process = protocol.process_id("capture", stream)

    def send(self, data: bytes, *, wait: bool = False, timeout_s: float | None = None) -> bool:
        """Queue ``data``; False when it could not be.

        Without ``wait`` a full queue gives up at once. With ``wait`` it waits
        for room until ``stop`` is set, or, given ``timeout_s``, for that long
        whatever ``stop`` says (the end of stream must go out after a stop).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                self.sock.send(data, zmq.NOBLOCK)
                return True
            except zmq.Again:
                if not wait:
                    return False
                if deadline is None and self.stop.is_set():
                    return False
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                self.sock.poll(int(_POLL_S * 1000), zmq.POLLOUT)
                self.beat_if_due()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` while keeping heartbeats going; False when stopped meanwhile."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.stop.wait(min(left, _POLL_S)):
                return False
            self.beat_if_due()
        return not self.stop.is_set()

    def status(self, level: str, message: str) -> None:
        """Publish an event; in lossless mode it waits for room like a frame (live drops it when full)."""
        self.send(protocol.encode(protocol.Status(self.stream, level, message, time.time())), wait=self.lossless)

    def beat_if_due(self) -> None:
        now = time.monotonic()
        if now - self._beat_at < self.heartbeat_s:
            return
        fps = (self.frames_out - self._beat_frames) / (now - self._beat_at)
        self._beat_at, self._beat_frames = now, self.frames_out
        stats = {"frames_out": self.frames_out, "fps_out": fps, "source_errors": self.source_errors,
                 "uptime_s": now - self._started}
        if self.last_seq is not None:
            stats["seq"] = self.last_seq
        beat = protocol.Heartbeat(self._process, "capture", os.getpid(), time.time(), stats)
        self.send(protocol.encode(beat), wait=False)


def _frames_with_retry(source: Source, pub: _Publisher,
                       backoff: Backoff) -> Iterator[tuple[np.ndarray, float | None]]:
    """The source's frames; a device that fails is reopened with backoff until stopped."""
    while True:
        try:
            for item in source:
                backoff.reset()
                yield item
            return
        except SourceError as exc:
            if not source.retry:
                raise
            failure = str(exc)
        while True:
            pub.source_errors += 1
            delay = backoff.next()
            logger.warning("%s; retrying in %g s", failure, delay)
            pub.status("warning", f"{failure}; retrying in {delay:g} s")
            if not pub.sleep(delay):
                return
            try:
                source.reopen()
                break
            except SourceError as exc:
                failure = str(exc)
        pub.status("info", f"{source.name}: reopened")


def capture(source: Source, config: CaptureConfig = CaptureConfig(),
            stop_event: threading.Event | None = None) -> CaptureStats:
    """Publish every frame of the open ``source``, and close it.

    Frames of stream ``config.stream`` (default: the source's name) get seq
    0, 1, 2 ... The run ends with an EndOfStream message: reason ``eof`` at
    the end of a file, ``max_frames`` after ``config.max_frames`` frames,
    ``stopped`` when ``stop_event`` is set or on Ctrl-C, ``error`` when
    something fails for good (the error then propagates).
    """
    stop = stop_event if stop_event is not None else threading.Event()
    lossless = config.mode == "lossless"
    stream = config.stream or source.name
    started = time.monotonic()
    with contextlib.closing(source):
        server = keys.server_keys(config.keys, config.key_name or "capture", config.allow)
        net.check_bind_address(config.pub, allow_remote=config.allow_remote, log_remote=False)
        # A source's own name (a file stem) may not be a valid stream id: say so before binding.
        try:
            protocol.topic(stream)
        except protocol.ProtocolError as exc:
            raise SourceError(f"{source.name}: cannot be a stream id ({exc}); give one with --stream") from None
        kind = zmq.PUSH if lossless else zmq.PUB
        with net.socket(kind, bind=config.pub, hwm=config.queue_size, linger=_LINGER_MS[config.mode],
                        allow_remote=config.allow_remote, curve=server) as sock:
            logger.info("capture %s: %s on %s, %s, %s", stream, "PUSH" if lossless else "PUB", config.pub,
                        config.mode, "fast" if config.fast else f"{config.fps or source.fps or 0:g} fps")
            pub = _Publisher(sock, stream, stop, config.heartbeat_s, lossless=lossless)
            source.on_warning = lambda message: pub.status("warning", message)
            reason = "error"
            try:
                reason = _publish_frames(source, pub, config)
            except KeyboardInterrupt:
                reason = "stopped"
            finally:
                end = protocol.EndOfStream(stream, pub.last_seq, reason, time.time())
                patient = lossless and reason in ("eof", "max_frames") and not stop.is_set()
                if not pub.send(protocol.encode(end), wait=True, timeout_s=None if patient else _EOS_TIMEOUT_S):
                    logger.warning("capture %s: end of stream not delivered (no consumer took it)", stream)
                logger.info("capture %s: %d frames, ended (%s)", stream, pub.frames_out, reason)
    return CaptureStats(stream, pub.frames_out, pub.last_seq, pub.source_errors, reason,
                        time.monotonic() - started)


def _publish_frames(source: Source, pub: _Publisher, config: CaptureConfig) -> str:
    """Send frames until the source ends, the limit is reached or ``pub.stop`` is set; returns the reason.

    A frame's seq counts the source's frames before it, sent or left out
    (``Source.missing``), so a frame of a file keeps its index there and a
    damaged stretch is a gap. With ``config.on_bad_frame`` ``stop`` the first
    frame left out ends the stream; a source that ended with frames missing
    ends it with reason ``error``.
    """
    lossless = config.mode == "lossless"
    pacer = Pacer(None if config.fast or source.realtime else (config.fps or source.fps))
    yielded = 0
    missing_before = source.missing
    backoff = Backoff(config.retry_initial_s, config.retry_max_s)
    for image, t_source in _frames_with_retry(source, pub, backoff):
        missing = source.missing - missing_before
        if missing and config.on_bad_frame == "stop":
            return "error"
        seq = yielded + missing
        yielded += 1
        if pub.stop.is_set() or not pub.sleep(pacer.due_in(time.monotonic())):
            return "stopped"
        msg = protocol.frame_message(pub.stream, seq, image, encoding=config.encoding, t_source=t_source,
                                     spacing=source.spacing)
        # Only a lossless send waits, and it fails only when asked to stop.
        if not pub.send(protocol.encode(msg), wait=lossless) and lossless:
            return "stopped"
        pacer.sent(time.monotonic())
        pub.last_seq = seq
        pub.frames_out += 1
        pub.beat_if_due()
        if config.max_frames is not None and pub.frames_out >= config.max_frames:
            return "max_frames"
    if pub.stop.is_set():
        return "stopped"
    return "error" if source.missing > missing_before else "eof"
