"""OpenIGTLink both ways over loopback, against pyigtl's own server and client.

In: a ``pyigtl.OpenIGTLinkServer`` sends IMAGE messages to an
``IgtlSource`` -> capture -> worker (the tiny bundle); the server goes
away and comes back. Out: ``igtl_out`` serves scores published on a real
ZeroMQ socket to a ``pyigtl.OpenIGTLinkClient``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time

import numpy as np
import pyigtl
import pytest
import zmq

from models.verdict import Hysteresis
from stream import protocol
from stream.capture import CaptureConfig, capture
from stream.igtl import (IgtlOutConfig, IgtlServer, IgtlSource, igtl_out, image_frame, image_spacing,
                         parse_address, stream_id)
from stream.sources import SourceError
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import WAIT_S, make_frames, recv_until, score, wait_subscribed
from tools.commands.igtl_out import main
from tools.sources import open_source

TOL = 1e-5
SPACING = np.diag([0.2, 0.3, 1.0, 1.0])  # i (column) 0.2 mm, j (row) 0.3 mm


@pytest.fixture
def igtl_servers():
    """``igtl_servers(port=0)`` -> a started pyigtl server; every one stopped, and the signal handlers it took
    given back, at teardown."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    started = []

    def make(port: int = 0) -> pyigtl.OpenIGTLinkServer:
        started.append(pyigtl.OpenIGTLinkServer(port=port, local_server=True))
        return started[-1]

    yield make
    for server in started:
        if not server.communication_thread_stop_requested:
            server.stop()
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def image_message(frame: np.ndarray, device: str, t: float) -> pyigtl.ImageMessage:
    """An IMAGE of a BGR ``frame`` as a PLUS server sends one: (1, H, W, 3) RGB, 0.3 x 0.2 mm pixels."""
    return pyigtl.ImageMessage(frame[None, :, :, ::-1], ijk_to_world_matrix=SPACING, device_name=device, timestamp=t)


def queue(server, frames, device="probe-1", t0=1000.0):
    for i, frame in enumerate(frames):
        server.send_message(image_message(frame, device, t0 + i * 0.04), wait=False)


def wait_until(condition, what, timeout_s=WAIT_S):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(0.01)


# --- pure pieces ------------------------------------------------------------------------


def test_addresses_are_parsed_and_bad_ones_are_one_line():
    assert parse_address("igtl://127.0.0.1:18944") == ("127.0.0.1", 18944, None)
    assert parse_address("igtl://scanner/Image_Reference") == ("scanner", 18944, "Image_Reference")
    for bad, words in [("igtl://:18944", "no host"), ("igtl://host:99999", "bad OpenIGTLink address"),
                       ("igtl://host:1/" + "x" * 21, "over OpenIGTLink's 20 bytes")]:
        with pytest.raises(SourceError, match=words) as info:
            parse_address(bad)
        assert "\n" not in str(info.value)


def test_a_device_name_that_is_no_stream_id_is_sanitised_and_said():
    assert stream_id("Image_Reference") == ("Image_Reference", None)
    sanitised, problem = stream_id("_US probe/1")
    assert sanitised == "US_probe_1" and problem
    protocol.check_stream_id(sanitised)


