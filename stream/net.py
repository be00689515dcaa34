"""ZeroMQ sockets set up one way for capture, worker and consumers (docs/protocol.md, section 1).

Thin on purpose: the message format lives in stream/protocol.py; loops,
reconnection and shutdown live in the process that owns the socket. Every
socket made here is a context manager that closes it (``with socket(...) as s``).

Oversized messages (over ``max_size``) are refused by ZeroMQ itself through
ZMQ_MAXMSGSIZE, before any allocation, and ZeroMQ then closes that
connection. libzmq 4.3 treats this as a protocol error: a *connecting*
receiver is not reconnected automatically and goes silent, so a consumer that
misses heartbeats should ``disconnect`` and ``connect`` again; a *binding*
receiver is reconnected by the sender after ZMQ_RECONNECT_IVL.
tests/stream/test_net.py pins this behaviour down.
"""

from __future__ import annotations

import ipaddress
import logging
import socket as pysocket

import zmq

from models.config import ConfigError
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


def check_bind_address(addr: str, *, allow_remote: bool) -> None:
    """Refuse to bind ``addr`` where other machines can reach it, unless ``allow_remote``.

    Local: ``ipc://``, ``inproc://``, and ``tcp://`` on 127.x.x.x, ``localhost``
    or ``[::1]``. Anything else (``tcp://*:5555``, ``tcp://0.0.0.0:5555``, an
    interface or host name, multicast transports) raises ConfigError, or with
    ``allow_remote`` logs a warning: the protocol is neither encrypted nor
    authenticated and frames are patient images.
    """
    scheme, sep, _ = addr.partition("://")
    if not sep:
        raise ConfigError(f"address {addr!r}: expected scheme://..., e.g. {DEFAULT_PUB}")
    if scheme in _LOCAL_SCHEMES:
        return
    if scheme == "tcp" and _is_loopback(_tcp_host(addr)):
        return
    if not allow_remote:
        raise ConfigError(f"address {addr!r}: not a loopback address; binding it exposes unencrypted "
                          f"frames to the network, so it needs allow_remote")
    log.warning("binding %s: reachable from other machines, unencrypted and unauthenticated", addr)


def socket(kind: int, *, bind: str | None = None, connect: str | None = None, hwm: int = DEFAULT_HWM,
           conflate: bool = False, max_size: int = DEFAULT_MAX_SIZE, linger: int = 0,
           subscribe: list[bytes] | None = None, allow_remote: bool = False) -> zmq.Socket:
    """A ZeroMQ socket of ``kind`` (``zmq.PUB``, ``zmq.SUB``, ``zmq.PUSH`` ...), bound or connected.

    Exactly one of ``bind``/``connect``; a bind address goes through
    ``check_bind_address`` first. ``hwm`` caps the send and receive queues in
    messages (0: unlimited); ``conflate`` keeps only the newest message (one
    for the whole socket, so subscribe to a single stream with it);
    ``max_size`` bytes is ZMQ_MAXMSGSIZE; ``linger`` is how many milliseconds
    ``close`` waits for unsent messages. ``subscribe`` lists topic prefixes
    for a SUB socket (``protocol.topic(stream)``); None subscribes to all.
    Failing to bind or connect is a ConfigError naming the address.
    """
    if (bind is None) == (connect is None):
        raise ValueError(f"socket needs exactly one of bind= or connect=, got bind={bind!r}, connect={connect!r}")
    if subscribe is not None and kind != zmq.SUB:
        raise ValueError(f"subscribe is only for SUB sockets, got socket type {kind}")
    if hwm < 0:
        raise ValueError(f"hwm must be >= 0, got {hwm}")
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    if linger < 0:
        raise ValueError(f"linger must be >= 0, got {linger}")
    if bind is not None:
        check_bind_address(bind, allow_remote=allow_remote)
    addr = bind if bind is not None else connect

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
        if "[" in addr:
            # Only for bracketed IPv6 addresses: with IPv6 on, "localhost" may resolve to ::1 only.
            sock.setsockopt(zmq.IPV6, 1)
        if conflate:
            sock.setsockopt(zmq.CONFLATE, 1)
        if kind == zmq.SUB:
            for prefix in [b""] if subscribe is None else subscribe:
                sock.setsockopt(zmq.SUBSCRIBE, prefix)
        try:
            if bind is not None:
                sock.bind(addr)
            else:
                sock.connect(addr)
        except zmq.ZMQError as exc:
            raise ConfigError(f"address {addr!r}: cannot {'bind' if bind else 'connect'} ({exc})") from None
    except BaseException:
        sock.close(linger=0)
        raise
    log.debug("%s socket %s %s", zmq.SocketType(kind).name, "bound to" if bind else "connected to", addr)
    return sock


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


def free_tcp_address() -> str:
    """A ``tcp://127.0.0.1:<port>`` address whose port was free a moment ago (for tests).

    Uses a plain OS socket, closed synchronously: a ZeroMQ listener is closed
    in the background, so its port may still be taken when this returns.
    """
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"
