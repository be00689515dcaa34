"""ZeroMQ sockets set up one way for capture, worker and consumers (docs/protocol.md, section 1).

The message format lives in stream/protocol.py; this module opens the
sockets and keeps the receiving end of a link alive. Every socket made here
is a context manager that closes it (``with socket(...) as s``).

Oversized messages (over ``max_size``) are refused by ZeroMQ itself through
ZMQ_MAXMSGSIZE, before any allocation, and ZeroMQ then closes that
connection. libzmq 4.3 treats this as a protocol error: a *connecting*
receiver is not reconnected automatically and goes silent, so a consumer that
misses heartbeats should ``disconnect`` and ``connect`` again; a *binding*
receiver is reconnected by the sender after ZMQ_RECONNECT_IVL.
tests/stream/test_net.py pins this behaviour down. ``ConnectionWatch`` tells
such a refusal from an ordinary disconnect, so the receiver can say so in one
line and reconnect at once. ZeroMQ also refuses a pair of socket types that do
not belong together (a live worker's SUB against a lossless capture's PUSH,
or PULL against PUB) in the handshake, closing the connection the same way;
``ConnectionWatch`` tells that apart too (``WRONG_SOCKET_TYPE``), because the
handshake never completed, so a receiver can say which mode to start.

``Inbox`` is that receiving end for every process that connects (the
worker's frames, every consumer's scores): a connecting socket that
reconnects after ``silence_s`` without a message and at once where ZeroMQ
closed a connection for good, reporting each closed connection through one
callback. ``Subscriber`` is the consumer side of the scores socket built on
it, handing out decoded messages; ``Throttled`` is the one rate limit of
warnings about a flood of bad input.

With ``curve`` (``stream.keys``) a socket is encrypted and authenticated
with ZeroMQ CURVE: a binding socket is the CURVE server and admits only the
client keys of its allow list, checked by one ZAP handler per process
(``stop_authenticator`` ends it before the context is terminated).
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import ipaddress
import logging
import signal
import socket as pysocket
import threading
import time
from typing import Callable, Iterator, Sequence

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from models.errors import ConfigError
from stream import protocol
from stream.keys import ClientKeys, ServerKeys
from stream.protocol import DEFAULT_MAX_SIZE

log = logging.getLogger(__name__)

DEFAULT_PUB = "tcp://127.0.0.1:5555"
DEFAULT_SCORES = "tcp://127.0.0.1:5556"
# ZeroMQ's default of 1000 queued messages would be 6 GB and half a minute of
# stale raw 1080p frames; a short queue keeps memory bounded and frames fresh.
DEFAULT_HWM = 16
# Seconds: notice a peer on another machine that vanished without closing its
# TCP connection (power loss, cable) in about 20 s instead of hours.
_KEEPALIVE_IDLE_S = 10
_KEEPALIVE_INTERVAL_S = 5
_KEEPALIVE_PROBES = 2

_LOCAL_SCHEMES = ("ipc", "inproc")

# Why ZeroMQ closed a connection for good (``ConnectionWatch.poll``).
REFUSED_MESSAGE = "refused_message"
AUTH_FAILED = "auth_failed"
WRONG_SOCKET_TYPE = "wrong_socket_type"


def context() -> zmq.Context:
    """The process-wide ZeroMQ context that every socket here is made from."""
    return zmq.Context.instance()


def _tcp_host(addr: str) -> str:
    """The host part of ``tcp://host:port`` without IPv6 brackets; ConfigError if malformed."""
    rest = addr.partition("://")[2]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port:
        raise ConfigError(f"address {addr!r}: expected tcp://host:port, e.g. {DEFAULT_PUB}")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name such as eth0, or a host name
        return False