def test_images_become_bgr_or_gray_frames_and_the_rest_say_why_not():
    rgb = np.zeros((1, 4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    frame, problem = image_frame(pyigtl.ImageMessage(rgb))
    assert problem is None and frame.shape == (4, 5, 3) and frame[0, 0].tolist() == [0, 0, 200]
    gray, _ = image_frame(pyigtl.ImageMessage(np.full((1, 4, 5), 7, np.uint8)))
    assert gray.shape == (4, 5) and gray[0, 0] == 7
    assert "volume of 2 slices" in image_frame(pyigtl.ImageMessage(np.zeros((2, 4, 5), np.uint8)))[1]
    assert "pixel type uint16" in image_frame(pyigtl.ImageMessage(np.zeros((1, 4, 5), np.uint16)))[1]
    assert image_spacing(pyigtl.ImageMessage(rgb, ijk_to_world_matrix=SPACING)) == (0.3, 0.2)


# --- in: server -> source -> capture -> worker ------------------------------------------


def test_a_server_that_is_not_there_is_one_line(address):
    port = int(address().rpartition(":")[2])
    with pytest.raises(SourceError, match=r"cannot connect") as info:
        open_source(f"igtl://127.0.0.1:{port}")
    assert "\n" not in str(info.value)


def test_images_are_frames_with_the_device_name_time_and_spacing(igtl_servers):
    server = igtl_servers()
    frames = make_frames(3, 24, 32)
    server.send_message(pyigtl.ImageMessage(np.zeros((1, 4, 4), np.uint16), device_name="probe-1"), wait=False)
    queue(server, frames)
    warnings = []
    source = open_source(f"igtl://127.0.0.1:{server.server_address[1]}/probe-1")
    source.on_warning = warnings.append
    with source:
        got = [item for _, item in zip(range(3), source)]
        assert source.name == "probe-1" and source.spacing == (0.3, 0.2)
    for (image, t), frame, i in zip(got, frames, range(3)):
        np.testing.assert_array_equal(image, frame)
        assert t == pytest.approx(1000.0 + i * 0.04, abs=1e-6)
    # The 16-bit image was left out with one warning, so the frames after it are numbered after a gap.
    assert source.missing == 1 and len(warnings) == 1 and "pixel type uint16" in warnings[0]


def test_a_device_name_that_is_no_stream_id_streams_sanitised_and_is_said_as_status(igtl_servers):
    server = igtl_servers()
    queue(server, make_frames(1, 24, 32), device="US Probe")
    warnings = []
    with IgtlSource(f"igtl://127.0.0.1:{server.server_address[1]}") as source:
        # Said when made, before the capture listens: handed over with the first frame.
        source.on_warning = warnings.append
        next(iter(source))
    assert source.name == "US_Probe"
    assert len(warnings) == 1 and "device name 'US Probe' is not a stream id" in warnings[0]


def test_other_devices_are_passed_over_with_one_warning(igtl_servers):
    server = igtl_servers()
    frames = make_frames(4, 24, 32)
    for i, frame in enumerate(frames):
        server.send_message(image_message(frame, "Image_Other", 500.0 + i), wait=False)
        server.send_message(pyigtl.TransformMessage(np.eye(4), device_name="Probe_to_Tracker"), wait=False)
        server.send_message(image_message(frame, "Image_Reference", 1000.0 + i), wait=False)
    warnings = []
    with IgtlSource(f"igtl://127.0.0.1:{server.server_address[1]}/Image_Reference") as source:
        source.on_warning = warnings.append
        got = [t for _, (_, t) in zip(range(4), source)]
    assert got == [1000.0, 1001.0, 1002.0, 1003.0] and source.missing == 0
    assert len(warnings) == 1 and "'Image_Other' passed over" in warnings[0]


def test_a_server_that_does_not_speak_openigtlink_is_one_line():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer():
        conn, _ = listener.accept()
        # The client closes on the bytes it cannot read: a reset, which is the point here.
        with conn, contextlib.suppress(ConnectionResetError):
            conn.sendall(b"\xff" * 100)
            conn.recv(1)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(SourceError, match="not an OpenIGTLink message header") as info:
            IgtlSource(f"igtl://127.0.0.1:{port}", silence_s=2.0)
        assert "\n" not in str(info.value)
    finally:
        thread.join(WAIT_S)
        listener.close()


@pytest.mark.slow
def test_a_live_igtl_stream_scores_equal_offline_scores(igtl_servers, background, sockets, address, tiny_bundle,
                                                        tiny_runtime):
    server = igtl_servers()
    frames = make_frames(20, 64, 80, seed=3)
    queue(server, frames)
    frames_addr, scores_addr = address(), address()
    worker = background(lambda stop: serve(tiny_bundle, WorkerConfig(
        sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.2, forward_frames=True,
        exit_after_eos=1), stop))
    sub = sockets(zmq.SUB, connect=scores_addr)
    recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat) and m.stream == "_worker" and not m.loading)
    source = IgtlSource(f"igtl://127.0.0.1:{server.server_address[1]}")
    background(lambda stop: capture(source, CaptureConfig(pub=frames_addr, mode="lossless", max_frames=20), stop))

    messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream), timeout_s=60)
    scores = [m for m in messages if isinstance(m, protocol.Score)]
    sent = [m for m in messages if isinstance(m, protocol.Frame)]
    assert [s.seq for s in scores] == list(range(20)) and {s.stream for s in scores} == {"probe-1"}
    assert [f.t_source for f in sent] == pytest.approx([1000.0 + i * 0.04 for i in range(20)], abs=1e-6)
    expected = tiny_runtime.scan_scores(tiny_runtime.frame_features(frames))
    np.testing.assert_allclose([s.score for s in scores], expected, atol=TOL)
    assert messages[-1].reason == "max_frames"
    assert worker.join().frames_out == 20


