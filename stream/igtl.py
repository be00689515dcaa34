"""OpenIGTLink in and out: IMAGE messages of a PLUS server or 3D Slicer as frames, scores as STRING messages.

In: ``IgtlSource`` is the capture's source for ``igtl://HOST:PORT[/DEVICE]``.
It connects as a client to an OpenIGTLink server (PLUS's
``PlusServer``, Slicer's OpenIGTLinkIF in server mode) and yields every 2D
IMAGE message of one device: the device named in the address, or else the
device of the first IMAGE that arrives. The device name is the default
stream id; one that is not a valid stream id is streamed under a sanitised
id, said once as a warning. ``t_source`` is the message's own timestamp
(the server's clock, unix seconds), ``spacing`` the (row, col) pixel size in
mm from the image matrix (the lengths of its j and i columns). Messages are
decoded by pyigtl (``pyigtl.MessageBase``); the socket is our own rather
than ``pyigtl.OpenIGTLinkClient``, which keeps only the newest message of
each device (frames in between are lost without a word), reconnects every
10 ms without backoff and does not notice a server that closed the
connection. Here the server going away is a ``SourceError``, and
``Source.retry`` has the capture reconnect with its backoff and say so as
status; so is a server silent for ``silence_s`` (the capture can only be
stopped between frames). An image that cannot be a frame (a volume, a
pixel type other than 8 bits, a component count other than 1, 3 or 4) is
left out with a warning (``Source.skip``), a gap in seq; other message
types (TRANSFORM, STATUS ...) and other devices' images are not frames of
this stream and are passed over.

Out: ``igtl_out`` is a scores consumer (``stream.consumer``) that serves
OpenIGTLink with pyigtl's server (``IgtlServer``, one client at a time)
and sends one STRING message per score, its device name the stream id
(cut to OpenIGTLink's 20 bytes), its timestamp the frame's ``t_capture``, its text one JSON object:
``{"stream", "seq", "score", "decision", "verdict", "threshold", "flags"}``
with ``decision`` the raw decision and ``verdict`` the smoothed one
(``stream.consumer.StreamVerdicts``), both ``Head`` or ``Not-Head``.
STRING because OpenIGTLink has no type for a score: STATUS is meant for a
device's own health (its code field has no room for a probability), POINT
and TDATA are geometry; a STRING is shown as a text node by Slicer and read
by any OpenIGTLink library, and JSON keeps every field by name. A score
that cannot be sent (no client connected, or pyigtl's queue of 100 full
because the client does not keep up) is counted and logged, and so is one
queued for a client that left before it was written: none is dropped
without a word. A client that connects gets the scores from then on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import select
import signal
import socket
import socketserver
import threading
from typing import Iterator
from urllib.parse import urlsplit

import numpy as np

from models.classes import class_name
from models.errors import ConfigError
from models.settings import check, setting
from stream import consumer, net, protocol
from stream.consumer import ConsumerConfig, StreamVerdicts
from stream.sources import Source, SourceError

logger = logging.getLogger(__name__)

SCHEME = "igtl://"
DEFAULT_PORT = 18944  # OpenIGTLink's registered port, PLUS's and Slicer's default
DEFAULT_OUT_PORT = 18945  # not 18944: on the machine running PLUS that port is PLUS's own
# OpenIGTLink's device name field.
DEVICE_NAME_BYTES = 20
# Bigger than any 2D ultrasound image (4096 x 4096 x 4 is 64 MiB): a larger
# body size is a header that is not OpenIGTLink, not an image to wait for.
MAX_BODY_BYTES = 256 * 1024 * 1024
# How often the server's client handler looks at its queue, the client and a stop.
_CLIENT_POLL_S = 0.01
_NOT_STREAM_ID = re.compile(r"[^A-Za-z0-9_.:-]")


def parse_address(spec: str) -> tuple[str, int, str | None]:
    """(host, port, device or None) of ``igtl://HOST[:PORT][/DEVICE]``; SourceError naming what is wrong."""
    if not spec.startswith(SCHEME):
        raise SourceError(f"source {spec}: not an OpenIGTLink address (expected {SCHEME}HOST:PORT[/DEVICE])")
    try:
        parts = urlsplit(spec)
        port = parts.port
    except ValueError as exc:
        raise SourceError(f"source {spec}: bad OpenIGTLink address ({exc})") from None
    if not parts.hostname:
        raise SourceError(f"source {spec}: no host (expected {SCHEME}HOST:PORT[/DEVICE])")
    device = parts.path.strip("/") or None
    if device is not None and len(device.encode()) > DEVICE_NAME_BYTES:
        raise SourceError(f"source {spec}: device name {device!r} is over OpenIGTLink's {DEVICE_NAME_BYTES} bytes")
    return parts.hostname, port if port is not None else DEFAULT_PORT, device


