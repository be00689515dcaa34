"""Streams across workers: the shard of a stream, and the hub between captures, workers and consumers.

A worker takes a subset of the streams (``WorkerConfig.streams`` and
``WorkerConfig.shard``). The shard of a stream is the CRC-32 (ISO-HDLC, as
``zlib.crc32``, Java's ``java.util.zip.CRC32`` and Go's ``hash/crc32``
IEEE table compute it) of its id's UTF-8 bytes, modulo the number of
shards: stable across processes, machines and languages, unlike Python's
``hash``. A stream never splits: all its frames go to the one worker of its
shard, which holds its rolling window (docs/protocol.md, "Several workers").

The hub is ZeroMQ's own proxy (``zmq.proxy_steerable``), once per side, each
in a thread of its own. The frames side connects an XSUB to every live
capture (captures bind their PUB) and binds an XPUB that workers connect
their SUB to; the scores side connects an XSUB to every worker's scores
socket (workers bind theirs) and binds an XPUB that consumers subscribe
at. Subscriptions travel upstream through each XPUB/XSUB pair, so a
worker's ``--streams`` topics filter at the capture itself. Nothing is
decoded: every message, worker heartbeats included (each worker's own
process id, ``_worker.<name>``), passes as it came. Lossless streams do not
go through the hub (PUSH/PULL has no fan-out that keeps a stream on one
worker): the worker of the stream's shard connects to its capture.

With ``keys`` both sides are CURVE: the hub is a client of each capture
and worker (their public keys ``capture_key`` and ``worker_key``) and the
server of both of its own addresses (key pair ``key_name``, default
``hub``; clients allowed from ``allow``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import threading
import zlib
from pathlib import Path
from typing import Sequence

import zmq

from models.errors import ConfigError
from models.settings import check, setting
from stream import keys, net, protocol
from stream.keys import allow_setting, key_name_setting, keys_setting

logger = logging.getLogger(__name__)

DEFAULT_FRAMES = "tcp://127.0.0.1:5565"
DEFAULT_SCORES = "tcp://127.0.0.1:5566"
# Scores and heartbeats are small; a consumer that stalls for a second must not lose any.
_SCORES_HWM = 1000
_SHARD = re.compile(r"(\d{1,6})/(\d{1,6})")
_TERMINATE = b"TERMINATE"
_ids = itertools.count()


def shard_of(stream: str, count: int) -> int:
    """The shard, in [0, count), of stream id ``stream``: CRC-32 of its UTF-8 bytes mod ``count``."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return zlib.crc32(stream.encode("utf-8")) % count


def parse_shard(text: str, where: str = "shard") -> tuple[int, int] | None:
    """``"I/N"`` as (I, N) with 0 <= I < N; ``""`` as None (every stream); else a one-line ConfigError."""
    if text == "":
        return None
    match = _SHARD.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"{where}: {text!r} is not I/N (shard I of N, e.g. 0/2)")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise ConfigError(f"{where}: {text!r} has N = 0 shards; N must be >= 1")
    if index >= count:
        raise ConfigError(f"{where}: {text!r} has shard {index} of {count}; I must be in 0..{count - 1}")
    return index, count


@dataclasses.dataclass(frozen=True)
class HubConfig:
    """Settings of ``fetalhead hub`` (a ``[hub]`` TOML table).

    ``captures`` and ``workers`` are the addresses the hub connects to
    (each side runs when its list is given); ``frames`` and ``scores`` the
    addresses it binds for workers and consumers. ``keys`` turns CURVE on
    for both sides (see the module doc).
    """

    captures: tuple[str, ...] = setting((), "live capture frame addresses to connect to (frames side)")
    frames: str = setting(DEFAULT_FRAMES, "address to bind for workers' frames (their --sub)")
    workers: tuple[str, ...] = setting((), "worker scores addresses to connect to (scores side)")
    scores: str = setting(DEFAULT_SCORES, "address to bind for consumers: every worker's scores and heartbeats")
    max_message_size: int = setting(protocol.DEFAULT_MAX_SIZE, "bytes; larger messages are refused",
                                    shown="64 MiB")
    allow_remote: bool = setting(False, "allow binding non-loopback addresses (encrypted only with --keys)")
    keys: Path | None = keys_setting()
    key_name: str | None = key_name_setting("hub")
    allow: Path | None = allow_setting()
    capture_key: Path | None = setting(None, "public key file of the captures", shown="KEYS/capture.key")
    worker_key: Path | None = setting(None, "public key file of the workers", shown="KEYS/worker.key")

    def __post_init__(self) -> None:
        keys.check_options(self.keys, key_name=self.key_name, allow=self.allow, capture_key=self.capture_key,
                           worker_key=self.worker_key)
        check(bool(self.captures or self.workers),
              "captures, workers: give at least one side (--captures ADDR,... and/or --workers ADDR,...)")
        check(self.frames != self.scores, f"frames, scores: both are {self.frames!r}; give two addresses")
        check(self.max_message_size >= 1024, f"max_message_size: must be >= 1024 bytes, got {self.max_message_size}")
        for name, addrs in (("captures", self.captures), ("workers", self.workers)):
            for addr in addrs:
                check("://" in addr, f"{name}: {addr!r} is not an address (e.g. {net.DEFAULT_PUB})")