def test_the_server_going_away_and_back_is_reconnected_with_backoff(igtl_servers, background, sockets, address):
    first = igtl_servers()
    port = first.server_address[1]
    frames = make_frames(6, 24, 32)
    queue(first, frames[:3])
    frames_addr = address()
    pull = sockets(zmq.PULL, connect=frames_addr)
    source = IgtlSource(f"igtl://127.0.0.1:{port}", silence_s=2.0)
    task = background(lambda stop: capture(source, CaptureConfig(
        pub=frames_addr, mode="lossless", max_frames=6, retry_initial_s=0.05, retry_max_s=0.2), stop))
    before = recv_until(pull, lambda m: isinstance(m, protocol.Frame) and m.seq == 2)
    first.stop()
    # Reconnecting goes on (refused, the delay doubling) until a server is back on the port.
    lost = recv_until(pull, lambda m: isinstance(m, protocol.Status) and "cannot connect" in m.message)
    second = igtl_servers(port)
    queue(second, frames[3:], t0=2000.0)
    after = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))

    statuses = [m.message for m in lost + after if isinstance(m, protocol.Status)]
    assert "the server closed the connection; retrying in 0.05 s" in statuses[0]
    assert any("reopened" in s for s in statuses) and all("\n" not in s for s in statuses)
    got = [m for m in before + lost + after if isinstance(m, protocol.Frame)]
    assert [f.seq for f in got] == list(range(6))
    np.testing.assert_array_equal(got[4].image(), frames[4])
    stats = task.join()
    assert stats.reason == "max_frames" and stats.source_errors >= 2


# --- out: scores -> igtl_out -> pyigtl client -------------------------------------------


class Every(dict):
    """pyigtl's client keeps the newest message per device in a dict; this one also keeps every one."""

    def __init__(self):
        super().__init__()
        self.all = []

    def __setitem__(self, key, value):
        self.all.append(value)
        super().__setitem__(key, value)


@pytest.fixture
def igtl_out_server():
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with IgtlServer(0) as server:
        yield server
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers


def test_a_pyigtl_client_receives_one_string_per_score(igtl_out_server, background, sockets, address):
    client = pyigtl_client(igtl_out_server)
    received = client.incoming_messages
    try:
        scores_addr = address()
        pub = sockets(zmq.XPUB, bind=scores_addr)
        config = IgtlOutConfig(sub=scores_addr, until_eos=True, hold=2)
        task = background(lambda stop: igtl_out(config, igtl_out_server, stop))
        wait_subscribed(pub)
        values = [0.1, 0.9, 0.2, 0.8, 0.9, 0.3, 0.7, 0.95, 0.1, 0.05]
        for seq, value in enumerate(values):
            pub.send(protocol.encode(score(seq, value)))
        pub.send(protocol.encode(protocol.EndOfStream("probe1", len(values) - 1, "eof", time.time())))
        stats = task.join()
        wait_until(lambda: len(received.all) == len(values), f"{len(values)} STRING messages")
    finally:
        client.stop()

    assert stats.scores == stats.sent == len(values) and not stats.unsent and not stats.lost
    machine = Hysteresis(2)
    for seq, (message, value) in enumerate(zip(received.all, values)):
        assert message.message_type == "STRING" and message.device_name == "probe1"
        assert message.timestamp == pytest.approx(score(seq).t_capture, abs=1e-6)
        text = json.loads(message.string)
        verdict = machine.update(seq, value >= 0.5, score(seq).t_capture).head
        assert text == {"stream": "probe1", "seq": seq, "score": value, "threshold": 0.5, "flags": [],
                        "decision": "Head" if value >= 0.5 else "Not-Head",
                        "verdict": "Head" if verdict else "Not-Head"}


