"""CURVE on every link, checked on the wire: keys, allowed and refused clients, what a sniffer sees."""

from __future__ import annotations

import logging
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from models.errors import ConfigError
from stream import keys, net, protocol
from stream.capture import CaptureConfig, capture
from stream.sources import Source
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import recv_until
from tools.cli import main as cli_main
from tools.commands.capture import main as capture_main

# Raw pixels made of this pattern: if it shows in the bytes on the wire, so do the images.
PATTERN = b"PATIENT-IMAGE-0123456789-"
FRAMES = 20


class Relay:
    """A TCP relay on loopback that records every byte passing between a client and ``upstream``.

    It stands where a sniffer on the network would; ZeroMQ's reconnects get
    a fresh upstream connection each.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("tcp://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=1.0)
            except OSError:
                client.close()
                continue
            for a, b in ((client, server), (server, client)):
                thread = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                thread.start()
                self.threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.1)
        try:
            while not self.stop.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                with self.lock:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def bytes(self) -> bytes:
        with self.lock:
            return bytes(self.seen)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5.0)
        self.listener.close()


@pytest.fixture
def relays():
    made: list[Relay] = []

    def make(upstream: str) -> Relay:
        made.append(Relay(upstream))
        return made[-1]

    yield make
    for relay in made:
        relay.close()


class PatternSource(Source):
    """``FRAMES`` grey 32x40 frames whose raw bytes are the pattern over and over."""

    name = "patient"

    def __iter__(self):
        tiled = (PATTERN * (32 * 40 // len(PATTERN) + 1))[:32 * 40]
        image = np.frombuffer(tiled, np.uint8).reshape(32, 40)
        for _ in range(FRAMES):
            yield image, None


@pytest.fixture(scope="module")
def key_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(a folder made by ``fetalhead keys``, a stranger's folder with a client pair of its own)."""
    root = tmp_path_factory.mktemp("keys")
    keys.make_keys(root / "site", keys.DEFAULT_NAMES)
    keys.make_keys(root / "stranger", ["client"])
    return root / "site", root / "stranger"


# --- keys ------------------------------------------------------------------------------


def test_keys_command_makes_private_key_pairs_and_refuses_to_overwrite(tmp_path, capsys):
    folder = tmp_path / "keys"
    assert cli_main(["keys", str(folder)]) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["capture.key", "capture.key_secret", "client.key", "client.key_secret", "worker.key",
                     "worker.key_secret"]
    for name in ("capture", "worker", "client"):
        assert stat.S_IMODE((folder / f"{name}.key_secret").stat().st_mode) == 0o600
        public, secret = keys.read_key_pair(folder / f"{name}.key_secret")
        assert keys.read_public_key(folder / f"{name}.key") == public and len(secret) == 40
    capsys.readouterr()
    assert cli_main(["keys", str(folder), "--name", "worker"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fetalhead: error: keys:") and "--force" in err and "\n" not in err
    assert cli_main(["keys", str(folder), "--name", "viewer2"]) == 0
    assert (folder / "viewer2.key").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--keys", "{tmp}/nowhere"], "keys: {tmp}/nowhere/capture.key_secret not found (make key pairs with: "
                                   "fetalhead keys {tmp}/nowhere --name capture)"),
    (["--allow", "{tmp}"], "allow: needs keys (--keys DIR) to turn CURVE on"),
    (["--keys", "{site}", "--allow", "{tmp}/empty"], "allow: {tmp}/empty holds no public .key file"),
    (["--keys", "{site}", "--key-name", "client.key"], "client.key.key_secret not found"),
])
def test_bad_key_options_are_one_line(argv, message, tmp_path, key_dirs, capsys, address):
    (tmp_path / "empty").mkdir()
    fill = {"tmp": str(tmp_path), "site": str(key_dirs[0])}
    assert capture_main(["synthetic", "--pub", address(), *[a.format(**fill) for a in argv]]) == 1
    err = capsys.readouterr().err.strip()
    assert message.format(**fill) in err and "\n" not in err


def test_a_public_key_file_is_not_a_key_pair(key_dirs):
    with pytest.raises(ConfigError, match="holds no secret key"):
        keys.read_key_pair(key_dirs[0] / "worker.key")


# --- bind policy ------------------------------------------------------------------------


def test_a_remote_bind_without_encryption_warns_and_names_the_remedy(caplog):
    with caplog.at_level(logging.INFO, logger="stream.net"):
        net.check_bind_address("tcp://0.0.0.0:5555", allow_remote=True)
        net.check_bind_address("tcp://0.0.0.0:5556", allow_remote=True, encrypted=True)
    plain, encrypted = caplog.records
    assert plain.levelno == logging.WARNING
    assert "NOT encrypted" in plain.getMessage() and "--keys DIR" in plain.getMessage()
    assert encrypted.levelno == logging.INFO and "CURVE-encrypted" in encrypted.getMessage()
    with pytest.raises(ConfigError, match=r"needs allow_remote \(--allow-remote\), and --keys DIR to encrypt"):
        net.check_bind_address("tcp://0.0.0.0:5555", allow_remote=False)