class _Side:
    """One proxy: an XSUB connected to ``upstream``, an XPUB bound at ``bind``, in a thread of its own.

    The sockets are made here, so a bad address fails in the caller's
    thread; the thread owns them from ``start`` until it ends.
    """

    def __init__(self, name: str, upstream: Sequence[str], bind: str, *, hwm: int, max_size: int,
                 allow_remote: bool, server: keys.ServerKeys | None, client: keys.ClientKeys | None) -> None:
        self.name = name
        self.error: BaseException | None = None
        self._sockets: list[zmq.Socket] = []
        try:
            self.xsub = self._keep(net.socket(zmq.XSUB, connect=upstream[0], hwm=hwm, max_size=max_size,
                                              curve=client))
            for addr in upstream[1:]:
                try:
                    self.xsub.connect(addr)
                except zmq.ZMQError as exc:
                    raise ConfigError(f"address {addr!r}: cannot connect ({exc})") from None
            self.xpub = self._keep(net.socket(zmq.XPUB, bind=bind, hwm=hwm, max_size=max_size,
                                              allow_remote=allow_remote, curve=server))
            control = f"inproc://fetalhead-hub-{name}-{next(_ids)}"
            self.stopper = self._keep(net.socket(zmq.PAIR, bind=control))
            self.control = self._keep(net.socket(zmq.PAIR, connect=control))
        except BaseException:
            self.close()
            raise
        self.thread = threading.Thread(target=self._run, name=f"hub-{name}", daemon=True)

    def _keep(self, sock: zmq.Socket) -> zmq.Socket:
        self._sockets.append(sock)
        return sock

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, self.control)
        except BaseException as exc:  # reported by the caller's stop, in its thread
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """End the proxy and close its sockets; re-raises what ended the proxy early, if anything did."""
        if self.thread.is_alive():
            self.stopper.send(_TERMINATE)
            self.thread.join()
        self.close()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        for sock in self._sockets:
            sock.close(linger=0)


class Hub:
    """The running hub: ``with Hub(config):`` proxies both configured sides until the block ends."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        name = config.key_name or "hub"
        server = keys.server_keys(config.keys, name, config.allow)
        self.sides: list[_Side] = []
        common = dict(max_size=config.max_message_size, allow_remote=config.allow_remote, server=server)
        try:
            if config.captures:
                client = keys.client_keys(config.keys, name, "capture", config.capture_key)
                # Live frames: a short queue of fresh ones, as in every other live hop.
                self.sides.append(_Side("frames", config.captures, config.frames, hwm=net.DEFAULT_HWM,
                                        client=client, **common))
            if config.workers:
                client = keys.client_keys(config.keys, name, "worker", config.worker_key)
                self.sides.append(_Side("scores", config.workers, config.scores, hwm=_SCORES_HWM,
                                        client=client, **common))
        except BaseException:
            for side in self.sides:
                side.close()
            raise

    def __enter__(self) -> Hub:
        for side in self.sides:
            side.start()
        if self.config.captures:
            logger.info("hub: frames of %s for workers at %s", ", ".join(self.config.captures), self.config.frames)
        if self.config.workers:
            logger.info("hub: scores of %s for consumers at %s", ", ".join(self.config.workers), self.config.scores)
        return self

    def __exit__(self, *exc: object) -> None:
        errors = []
        for side in self.sides:
            try:
                side.stop()
            except Exception as error:  # the other side must still be stopped
                errors.append(error)
        if errors:
            raise errors[0]


def serve(config: HubConfig, stop_event: threading.Event) -> None:
    """Run the hub until ``stop_event`` is set."""
    with Hub(config):
        stop_event.wait()
    logger.info("hub stopped")