def pyigtl_client(server):
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", server.port, start_now=False)
    client.incoming_messages = Every()
    client.start()
    wait_until(lambda: server.connected, "pyigtl client connected")
    return client


def test_a_client_that_leaves_is_seen_and_the_next_one_gets_what_follows(igtl_out_server, background, sockets,
                                                                        address, caplog):
    scores_addr = address()
    pub = sockets(zmq.XPUB, bind=scores_addr)
    first = pyigtl_client(igtl_out_server)
    task = background(lambda stop: igtl_out(IgtlOutConfig(sub=scores_addr, until_eos=True), igtl_out_server, stop,
                                            warn_interval_s=0))
    wait_subscribed(pub)
    for seq in range(3):
        pub.send(protocol.encode(score(seq)))
    wait_until(lambda: len(first.incoming_messages.all) == 3, "3 STRING messages")
    first.stop()
    wait_until(lambda: not igtl_out_server.connected, "the client's leaving seen")
    pub.send(protocol.encode(score(3)))
    wait_until(lambda: "seq 3 not sent (no client" in caplog.text, "score 3 refused")
    second = pyigtl_client(igtl_out_server)
    try:
        for seq in (4, 5):
            pub.send(protocol.encode(score(seq)))
        pub.send(protocol.encode(protocol.EndOfStream("probe1", 5, "eof", time.time())))
        stats = task.join()
        wait_until(lambda: len(second.incoming_messages.all) == 2, "2 STRING messages")
    finally:
        second.stop()
    assert [json.loads(m.string)["seq"] for m in first.incoming_messages.all] == [0, 1, 2]
    assert [json.loads(m.string)["seq"] for m in second.incoming_messages.all] == [4, 5]
    assert (stats.scores, stats.sent, stats.unsent, stats.lost) == (6, 5, {"no client": 1}, 0)


def test_scores_with_no_client_are_counted_and_logged(igtl_out_server, background, sockets, address, caplog):
    scores_addr = address()
    pub = sockets(zmq.XPUB, bind=scores_addr)
    task = background(lambda stop: igtl_out(IgtlOutConfig(sub=scores_addr, until_eos=True), igtl_out_server, stop))
    wait_subscribed(pub)
    for seq in range(3):
        pub.send(protocol.encode(score(seq)))
    pub.send(protocol.encode(protocol.EndOfStream("probe1", 2, "eof", time.time())))
    stats = task.join()
    assert stats.sent == 0 and stats.unsent == {"no client": 3}
    assert "3 of 3 scores not sent (no client: 3)" in caplog.text


def test_a_port_in_use_is_a_one_line_error(igtl_out_server, capsys):
    assert main(["--port", str(igtl_out_server.port), "--sub", "tcp://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"port {igtl_out_server.port}" in err


def test_a_bad_port_is_a_one_line_error(capsys):
    assert main(["--port", "70000"]) == 1
    assert "port: must be in [0, 65535], got 70000" in capsys.readouterr().err


def test_a_stream_id_over_20_bytes_is_cut_in_the_device_name_and_whole_in_the_text():
    from stream.igtl import score_message

    message = score_message(score(7, 0.75, stream="a-very-long-stream-id-indeed"), True)
    assert message.device_name == "a-very-long-stream-i"
    assert json.loads(message.string)["stream"] == "a-very-long-stream-id-indeed"