# --- the wire ---------------------------------------------------------------------------


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_pipeline_over_a_sniffed_wire(curve, key_dirs, relays, background, sockets, address, tiny_bundle,
                                      caplog):
    """Capture -> worker -> consumer with both links through recording relays.

    Plain: the images cross the wire as they are, and any local process can
    subscribe. CURVE: the allowed consumer gets every frame and score, the
    recorded bytes hold no trace of the images, and strangers get nothing.
    """
    site, stranger = key_dirs
    frames_addr, scores_addr = address(), address()
    frames_relay, scores_relay = relays(frames_addr), relays(scores_addr)
    site_keys = site if curve else None
    worker_config = WorkerConfig(sub=(frames_relay.address,), pub=scores_addr, mode="lossless", heartbeat_s=0.1,
                                 forward_frames=True, exit_after_eos=1, keys=site_keys)
    worker = background(lambda stop: serve(tiny_bundle, worker_config, stop))
    client = keys.client_keys(site_keys, "client", "worker")
    consumer = sockets(zmq.SUB, connect=scores_relay.address, curve=client, hwm=0)
    if curve:
        strangers = [sockets(zmq.SUB, connect=scores_addr, curve=keys.client_keys(
                         stranger, "client", "worker", server_key=site / "worker.key")),
                     sockets(zmq.SUB, connect=scores_addr)]
        frame_thief = sockets(zmq.PULL, connect=frames_addr, curve=keys.client_keys(
            stranger, "client", "capture", server_key=site / "capture.key"))
    else:
        strangers = [sockets(zmq.SUB, connect=scores_addr)]
    recv_until(consumer, lambda m: isinstance(m, protocol.Heartbeat) and not m.loading)

    with caplog.at_level(logging.WARNING, logger="stream.net"):
        source = background(lambda stop: capture(PatternSource(), CaptureConfig(
            pub=frames_addr, mode="lossless", fast=True, keys=site_keys), stop))
        messages = recv_until(consumer, lambda m: isinstance(m, protocol.EndOfStream))
        assert source.join().frames_out == FRAMES
        assert worker.join().frames_out == FRAMES

    frames = [m for m in messages if isinstance(m, protocol.Frame)]
    assert [m.seq for m in messages if isinstance(m, protocol.Score)] == list(range(FRAMES))
    assert len(frames) == FRAMES and all(PATTERN in f.pixels for f in frames)
    stranger_got = [net.recv(s, 0.2) for s in strangers]
    wire = frames_relay.bytes() + scores_relay.bytes()
    assert len(wire) > FRAMES * 32 * 40 * 2
    if curve:
        assert PATTERN not in wire
        assert stranger_got == [None, None] and net.recv(frame_thief, 0.1) is None
        # The unknown key is refused, and each server says so once however often it
        # retries; the plain client cannot even start a handshake.
        refused = [r.getMessage() for r in caplog.records if "refused a CURVE client" in r.getMessage()]
        assert 1 <= len(refused) <= 2 and all(f"not in the allow list {site}" in line for line in refused)
    else:
        assert PATTERN in wire
        assert stranger_got[0] is not None


def test_a_worker_whose_key_the_capture_does_not_allow_gets_no_frames(key_dirs, background, sockets, address,
                                                                      tiny_bundle, caplog, tmp_path):
    site, stranger = key_dirs
    allow = tmp_path / "allow"
    allow.mkdir()
    (allow / "client.key").write_bytes((site / "client.key").read_bytes())
    frames_addr, scores_addr = address(), address()
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.1, keys=site,
                          silence_s=30.0)
    worker = background(lambda stop: serve(tiny_bundle, config, stop))
    consumer = sockets(zmq.SUB, connect=scores_addr, curve=keys.client_keys(site, "client", "worker"))
    recv_until(consumer, lambda m: isinstance(m, protocol.Heartbeat) and not m.loading)
    with caplog.at_level(logging.WARNING):
        source = background(lambda stop: capture(PatternSource(), CaptureConfig(
            pub=frames_addr, mode="lossless", fast=True, keys=site, allow=allow), stop))
        deadline = time.monotonic() + 10
        while not any("CURVE handshake failed" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the worker never said its handshake failed"
            time.sleep(0.05)
    beat = recv_until(consumer, lambda m: isinstance(m, protocol.Heartbeat) and "rejected.auth_failed" in m.stats)[-1]
    assert beat.stats["frames_in"] == 0
    assert any("refused a CURVE client" in r.getMessage() and str(allow) in r.getMessage() for r in caplog.records)
    source.stop.set()
    worker.stop.set()
    assert source.join().frames_out == 0
    worker.join()