def stream_id(device: str) -> tuple[str, str | None]:
    """(stream id, problem or None) for an OpenIGTLink device name: the name itself, or a sanitised one."""
    try:
        protocol.check_stream_id(device)
        return device, None
    except ConfigError as exc:
        problem = str(exc).removeprefix("stream: ")
    sanitised = _NOT_STREAM_ID.sub("_", device).lstrip("_")[:64] or "igtl"
    return sanitised, problem


def image_frame(message) -> tuple[np.ndarray | None, str | None]:
    """(uint8 (H, W) or (H, W, 3) BGR image, None) of a pyigtl ImageMessage, or (None, why it cannot be a frame)."""
    image = message.image
    if image is None or image.ndim not in (3, 4):
        return None, "an image without pixels"
    if image.shape[0] != 1:
        return None, f"a volume of {image.shape[0]} slices (only 2D images are scored)"
    if image.dtype != np.uint8:
        return None, f"pixel type {image.dtype} (only 8-bit images are scored)"
    plane = image[0]
    if plane.ndim == 2:
        return np.ascontiguousarray(plane), None
    components = plane.shape[2]
    if components == 1:
        return np.ascontiguousarray(plane[:, :, 0]), None
    if components in (3, 4):
        # OpenIGTLink's colour order is RGB(A); frames are BGR as OpenCV has them.
        return np.ascontiguousarray(plane[:, :, 2::-1]), None
    return None, f"{components} components per pixel (1, 3 or 4 are scored)"


def image_spacing(message) -> tuple[float, float] | None:
    """(row, col) pixel size in mm from a pyigtl ImageMessage's ijk-to-world matrix; None when it gives none."""
    matrix = np.asarray(message.ijk_to_world_matrix, dtype=float)
    # The matrix travels as float32: 0.3 mm would read 0.30000001.
    row, col = round(float(np.linalg.norm(matrix[:3, 1])), 6), round(float(np.linalg.norm(matrix[:3, 0])), 6)
    if not (math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0):
        return None
    return row, col