def check_bind_address(addr: str, *, allow_remote: bool, encrypted: bool = False, log_remote: bool = True) -> None:
    """Refuse to bind ``addr`` where other machines can reach it, unless ``allow_remote``.

    Local: ``ipc://``, ``inproc://``, and ``tcp://`` on 127.x.x.x, ``localhost``
    or ``[::1]``. Anything else (``tcp://*:5555``, ``tcp://0.0.0.0:5555``, an
    interface or host name, multicast transports) raises ConfigError, or with
    ``allow_remote`` logs a warning unless ``encrypted`` (CURVE is on): frames
    are patient images. ``log_remote=False`` only checks, for a caller that
    checks early and binds through ``socket`` (which logs) later.
    """
    scheme, sep, _ = addr.partition("://")
    if not sep:
        raise ConfigError(f"address {addr!r}: expected scheme://..., e.g. {DEFAULT_PUB}")
    if scheme in _LOCAL_SCHEMES:
        return
    if scheme == "tcp" and _is_loopback(_tcp_host(addr)):
        return
    if not allow_remote:
        raise ConfigError(f"address {addr!r}: not a loopback address; binding it exposes frames to the network, "
                          f"so it needs allow_remote (--allow-remote), and --keys DIR to encrypt them")
    if not log_remote:
        return
    if encrypted:
        log.info("binding %s: reachable from other machines; CURVE-encrypted, only allowed keys connect", addr)
    else:
        log.warning("binding %s: reachable from other machines, NOT encrypted or authenticated (patient images "
                    "in the clear); give --keys DIR for CURVE encryption (make keys with fetalhead keys DIR)", addr)


class _AllowList:
    """ZAP credentials provider of one binding socket: admits the keys of its allow list.

    A refused client retries every ZMQ_RECONNECT_IVL, so each key is
    reported once, not on every attempt.
    """

    def __init__(self, keys: ServerKeys) -> None:
        self.keys = keys
        self.refused: set[bytes] = set()

    def callback(self, domain: str, client_key: bytes) -> bool:
        if client_key in self.keys.allowed:
            return True
        if client_key not in self.refused:
            self.refused.add(client_key)
            log.warning("refused a CURVE client with key %s...: not in the allow list %s",
                        client_key[:8].decode("ascii", "replace"), self.keys.allow)
        return False


_auth: ThreadAuthenticator | None = None
_auth_lock = threading.Lock()


def _zap_domain(keys: ServerKeys) -> str:
    """The ZAP domain whose handler admits ``keys.allowed``, starting this process's handler if needed.

    One domain per allow list, so sockets with different lists can live in
    one process (tests run capture and worker as threads).
    """
    global _auth
    digest = hashlib.sha256(b"".join(sorted(keys.allowed)) + keys.public).hexdigest()[:16]
    domain = f"fetalhead-{digest}"
    with _auth_lock:
        if _auth is None:
            _auth = ThreadAuthenticator(context(), log=logging.getLogger(f"{__name__}.zap"))
            _auth.start()
        _auth.configure_curve_callback(domain, _AllowList(keys))
    return domain


def stop_authenticator() -> None:
    """End the ZAP handler, if one was started: terminating the context waits for its sockets."""
    global _auth
    with _auth_lock:
        if _auth is not None:
            _auth.stop()
            _auth = None


def _apply_curve(sock: zmq.Socket, curve: ServerKeys | ClientKeys) -> None:
    if isinstance(curve, ServerKeys):
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
        sock.setsockopt_string(zmq.ZAP_DOMAIN, _zap_domain(curve))
        # Fail closed: without a ZAP handler (stopped at exit) libzmq would admit any client.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    else:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)


