"""The live web view: each stream's image with its verdict, its score timeline and its health (``fetalhead view``).

A sonographer beside the scanner, or a researcher on a second screen, opens
one page and sees, per stream, the ultrasound image with the smoothed
verdict large on it, how long the head has been in view, the last
``history_s`` seconds of scores against the threshold, and the figures an
engineer needs (fps, latency p50/p99, drops, process health).

It is a consumer of the worker's scores socket like ``watch``: frames come
with ``fetalhead worker --forward-frames``. It never slows the worker: the
subscriber thread only folds messages into ``ViewState``; the newest frame
of each stream wins, and is downscaled to ``image_width`` and JPEG-encoded
at most ``max_fps`` times a second whatever the stream's rate; each
browser gets the newest state and images at most ``max_fps`` times a
second, and a browser that reads slowly makes its own connection skip
images (the WebSocket write waits for it), never the worker or the others.

The server is aiohttp: one library for HTTP, WebSocket and the event loop,
run in-process beside the ZeroMQ thread. Ultrasound images are patient
data: it binds loopback unless told ``allow_remote``, and then requires an
access token on every request and WebSocket (query ``?token=`` once, then
an HttpOnly same-site cookie). Every response carries a strict
Content-Security-Policy; the page loads nothing but its own three files
(``stream/web/``), and the WebSocket refuses other origins.

A stream whose scores stop while it has not ended (its worker died, and
``fetalhead run`` or another supervisor is restarting it) is tagged "no
scores for N s" once ``lost_after_s`` passed without one; when scores come
back, the outage joins the stream's list of recent gaps (when, how long).

With ``fetalhead worker --saliency``, each stream's newest heat map (a
``saliency`` message) goes to the page with its state, and the page draws
it over the image (a toggle in its header turns them off).

``ViewState`` is pure and thread-safe: tests feed it protocol messages.
``make_app`` builds the aiohttp application; ``view`` runs it all.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import struct
import threading
import time
from importlib import resources
from typing import Callable

import cv2
import numpy as np
from aiohttp import WSMsgType, web

from models.errors import ConfigError
from models.settings import check, setting
from stream import keys, protocol
from stream.consumer import ConsumerConfig, subscriber
from stream.watch import StreamBoard

logger = logging.getLogger(__name__)

DEFAULT_ADDR = "127.0.0.1:8000"
TOKEN_COOKIE = "fetalhead_token"
# Points a stream's timeline keeps, whatever its rate: 60 s at 120 fps.
_MAX_POINTS = 7200
# Outages of a stream's scores kept for the page: the recent ones are what a person looks back on.
_MAX_GAPS = 8
_RECEIVE_S = 0.02
_LAST_PUSH_S = 1.0
_STATIC = {"/": ("index.html", "text/html"), "/view.js": ("view.js", "text/javascript"),
           "/view.css": ("view.css", "text/css")}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store", "X-Frame-Options": "DENY", "Cross-Origin-Opener-Policy": "same-origin",
            "Cross-Origin-Resource-Policy": "same-origin"}


def split_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); ConfigError naming the address otherwise."""
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    check(bool(sep and host and port.isdigit() and 0 <= int(port) <= 65535),
          f"addr: {addr!r} must be HOST:PORT, e.g. {DEFAULT_ADDR}")
    return host, int(port)