class IgtlSource(Source):
    """The 2D IMAGE messages of one device of an OpenIGTLink server, as frames; see the module doc.

    Connects when made. Without a device in the address it waits up to
    ``silence_s`` seconds for the first IMAGE, whose device names the
    stream. ``spacing`` is the (row, col) mm of the frame last yielded,
    None when its matrix gives none.
    """

    retry = True
    realtime = True

    def __init__(self, spec: str, *, connect_timeout_s: float = 5.0, silence_s: float = 5.0) -> None:
        self.address = spec
        self.host, self.port, self.device = parse_address(spec)
        if not (connect_timeout_s > 0 and silence_s > 0):
            raise SourceError(f"{spec}: timeouts must be > 0, got {connect_timeout_s} and {silence_s}")
        self.connect_timeout_s = connect_timeout_s
        self.silence_s = silence_s
        self._sock: socket.socket | None = None
        self._held = None
        self._pending: list[str] = []  # warnings given before the capture listens (``on_warning``)
        self._passed_over: set[str] = set()
        self._connect()
        if self.device is None:
            try:
                self._held = self._next_image()
            except SourceError:
                self.close()
                raise
            self.device = self._held.device_name
        self.name, problem = stream_id(self.device)
        if problem is not None:
            self._say(f"{spec}: device name {self.device!r} is not a stream id ({problem}); streaming as {self.name!r}")

    def _say(self, message: str) -> None:
        self.warn(message)
        if self.on_warning is None:
            self._pending.append(message)

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as exc:
            raise SourceError(f"{self.address}: cannot connect ({exc.strerror or exc})") from None
        sock.settimeout(self.silence_s)
        self._sock = sock

    def _receive(self, size: int) -> bytes:
        """``size`` bytes from the server; SourceError when it closes, fails, or sends nothing for ``silence_s``."""
        assert self._sock is not None
        chunks, left = [], size
        while left:
            try:
                chunk = self._sock.recv(min(left, 1 << 20))
            except socket.timeout:
                raise SourceError(f"{self.address}: no message from the server in {self.silence_s:g} s") from None
            except OSError as exc:
                raise SourceError(f"{self.address}: connection lost ({exc.strerror or exc})") from None
            if not chunk:
                raise SourceError(f"{self.address}: the server closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _ours(self, message_type: str, device: str) -> bool:
        """True for an IMAGE of this stream's device (of any device, before it is known)."""
        return message_type == "IMAGE" and (self.device is None or device == self.device)

    def _message(self):
        """The next message pyigtl knows, decoded; None for a type it does not, or one it cannot decode."""
        from pyigtl.messages import MessageBase

        header = self._receive(MessageBase.IGTL_HEADER_SIZE)
        try:
            fields = MessageBase.parse_header(header)
        except (UnicodeDecodeError, ValueError):
            # Without a header the next message cannot be found in the byte stream: start it again.
            raise SourceError(f"{self.address}: not an OpenIGTLink message header (is this an OpenIGTLink server?)"
                              ) from None
        kind, device = fields["message_type"], fields["device_name"]
        if fields["body_size"] > MAX_BODY_BYTES:
            raise SourceError(f"{self.address}: a {kind or 'message'} of {fields['body_size']} bytes, over the "
                              f"{MAX_BODY_BYTES} taken (is this an OpenIGTLink server?)")
        body = self._receive(fields["body_size"])
        message = MessageBase.create_message(kind)
        if message is None:
            return None
        try:
            message.unpack(fields, body)
        except Exception as exc:  # noqa: BLE001 - pyigtl raises what struct and numpy raise on a bad body
            # Only an image of this stream is a frame left out (a gap in seq); the rest is said once.
            self.skip(1 if self._ours(kind, device) else 0,
                      f"{self.address}: a {kind} message of {device!r} cannot be decoded "
                      f"({type(exc).__name__}), left out")
            return None
        return message

    def _next_image(self):
        """The next IMAGE message of our device (of any, before the device is known)."""
        while True:
            message = self._message()
            if message is None or message.message_type != "IMAGE":
                continue
            if self._ours(message.message_type, message.device_name):
                return message
            if message.device_name not in self._passed_over:
                self._passed_over.add(message.device_name)
                self._say(f"{self.address}: images of device {message.device_name!r} passed over; this capture "
                          f"takes {self.device!r} (capture {SCHEME}{self.host}:{self.port}/{message.device_name} "
                          f"for those)")

    def __iter__(self) -> Iterator[tuple[np.ndarray, float | None]]:
        if self.on_warning is not None:
            for message in self._pending:
                self.on_warning(message)
            self._pending = []
        while True:
            if self._sock is None:
                raise SourceError(f"{self.address}: closed")
            if self._held is not None:
                message, self._held = self._held, None
            else:
                message = self._next_image()
            image, problem = image_frame(message)
            if image is None:
                self.skip(1, f"{self.address}: an IMAGE of {self.device!r} is {problem}, left out")
                continue
            self.spacing = image_spacing(message)
            # A sender that does not stamp its messages sends 0.
            yield image, message.timestamp if message.timestamp > 0 else None

    def reopen(self) -> None:
        self.close()
        self._connect()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --- scores out --------------------------------------------------------------------------


class IgtlServer:
    """pyigtl's OpenIGTLink server on ``port`` (0: a free one), loopback unless ``allow_remote``; one client at a time.

    pyigtl's server (its socket, its queue of 100 messages) with a client
    handler of our own: pyigtl's notices a client that left only when a
    send fails, spinning meanwhile, and prints a traceback for it. Here the
    client leaving is seen at once, logged in one line, and what was queued
    for it and not written is counted in ``lost``; a client that connects
    later gets only what is sent after. pyigtl's server takes over SIGINT
    and SIGTERM when made; they are given back at once, so the command's
    own stop handling stays in charge (and so it must be made in the main
    thread). ``close`` stops it.
    """

    def __init__(self, port: int = DEFAULT_OUT_PORT, *, allow_remote: bool = False, iface: str = "eth0") -> None:
        from pyigtl import OpenIGTLinkServer

        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            server = OpenIGTLinkServer(port=port, local_server=not allow_remote, iface=iface, start_now=False)
        except OSError as exc:
            raise ConfigError(f"port: cannot serve OpenIGTLink on port {port} ({exc.strerror or exc})") from None
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._serve_client(self.request, self.client_address)

        server.RequestHandlerClass = Handler
        self._server: OpenIGTLinkServer | None = server
        self._client: tuple | None = None
        self.lost = 0
        self.host, self.port = server.server_address[:2]
        server.start()
        logger.info("OpenIGTLink server on %s:%d", self.host, self.port)

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _serve_client(self, sock: socket.socket, peer: tuple) -> None:
        """Write the queued messages to one client until it leaves or the server stops."""
        server = self._server
        assert server is not None
        self._client = peer
        logger.info("OpenIGTLink client %s:%d connected", *peer[:2])
        why = "left"
        batch: list = []
        try:
            while not server.communication_thread_stop_requested:
                readable, _, _ = select.select([sock], [], [], _CLIENT_POLL_S)
                # What a client sends (its own STATUS, GET_ queries) asks nothing of a scores server.
                if readable and not sock.recv(1 << 16):
                    break
                with server.lock_outgoing_messages:
                    batch = list(server.outgoing_messages)
                    server.outgoing_messages.clear()
                while batch:
                    sock.sendall(batch[0].pack())
                    del batch[0]
        except OSError as exc:
            why = f"lost ({exc.strerror or exc})"
        finally:
            self._client = None
            with server.lock_outgoing_messages:
                batch += server.outgoing_messages
                server.outgoing_messages.clear()
            self.lost += len(batch)
            if batch:
                logger.warning("OpenIGTLink client %s:%d %s; %d messages queued for it not sent", peer[0], peer[1],
                               why, len(batch))
            else:
                logger.info("OpenIGTLink client %s:%d %s", peer[0], peer[1], why)

    def send(self, message) -> str | None:
        """Queue a pyigtl message for the client; None when queued, else why not (``no client``, ``queue full``)."""
        server = self._server
        if server is None or self._client is None:
            return "no client"
        with server.lock_outgoing_messages:
            queue = server.outgoing_messages
            if queue.maxlen is not None and len(queue) >= queue.maxlen:
                return "queue full"
            queue.append(message)
        return None

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> IgtlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class IgtlOutConfig(ConsumerConfig):
    """Settings of ``fetalhead igtl-out`` (an ``[igtl-out]`` TOML table).

    The consumer's settings (``stream.consumer.ConsumerConfig``), and the
    OpenIGTLink server's: ``port``, and ``allow_remote`` with ``iface``, the
    network interface to serve on (pyigtl serves loopback or one interface).
    """

    port: int = setting(DEFAULT_OUT_PORT, "OpenIGTLink port to serve the scores on (18944 is often PLUS's own)")
    allow_remote: bool = setting(False, "serve on the network interface --iface instead of loopback")
    iface: str = setting("eth0", "network interface to serve on with --allow-remote")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.port <= 65535, f"port: must be in [0, 65535], got {self.port}")