def socket(kind: int, *, bind: str | None = None, connect: str | None = None, hwm: int = DEFAULT_HWM,
           conflate: bool = False, max_size: int = DEFAULT_MAX_SIZE, linger: int = 0,
           subscribe: list[bytes] | None = None, allow_remote: bool = False,
           curve: ServerKeys | ClientKeys | None = None) -> zmq.Socket:
    """A ZeroMQ socket of ``kind`` (``zmq.PUB``, ``zmq.SUB``, ``zmq.PUSH`` ...), bound or connected.

    Exactly one of ``bind``/``connect``; a bind address goes through
    ``check_bind_address`` first. ``hwm`` caps the send and receive queues in
    messages (0: unlimited); ``conflate`` keeps only the newest message (one
    for the whole socket, so subscribe to a single stream with it);
    ``max_size`` bytes is ZMQ_MAXMSGSIZE; ``linger`` is how many milliseconds
    ``close`` waits for unsent messages. ``subscribe`` lists topic prefixes
    for a SUB socket (``protocol.topic(stream)``); None subscribes to all.
    ``curve``: ServerKeys for a CURVE server (only with ``bind``), ClientKeys
    for a CURVE client (only with ``connect``), None for no encryption.
    Failing to bind or connect is a ConfigError naming the address.
    """
    if (bind is None) == (connect is None):
        raise ValueError(f"socket needs exactly one of bind= or connect=, got bind={bind!r}, connect={connect!r}")
    if isinstance(curve, ServerKeys) and bind is None or isinstance(curve, ClientKeys) and connect is None:
        raise ValueError(f"{type(curve).__name__} are for a socket that {'binds' if connect else 'connects'}")
    if bind is not None:
        check_bind_address(bind, allow_remote=allow_remote, encrypted=curve is not None)
    addr = bind if bind is not None else connect
    sock = _configured(kind, [addr], hwm=hwm, conflate=conflate, max_size=max_size, linger=linger,
                       subscribe=subscribe, curve=curve)
    try:
        _attach(sock, addr, bind=bind is not None)
    except BaseException:
        sock.close(linger=0)
        raise
    log.debug("%s socket %s %s", zmq.SocketType(kind).name, "bound to" if bind else "connected to", addr)
    return sock


def _configured(kind: int, addrs: Sequence[str], *, hwm: int, conflate: bool, max_size: int, linger: int,
                subscribe: list[bytes] | None, curve: ServerKeys | ClientKeys | None) -> zmq.Socket:
    """A socket with every option of ``socket`` set, not yet bound or connected to ``addrs``."""
    if subscribe is not None and kind != zmq.SUB:
        raise ValueError(f"subscribe is only for SUB sockets, got socket type {kind}")
    if hwm < 0:
        raise ValueError(f"hwm must be >= 0, got {hwm}")
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    if linger < 0:
        raise ValueError(f"linger must be >= 0, got {linger}")
    sock = context().socket(kind)
    try:
        # Options apply to connections made after they are set, so all come before bind/connect.
        sock.setsockopt(zmq.LINGER, linger)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, max_size)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, _KEEPALIVE_IDLE_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, _KEEPALIVE_INTERVAL_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, _KEEPALIVE_PROBES)
        if any("[" in addr for addr in addrs):
            # Only for bracketed IPv6 addresses: with IPv6 on, "localhost" may resolve to ::1 only.
            sock.setsockopt(zmq.IPV6, 1)
        if conflate:
            sock.setsockopt(zmq.CONFLATE, 1)
        if curve is not None:
            _apply_curve(sock, curve)
        if kind == zmq.SUB:
            for prefix in [b""] if subscribe is None else subscribe:
                sock.setsockopt(zmq.SUBSCRIBE, prefix)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def _attach(sock: zmq.Socket, addr: str, *, bind: bool) -> None:
    """Bind or connect ``sock`` to ``addr``; ConfigError naming the address when it cannot."""
    try:
        if bind:
            sock.bind(addr)
        else:
            sock.connect(addr)
    except zmq.ZMQError as exc:
        raise ConfigError(f"address {addr!r}: cannot {'bind' if bind else 'connect'} ({exc})") from None