def check_free(addr: str) -> None:
    """ConfigError naming ``addr`` unless the page could be served there now."""
    host, port = split_addr(addr)
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise ConfigError(f"addr: cannot serve on {addr}: {exc.strerror or exc}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class ViewConfig(ConsumerConfig):
    """Settings of ``fetalhead view`` (a ``[view]`` TOML table); the consumer settings as for ``watch``.

    ``addr`` is where the page is served. A non-loopback ``addr`` needs
    ``allow_remote``, which turns the access token on (``token``, or a
    random one made at start). ``max_fps`` bounds the images and state
    updates each browser gets per second per stream; ``image_width`` is the
    width images are downscaled to (never up); ``history_s`` the timeline's
    length.
    """

    addr: str = setting(DEFAULT_ADDR, "HOST:PORT to serve the page on")
    allow_remote: bool = setting(False, "allow a non-loopback --addr; an access token is then required")
    token: str | None = setting(None, "access token every request must carry",
                                shown="none on loopback; a random one with --allow-remote")
    max_fps: float = setting(30.0, "most images and updates per second a browser gets per stream")
    image_width: int = setting(640, "width in pixels images are downscaled to for the page")
    jpeg_quality: int = setting(80, "JPEG quality of the images sent to the page (1-100)")
    history_s: float = setting(60.0, "seconds of scores the timeline shows")
    hwm: int = setting(256, "receive queue in messages")
    lost_after_s: float = setting(2.0, "seconds without a score after which a stream that has not ended is "
                                       "shown as losing its scores", flag="lost-after")

    def __post_init__(self) -> None:
        super().__post_init__()
        host, _ = split_addr(self.addr)
        check(self.allow_remote or is_loopback(host),
              f"addr: {host} is not a loopback address; the page shows patient images, so serving it to the "
              f"network needs --allow-remote (and then an access token)")
        check(self.token is None or len(self.token) >= 16,
              "token: must be at least 16 characters (leave it out to get a random one)")
        check(0 < self.max_fps <= 120, f"max_fps: must be in (0, 120], got {self.max_fps}")
        check(16 <= self.image_width <= 4096, f"image_width: must be in [16, 4096], got {self.image_width}")
        check(1 <= self.jpeg_quality <= 100, f"jpeg_quality: must be in [1, 100], got {self.jpeg_quality}")
        check(1 <= self.history_s <= 3600, f"history_s: must be in [1, 3600], got {self.history_s}")
        check(self.lost_after_s > 0, f"lost_after_s: must be > 0, got {self.lost_after_s}")

    def access_token(self) -> str | None:
        """The token requests must carry: the given one, a new random one with ``allow_remote``, else None."""
        if self.token is not None:
            return self.token
        return secrets.token_urlsafe(24) if self.allow_remote else None


def downscale(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` as uint8 BGR no wider than ``width`` (aspect kept; never enlarged)."""
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype != np.uint8:
        # 16-bit frames: keep the top byte, as a display would.
        image = (image >> 8).astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
    height, w = image.shape[:2]
    if w > width:
        image = cv2.resize(image, (width, max(1, round(height * width / w))), interpolation=cv2.INTER_AREA)
    return image


@dataclasses.dataclass
class _Image:
    seq: int
    jpeg: bytes
    encoded_at: float


@dataclasses.dataclass
class _Timeline:
    """A stream's recent scores, numbered so each browser can be sent only what it has not had."""

    points: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=_MAX_POINTS))
    count: int = 0
    scored_at: float | None = None  # the view's clock at its last score; None before one and after its end
    # (the view's clock when the scores stopped, seconds until they came back), oldest first
    gaps: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=_MAX_GAPS))


class ViewState:
    """What the page shows, folded from protocol messages; safe to use from the subscriber and the server threads.

    ``update(msg)`` folds one message in (frames are kept, newest wins);
    ``encode_due(now)`` JPEG-encodes each stream's newest frame when it is
    newer than the last encoded one and ``1 / max_fps`` has passed;
    ``snapshot(cursor)`` is the page's state as a JSON-able dict with the
    timeline points after ``cursor`` (stream -> count already sent), and
    ``images(sent)`` the encoded images newer than ``sent`` (stream -> seq).
    """

    def __init__(self, config: ViewConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        # The board's verdicts are the ones shown: the same hysteresis as watch and record.
        self.board = StreamBoard(clock=clock, hold=config.hold)
        self._lock = threading.Lock()
        self._timelines: dict[str, _Timeline] = {}
        self._newest: dict[str, protocol.Frame] = {}
        self._images: dict[str, _Image] = {}
        # The newest heat map of each stream (worker --saliency), as the page draws it.
        self._saliency: dict[str, dict] = {}
        self.encoded = 0
        self.frames_seen = 0

    def update(self, msg: protocol.Message, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        with self._lock:
            self.board.update(msg, now)
            if isinstance(msg, protocol.Frame):
                self.frames_seen += 1
                newest = self._newest.get(msg.stream)
                if newest is None or msg.seq >= newest.seq or msg.seq == 0:
                    self._newest[msg.stream] = msg
            elif isinstance(msg, protocol.Score):
                self._score(msg, now)
            elif isinstance(msg, protocol.Saliency):
                self._saliency[msg.stream] = {
                    "seq": msg.seq, "score": msg.score, "layer": msg.layer, "frame_shape": list(msg.frame_shape),
                    "square": list(msg.square), "shape": list(msg.shape), "heat": list(msg.heat)}
            elif isinstance(msg, protocol.EndOfStream) and msg.stream in self._timelines:
                # An ended stream is not missing its scores, and a new run of it starts with none owed.
                self._timelines[msg.stream].scored_at = None

    def _score(self, msg: protocol.Score, now: float) -> None:
        verdict = self.board.streams[msg.stream].verdict
        line = self._timelines.setdefault(msg.stream, _Timeline())
        if line.scored_at is not None and now - line.scored_at >= self.config.lost_after_s:
            line.gaps.append((line.scored_at, now - line.scored_at))
        line.scored_at = now
        line.points.append((msg.seq, msg.t_capture, msg.score, int(verdict.head), int(msg.decision),
                            protocol.FLAG_WARMUP in msg.flags, protocol.FLAG_GAP in msg.flags))
        line.count += 1

    @property
    def ended(self) -> bool:
        """Every stream seen has ended."""
        with self._lock:
            return self.board.all_ended

    def encode_due(self, now: float | None = None) -> int:
        """Encode the frames that are due; returns how many were encoded."""
        now = time.monotonic() if now is None else now
        # A millisecond's slack: a source at exactly max_fps must not lose every other frame to jitter.
        period = 1.0 / self.config.max_fps - 1e-3
        with self._lock:
            due = [(name, frame) for name, frame in self._newest.items()
                   if (image := self._images.get(name)) is None
                   or (frame.seq != image.seq and now - image.encoded_at >= period)]
            for name, _ in due:
                del self._newest[name]
        count = 0
        for name, frame in due:
            try:
                pixels = downscale(frame.image(), self.config.image_width)
            except (protocol.ProtocolError, ValueError, cv2.error) as exc:
                logger.warning("view: frame %d of %s cannot be shown: %s", frame.seq, name, exc)
                continue
            ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
            if ok:
                with self._lock:
                    self._images[name] = _Image(frame.seq, jpeg.tobytes(), now)
                    self.encoded += 1
                count += 1
        return count

    def snapshot(self, cursor: dict[str, int] | None = None, now: float | None = None) -> dict:
        """The page's state; ``cursor`` (stream -> points already sent) is advanced in place."""
        cursor = {} if cursor is None else cursor
        now = self.clock() if now is None else now
        with self._lock:
            rows = self.board.rows(now)
            streams, points = [], {}
            for row in rows:
                name = row["stream"]
                line = self._timelines.get(name)
                verdict = self.board.streams[name].verdict
                image = self._images.get(name)
                # The page draws its own timeline from the points; the board's short history is for watch.
                shown = {k: v for k, v in row.items() if k != "history"}
                streams.append({**_jsonable(shown), "since_seq": verdict.since_seq if verdict else None,
                                "image_seq": image.seq if image else None, "saliency": self._saliency.get(name),
                                **self._lost(line, now)})
                if line is not None:
                    have = cursor.get(name, 0)
                    new = min(line.count - have, len(line.points))
                    if have > line.count:
                        new = len(line.points)
                    if new > 0:
                        points[name] = [list(p) for p in list(line.points)[-new:]]
                    cursor[name] = line.count
            processes = [_jsonable({k: v for k, v in p.items() if k != "stats"}) for p in self.board.processes(now)]
            alerts = list(self.board.alerts(now).values())
            events = [{k: e[k] for k in ("level", "stream", "message", "age_s")} for e in self.board.recent_events(now)]
        return {"type": "state", "now": now, "history_s": self.config.history_s, "hold": self.config.hold,
                "streams": streams, "points": points, "processes": processes, "alerts": alerts, "events": events}

    def _lost(self, line: _Timeline | None, now: float) -> dict:
        """``no_scores_s``: seconds without a score, once over ``lost_after_s`` (else None); ``score_gaps``:
        the recent outages as [seconds ago they began, seconds they lasted], newest first."""
        if line is None:
            return {"no_scores_s": None, "score_gaps": []}
        silent = None if line.scored_at is None else now - line.scored_at
        return {"no_scores_s": silent if silent is not None and silent >= self.config.lost_after_s else None,
                "score_gaps": [[now - began, lasted] for began, lasted in reversed(line.gaps)]}

    def images(self, sent: dict[str, int]) -> list[tuple[str, int, bytes]]:
        """(stream, seq, jpeg) of each image not yet sent; ``sent`` (stream -> seq) is advanced in place."""
        with self._lock:
            out = [(name, image.seq, image.jpeg) for name, image in self._images.items()
                   if sent.get(name) != image.seq]
        for name, seq, _ in out:
            sent[name] = seq
        return out


def _jsonable(row: dict) -> dict:
    """A board row with what JSON cannot hold made plain (tuples to lists, non-finite floats to None)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, float) and not np.isfinite(value):
            value = None
        out[key] = value
    return out


def image_message(stream: str, seq: int, jpeg: bytes) -> bytes:
    """A binary WebSocket message: big-endian u16 header length, the JSON header {stream, seq}, the JPEG."""
    header = json.dumps({"stream": stream, "seq": seq}).encode()
    return struct.pack(">H", len(header)) + header + jpeg


def _page(name: str) -> bytes:
    return resources.files("stream").joinpath("web", name).read_bytes()


def make_app(state: ViewConfig | ViewState, token: str | None) -> web.Application:
    """The aiohttp application: the page's three files and ``/ws``, behind the token when there is one."""
    state = state if isinstance(state, ViewState) else ViewState(state)
    config = state.config
    period = 1.0 / config.max_fps
    pages = {path: (_page(name), kind) for path, (name, kind) in _STATIC.items()}

    @web.middleware
    async def guard(request: web.Request, handler):
        if token is None:
            return await handler(request)
        given = request.query.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(status=403, text="fetalhead view: wrong or missing access token\n")
        response = await handler(request)
        if "token" in request.query and not isinstance(response, web.WebSocketResponse):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    async def secure(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(_HEADERS)

    async def page(request: web.Request) -> web.Response:
        body, kind = pages[request.path]
        return web.Response(body=body, content_type=kind, charset="utf-8")

    async def socket(request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin.partition("://")[2] != request.host:
            return web.Response(status=403, text=f"fetalhead view: WebSocket from another origin ({origin}) refused\n")
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=4096)
        await ws.prepare(request)
        reader = asyncio.ensure_future(_drain_client(ws))
        cursor: dict[str, int] = {}
        sent: dict[str, int] = {}
        try:
            while not ws.closed and not reader.done():
                started = time.monotonic()
                await ws.send_str(json.dumps(state.snapshot(cursor), allow_nan=False))
                for stream, seq, jpeg in state.images(sent):
                    await ws.send_bytes(image_message(stream, seq, jpeg))
                await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            reader.cancel()
        return ws

    app = web.Application(middlewares=[guard], client_max_size=4096)
    app.on_response_prepare.append(secure)
    for path in pages:
        app.router.add_get(path, page)
    app.router.add_get("/ws", socket)
    return app


async def _drain_client(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the page sends, so pings, pongs and the close handshake are handled."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


def _subscribe(state: ViewState, stop: threading.Event, failed: list[BaseException]) -> None:
    try:
        ended_at = None
        with subscriber(state.config) as sub:
            while not stop.is_set():
                for msg in sub.receive(_RECEIVE_S):
                    state.update(msg)
                state.encode_due()
                if state.config.until_eos and state.ended:
                    ended_at = ended_at or time.monotonic()
                    # The browsers get the last state before the page goes away.
                    if time.monotonic() - ended_at >= _LAST_PUSH_S:
                        stop.set()
                else:
                    ended_at = None
    except BaseException as exc:
        failed.append(exc)
        stop.set()


def view(config: ViewConfig, stop_event: threading.Event | None = None, *,
         on_ready: Callable[[str], None] | None = None, token: str | None = None) -> ViewState:
    """Serve the page until stopped; ``on_ready(url)`` once it listens (the URL carries the token, if any).

    ``token`` None takes ``config.access_token()``. Returns the state with
    everything seen. A port already in use is a ConfigError naming it.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    token = token if token is not None else config.access_token()
    # The subscriber thread makes its own socket; its keys are read here so a bad one stops us before serving.
    keys.client_keys(config.keys, config.key_name or "client", "worker", config.server_key)
    state = ViewState(config)
    failed: list[BaseException] = []
    thread = threading.Thread(target=_subscribe, args=(state, stop, failed), name="view-subscriber", daemon=True)
    thread.start()
    try:
        asyncio.run(_serve(state, token, stop, on_ready))
    finally:
        stop.set()
        thread.join(timeout=5.0)
    if failed:
        raise failed[0]
    return state


async def _serve(state: ViewState, token: str | None, stop: threading.Event,
                 on_ready: Callable[[str], None] | None) -> None:
    host, port = split_addr(state.config.addr)
    runner = web.AppRunner(make_app(state, token), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=1.0)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"addr: cannot serve on {state.config.addr}: {exc.strerror or exc}") from None
    bound = runner.addresses[0][1] if port == 0 else port
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
    logger.info("view: serving %s on http://%s:%d/", state.config.sub, shown, bound)
    if on_ready is not None:
        on_ready(url)
    try:
        while not stop.is_set():
            await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()