@dataclasses.dataclass(frozen=True)
class IgtlOutStats:
    """What one ``igtl_out`` run did with the scores it received.

    ``sent`` were queued for a client, ``unsent`` never were (by reason),
    ``lost`` were queued for a client that left before they were written.
    """

    scores: int
    sent: int
    unsent: dict[str, int]
    lost: int


def score_text(score: protocol.Score, verdict: bool) -> str:
    """The STRING message's text of ``score`` with the smoothed ``verdict``: one JSON object (see the module doc)."""
    return json.dumps({"stream": score.stream, "seq": score.seq, "score": round(float(score.score), 6),
                       "decision": class_name(score.decision), "verdict": class_name(verdict),
                       "threshold": score.threshold, "flags": list(score.flags)}, separators=(",", ":"))


def device_name(stream: str) -> str:
    """The OpenIGTLink device name of ``stream``: its id, cut to 20 bytes."""
    return stream.encode()[:DEVICE_NAME_BYTES].decode(errors="ignore")


def score_message(score: protocol.Score, verdict: bool):
    """The pyigtl StringMessage of ``score``: device name the stream id (``device_name``), time ``t_capture``."""
    from pyigtl import StringMessage

    return StringMessage(score_text(score, verdict), timestamp=score.t_capture, device_name=device_name(score.stream))