class ConnectionWatch:
    """Which connections of a connecting socket ZeroMQ has closed for good, and why.

    libzmq 4.3 closes a connection after a protocol error, which is what a
    message over ZMQ_MAXMSGSIZE is, and does not reconnect it; after an
    ordinary disconnect (the peer went away) it reconnects by itself and
    reports CONNECT_RETRIED at once. So a DISCONNECTED with no retry for the
    same endpoint within ``grace_s`` is a refused message, or, when the
    connection never completed its handshake, a peer whose socket type does
    not go with ours (ZeroMQ checks the types in the handshake: SUB takes
    only PUB, PULL only PUSH). A failed CURVE handshake (the server refused
    our key, or we have the wrong server key) is reported as such.
    ``poll()`` returns ``(endpoint, reason)`` pairs, reason
    ``REFUSED_MESSAGE``, ``WRONG_SOCKET_TYPE`` or ``AUTH_FAILED``.
    Connections are seen from the moment the watch is made, so make it
    before connecting.
    """

    _RETRIED = frozenset({zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECT_DELAYED, zmq.EVENT_CONNECTED})
    _AUTH_FAILED = frozenset({zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL})

    def __init__(self, sock: zmq.Socket, *, grace_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self.clock = clock
        self._sock = sock
        events = (zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                  | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        for event in self._RETRIED:
            events |= event
        self._monitor = sock.get_monitor_socket(events)
        self._closed_at: dict[str, tuple[float, str]] = {}
        self._auth_failed: set[str] = set()
        self._handshaking: set[str] = set()

    def poll(self) -> list[tuple[str, str]]:
        """Connections closed for good since the last call, as (endpoint, reason)."""
        found = []
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            endpoint = event["endpoint"].decode("utf-8", "replace")
            if event["event"] == zmq.EVENT_DISCONNECTED:
                # A failed handshake closes its connection too; it is reported once, as auth_failed.
                if endpoint not in self._auth_failed:
                    reason = WRONG_SOCKET_TYPE if endpoint in self._handshaking else REFUSED_MESSAGE
                    self._closed_at[endpoint] = (self.clock(), reason)
                self._auth_failed.discard(endpoint)
                self._handshaking.discard(endpoint)
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshaking.discard(endpoint)
            elif event["event"] in self._RETRIED:
                self._closed_at.pop(endpoint, None)
                if event["event"] == zmq.EVENT_CONNECTED:
                    self._handshaking.add(endpoint)
            elif event["event"] in self._AUTH_FAILED:
                self._auth_failed.add(endpoint)
                found.append((endpoint, AUTH_FAILED))
        now = self.clock()
        for endpoint, (at, reason) in list(self._closed_at.items()):
            if now - at >= self.grace_s:
                del self._closed_at[endpoint]
                found.append((endpoint, reason))
        return found

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.disable_monitor()
        self._monitor.close(linger=0)


def recv(sock: zmq.Socket, timeout_s: float | None) -> bytes | None:
    """The next message on ``sock``, or None if none arrives within ``timeout_s`` seconds.

    ``timeout_s=None`` waits indefinitely.
    """
    if timeout_s is not None and timeout_s < 0:
        raise ValueError(f"timeout_s must be >= 0 or None, got {timeout_s}")
    timeout_ms = None if timeout_s is None else round(timeout_s * 1000)
    if sock.poll(timeout_ms, zmq.POLLIN):
        return sock.recv()
    return None


class Throttled:
    """At most one line per key every ``interval_s`` seconds on ``logger``, counting the ones held back.

    A flood of bad messages is then a line every few seconds, each saying
    how many of its kind came since the last one. ``warning`` and ``error``
    return whether they logged, so a caller can send its own word (a Status)
    at the same pace.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 5.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def warning(self, key: str, message: str) -> bool:
        return self._log(logging.WARNING, key, message)

    def error(self, key: str, message: str) -> bool:
        return self._log(logging.ERROR, key, message)

    def _log(self, level: int, key: str, message: str) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] += 1
            return False
        held = self._held.pop(key, 0)
        self._last[key] = now
        what = logging.getLevelName(level).lower()
        self.logger.log(level, "%s%s", message, f" (and {held} more {key} since the last {what})" if held else "")
        return True


class Inbox:
    """A connecting socket (SUB or PULL) on ``addrs`` that keeps its connections alive.

    ``wait(timeout_s)`` first reconnects every connection ZeroMQ closed for
    good since the last call (``ConnectionWatch``), handing each to
    ``on_closed(endpoint, reason)`` (reason ``REFUSED_MESSAGE``: reconnected;
    ``WRONG_SOCKET_TYPE``: the peer is of the other mode, tried again after
    ``silence_s`` in case it is restarted in ours; ``AUTH_FAILED``: left to
    ZeroMQ's own retries, the keys must change), then waits for a message.
    After ``silence_s`` without any message (heartbeats make silence
    abnormal) it disconnects and connects every address again. ``sock`` is
    the socket to receive from; the other arguments are ``socket``'s.
    """

    def __init__(self, kind: int, addrs: Sequence[str], *, on_closed: Callable[[str, str], None],
                 silence_s: float = protocol.DEAD_AFTER_S, hwm: int = DEFAULT_HWM,
                 max_size: int = DEFAULT_MAX_SIZE, subscribe: list[bytes] | None = None,
                 curve: ClientKeys | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if not addrs:
            raise ValueError("an inbox needs at least one address")
        if not silence_s > 0:
            raise ValueError(f"silence_s must be > 0, got {silence_s}")
        if isinstance(curve, ServerKeys):
            raise ValueError("ServerKeys are for a socket that binds")
        self.addrs = tuple(addrs)
        self.silence_s = silence_s
        self.clock = clock
        self.on_closed = on_closed
        self.reconnects = 0
        self.sock = _configured(kind, self.addrs, hwm=hwm, conflate=False, max_size=max_size, linger=0,
                                subscribe=subscribe, curve=curve)
        try:
            # A monitor sees only the connections made after it: a handshake it missed could not be told apart.
            self.connections = ConnectionWatch(self.sock)
            try:
                for addr in self.addrs:
                    _attach(self.sock, addr, bind=False)
            except BaseException:
                self.connections.close()
                raise
        except BaseException:
            self.sock.close(linger=0)
            raise
        log.debug("%s socket connected to %s", zmq.SocketType(kind).name, ", ".join(self.addrs))
        self._heard_at = clock()
        self._retry_at: dict[str, float] = {}

    def wait(self, timeout_s: float) -> bool:
        """True as soon as a message is waiting on ``sock``, False after ``timeout_s`` seconds without one."""
        for endpoint, reason in self.connections.poll():
            self.on_closed(endpoint, reason)
            addrs = [endpoint] if endpoint in self.addrs else self.addrs
            if reason == REFUSED_MESSAGE:
                self.reconnect(addrs)
            elif reason == WRONG_SOCKET_TYPE:
                # Tried again at once it is refused again, many times a second; later its peer may be in our mode.
                for addr in addrs:
                    self._retry_at[addr] = self.clock() + self.silence_s
        due = [addr for addr, at in self._retry_at.items() if self.clock() >= at]
        if due:
            self.reconnect(due)
        ready = bool(self.sock.poll(round(timeout_s * 1000), zmq.POLLIN))
        now = self.clock()
        if ready:
            self._heard_at = now
        elif now - self._heard_at >= self.silence_s:
            log.debug("nothing on %s for %.1f s: reconnecting", ", ".join(self.addrs), self.silence_s)
            self.reconnect(self.addrs)
        return ready

    def reconnect(self, addrs: Sequence[str]) -> None:
        """Disconnect and connect ``addrs`` again."""
        for addr in addrs:
            try:
                self.sock.disconnect(addr)
            except zmq.ZMQError:
                # Not connected (any more); connecting again is all that is needed.
                pass
            self.sock.connect(addr)
            self._retry_at.pop(addr, None)
        self.reconnects += 1
        self._heard_at = self.clock()

    def close(self) -> None:
        self.connections.close()
        self.sock.close(linger=0)

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriber:
    """The consumer side of a scores socket: a SUB ``Inbox`` that hands out decoded messages.

    ``stream`` None takes every stream; otherwise that stream plus every
    process-level message (heartbeats, process status). Messages that do not
    decode and connections ZeroMQ closed are counted in ``rejected`` and
    logged (``Throttled``: a warning per class every ``warn_interval_s``).
    ``curve`` makes it a CURVE client (``stream.keys.client_keys``).
    """

    def __init__(self, addr: str, stream: str | None = None, *, hwm: int = DEFAULT_HWM,
                 max_size: int = DEFAULT_MAX_SIZE, silence_s: float = protocol.DEAD_AFTER_S,
                 warn_interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 curve: ClientKeys | None = None) -> None:
        self.addr = addr
        self.max_size = max_size
        self.rejected = 0
        self._warn = Throttled(log, warn_interval_s, clock=clock)
        subscribe = None if stream is None else [protocol.topic(stream), b"_"]
        self.inbox = Inbox(zmq.SUB, [addr], on_closed=self._closed, silence_s=silence_s, hwm=hwm,
                           max_size=max_size, subscribe=subscribe, curve=curve, clock=clock)

    @property
    def reconnects(self) -> int:
        return self.inbox.reconnects

    def _closed(self, endpoint: str, reason: str) -> None:
        self.rejected += 1
        if reason == AUTH_FAILED:
            self._warn.warning(reason, f"scores from {endpoint}: the CURVE handshake failed (is our key in the "
                                       f"worker's allow list, and --server-key the worker's key?)")
        elif reason == WRONG_SOCKET_TYPE:
            # Not bad input but a wrong address: nothing will come until the consumer is pointed elsewhere.
            self._warn.error(reason, f"scores from {endpoint}: ZeroMQ refused the socket there, which does not "
                                     f"publish (PUB): give the worker's scores address, not a lossless "
                                     f"capture's frames address (PUSH)")
        else:
            self._warn.warning(reason, f"scores from {endpoint}: a message over {self.max_size} bytes was "
                                       f"refused unread and the connection closed; reconnected")

    def receive(self, timeout_s: float, limit: int = 1000) -> list[protocol.Message]:
        """What arrives within ``timeout_s`` seconds plus what is queued behind it, up to ``limit`` messages.

        The limit keeps a flood from starving the caller's display and stop checks.
        """
        messages: list[protocol.Message] = []
        if not self.inbox.wait(timeout_s):
            return messages
        for _ in range(limit):
            try:
                data = self.inbox.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                messages.append(protocol.decode(data, max_size=self.max_size))
            except protocol.ProtocolError as exc:
                self.rejected += 1
                self._warn.warning(exc.kind, f"rejected message ({exc.kind}): {exc}")
        return messages

    def close(self) -> None:
        self.inbox.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_tcp_address() -> str:
    """A ``tcp://127.0.0.1:<port>`` address whose port was free a moment ago (for tests).

    Uses a plain OS socket, closed synchronously: a ZeroMQ listener is closed
    in the background, so its port may still be taken when this returns.
    """
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@contextlib.contextmanager
def signal_stop(signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
                ) -> Iterator[threading.Event]:
    """A stop event that ``signals`` set instead of killing the process (main thread only).

    The previous handlers come back on the way out. In another thread no
    handler can be installed, so the event is only set by the caller.
    """
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.getsignal(sig) for sig in signals}
        for sig in previous:
            signal.signal(sig, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def process_scope() -> Iterator[threading.Event]:
    """For a command's ``main``: a stop event that SIGINT and SIGTERM set, and a clean exit.

    On the way out the process-wide ZeroMQ context is terminated, which
    waits (up to each socket's linger) for queued messages to leave:
    ZeroMQ drops them when a process just exits. It blocks while any socket
    is open, so only a ``main`` that owns its process uses this.
    """
    try:
        with signal_stop() as stop:
            yield stop
    finally:
        # The ZAP handler holds sockets of the context: term() would wait for it forever.
        stop_authenticator()
        context().term()