def igtl_out(config: IgtlOutConfig, server: IgtlServer, stop_event: threading.Event | None = None,
             *, warn_interval_s: float = 5.0) -> IgtlOutStats:
    """Send one STRING on ``server`` for every score on ``config.sub``; returns the counts.

    Runs until ``stop_event`` is set, or, with ``config.until_eos``, until
    every stream seen has ended. A score that cannot be sent is counted in
    ``unsent`` by reason and logged (``net.Throttled``, every
    ``warn_interval_s`` seconds per reason).
    """
    stop = stop_event if stop_event is not None else threading.Event()
    verdicts = StreamVerdicts(config.hold)
    warn = net.Throttled(logger, warn_interval_s)
    streams: dict[str, bool] = {}  # stream -> ended
    scores = sent = 0
    unsent: dict[str, int] = {}
    shortened: set[str] = set()
    lost_before = server.lost
    with consumer.subscriber(config) as sub:
        logger.info("igtl-out: scores of %s from %s to OpenIGTLink port %d", config.stream or "every stream",
                    config.sub, server.port)
        while not (stop.is_set() or (config.until_eos and streams and all(streams.values()))):
            for msg in sub.receive(0.1):
                if isinstance(msg, protocol.EndOfStream):
                    streams[msg.stream] = True
                    verdicts.end(msg.stream)
                    continue
                if not isinstance(msg, protocol.Score):
                    continue
                scores += 1
                streams[msg.stream] = False
                if device_name(msg.stream) != msg.stream and msg.stream not in shortened:
                    shortened.add(msg.stream)
                    logger.warning("igtl-out: stream id %r is over OpenIGTLink's %d-byte device name: sent as %r "
                                   "(the text names the whole id)", msg.stream, DEVICE_NAME_BYTES,
                                   device_name(msg.stream))
                verdict = verdicts.update(msg)
                why = server.send(score_message(msg, verdict.head))
                if why is None:
                    sent += 1
                    continue
                unsent[why] = unsent.get(why, 0) + 1
                warn.warning(why, f"igtl-out: score {msg.stream} seq {msg.seq} not sent ({why}: "
                                  f"{unsent[why]} so far)")
    if unsent:
        logger.warning("igtl-out: %d of %d scores not sent (%s)", sum(unsent.values()), scores,
                       ", ".join(f"{why}: {count}" for why, count in unsent.items()))
    return IgtlOutStats(scores, sent, unsent, server.lost - lost_before)
