"""Bad input over real sockets and real files: one clear line each, and good input is still served."""

from __future__ import annotations

import logging
import os
import time

import msgpack
import numpy as np
import pytest
import zmq

from stream import protocol
from stream.capture import CaptureConfig, capture
from stream.net import Subscriber
from stream.record import stream_path
from stream.sources import VideoFileSource
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import make_frames, recv_until

MAX_SIZE = 64 * 1024


def _wire(stream: str, body) -> bytes:
    return stream.encode() + b"\x00" + msgpack.packb(body, use_bin_type=True)


def _frame_body(seq: int, **changes) -> dict:
    body = {"v": 1, "type": "frame", "stream": "cam", "seq": seq, "t_capture": time.time(), "t_source": None,
            "shape": [64, 80, 3], "dtype": "uint8", "encoding": "raw", "spacing": None,
            "pixels": b"\x00" * (64 * 80 * 3)}
    body.update(changes)
    return body


def _score_message() -> bytes:
    return protocol.encode(protocol.Score("cam", 0, 0.5, True, 0.5, "m", 1.0, 1.0, 1.0, 0.0, (), 1, 0))


def _nested(depth: int):
    """An int inside ``depth`` arrays: [[[...[1]...]]]."""
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def _frame_of_shape(shape: tuple[int, ...]) -> bytes:
    """A valid raw frame of ``shape``, all black."""
    return _wire("cam", _frame_body(0, shape=list(shape), pixels=b"\x00" * int(np.prod(shape))))


# (what is sent, its rejection class, what the one warning line says)
BAD_INPUT = [
    (b"\x89PNG\r\n\x1a\n not a protocol message", "no_topic", "missing topic separator"),
    (b"cam\x00\xc1\xc1 not msgpack", "not_msgpack", "body is not msgpack"),
    (_wire("cam", [1, "frame"]), "not_a_map", "body is a msgpack tuple, not a map"),
    (_wire("cam", {"v": 1, "type": "picture", "stream": "cam"}), "unknown_type", "unknown message type 'picture'"),
    (_score_message(), "unexpected_type", "unexpected score message on the frames socket"),
    (_wire("cam", _frame_body(0, v=2)), "version", "unsupported protocol version 2 (supported: 1)"),
    (_wire("cam", _frame_body(0, pixels=b"\x00" * 100)), "bad_pixels",
     "frame.pixels has 100 bytes, but raw uint8 (64, 80, 3) needs 15360"),
    (_wire("cam", _frame_body(0, dtype="float32")), "bad_field", "frame.dtype must be one of uint8, got 'float32'"),
    (_wire("cam", _frame_body(0, shape=[0, 80], pixels=b"")), "empty_frame",
     "empty frame: shape (0, 80) has a zero dimension"),
    (_wire("cam", _frame_body(0, encoding="png", pixels=b"")), "empty_frame", "empty frame: no pixels"),
    (_wire("cam", _frame_body(0, encoding="png", shape=[30000, 30000, 3], pixels=b"\x89PNG")), "oversized",
     "oversized frame: (30000, 30000, 3) decodes to 2700000000 bytes, cap is 65536"),
    (_wire("cam", _frame_body(0, encoding="png", pixels=b"\x89PNG\r\n\x1a\n but nothing else")), "bad_pixels",
     "frame cam#0: pixels are not a png file"),
    (_wire("cam", _frame_body(0, encoding="jpeg", pixels=b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x40\x00\x50\x03"
                                                         + b"\x00" * 40)), "bad_pixels",
     "frame cam#0: jpeg does not decode"),
    (protocol.encode(protocol.frame_message("cam", 0, np.zeros((64, 80, 4), np.uint8))), "bad_image",
     "rejected frame cam#0 (bad_image)"),
    # 1,000 levels deep: Python's repr of such a value overflows its stack (RecursionError).
    (_wire("cam", _frame_body(0, shape=_nested(1000))), "too_deep", "body nests arrays or maps deeper than 8"),
    # Latencies and their percentiles over such times are inf (a heartbeat cannot carry them).
    (_wire("cam", _frame_body(0, t_capture=1e308)), "bad_field", "frame.t_capture must be a finite number in "
                                                                 "[0.0, 10000000000.0], got 1e+308"),
    (_wire("cam", _frame_body(0, t_capture=-1e308)), "bad_field", "frame.t_capture must be a finite number in"),
    (_wire("cam", _frame_body(0, t_source=1e300)), "bad_field", "frame.t_source must be a finite number in"),
    # Padded to a square, these would take 3.6 GB and 1.6 GB.
    (_frame_of_shape((1, 60_000)), "bad_image", "frame of shape (1, 60000) is too large: at most 8192"),
    (_frame_of_shape((1, 40_000)), "bad_image", "frame of shape (1, 40000) is too large"),
    (_frame_of_shape((2, 4_000)), "bad_image", "frame of shape (2, 4000) is too thin: its aspect ratio"),
    (protocol.encode(protocol.Heartbeat("_worker", "worker", 1, time.time(), {"frames_out": 10**9})), "spoofed",
     "heartbeat in a worker's name (stream '_worker') on the frames socket, not forwarded"),
    (protocol.encode(protocol.Status("_worker", "error", "model failed", time.time())), "spoofed",
     "status in a worker's name"),
    (protocol.encode(protocol.Heartbeat("_relay", "worker", 1, time.time(), {"loading": 1})), "spoofed",
     "heartbeat in a worker's name (stream '_relay')"),
]


@pytest.fixture
def worker(background, sockets, address, tiny_bundle):
    """A lossless worker in a thread: (PUSH to send it frames, SUB of its scores, the task)."""
    frames_addr, scores_addr = address(), address()
    push = sockets(zmq.PUSH, bind=frames_addr)
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.1,
                          max_message_size=MAX_SIZE, warn_interval_s=0.0, exit_after_eos=1)
    task = background(lambda stop: serve(tiny_bundle, config, stop))
    sub = sockets(zmq.SUB, connect=scores_addr)
    recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat) and not m.loading)
    return push, sub, task


def _send(sock: zmq.Socket, data: bytes) -> None:
    assert sock.poll(10_000, zmq.POLLOUT), "the worker never took the message"
    sock.send(data)


def _scored(push: zmq.Socket, sub: zmq.Socket, seq: int, image: np.ndarray) -> protocol.Score:
    """Send one good frame and wait for its score: the worker is still serving."""
    _send(push, protocol.encode(protocol.frame_message("cam", seq, image)))
    return recv_until(sub, lambda m: isinstance(m, protocol.Score) and m.seq == seq)[-1]


def _worker_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stream.worker" and r.levelno >= logging.WARNING]


def _wait_for_line(caplog, text: str, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in _worker_lines(caplog):
            if text in line:
                return line
        time.sleep(0.02)
    pytest.fail(f"no worker warning saying {text!r}; got {_worker_lines(caplog)}")


def test_every_bad_input_is_one_line_counted_and_the_worker_goes_on(worker, caplog):
    push, sub, task = worker
    good = make_frames(len(BAD_INPUT) + 6)
    seq = 0
    with caplog.at_level(logging.WARNING, logger="stream.worker"):
        for data, kind, text in BAD_INPUT:
            before = len(_worker_lines(caplog))
            _send(push, data)
            assert _scored(push, sub, seq, good[seq]).seq == seq
            seq += 1
            (line,) = _worker_lines(caplog)[before:]
            assert f"({kind})" in line and text in line and "\n" not in line, line

        # Over max_message_size: ZeroMQ refuses it unread and closes the connection.
        _send(push, b"cam\x00" + b"\x00" * (2 * MAX_SIZE))
        line = _wait_for_line(caplog, "over max_message_size")
        assert f"({MAX_SIZE} bytes)" in line and "reconnected" in line and "\n" not in line
        assert _scored(push, sub, seq, good[seq]).seq == seq
        seq += 1

        beat = recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat)
                          and m.stats.get("frames_out") == seq and "rejected.oversized" in m.stats)[-1]
    expected: dict[str, int] = {}
    for _, kind, _ in BAD_INPUT:
        expected[kind] = expected.get(kind, 0) + 1
    expected["oversized"] += 1
    assert {k.removeprefix("rejected."): v for k, v in beat.stats.items() if k.startswith("rejected.")} == expected
    assert set(protocol.KINDS) <= set(expected)
    _send(push, protocol.encode(protocol.EndOfStream("cam", seq - 1, "eof", time.time())))
    stats = task.join()
    assert stats.frames_out == seq and stats.rejected == expected


def test_a_frame_size_change_is_scored_and_reported_once(worker, caplog):
    push, sub, task = worker
    big, small = make_frames(4, 64, 80), make_frames(4, 32, 40, seed=1)
    images = big[:2] + small + big[2:]
    with caplog.at_level(logging.WARNING, logger="stream.worker"):
        for seq, image in enumerate(images):
            _send(push, protocol.encode(protocol.frame_message("cam", seq, image)))
        _send(push, protocol.encode(protocol.EndOfStream("cam", len(images) - 1, "eof", time.time())))
        messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream))
    assert [m.seq for m in messages if isinstance(m, protocol.Score)] == list(range(len(images)))
    (status,) = [m for m in messages if isinstance(m, protocol.Status)]
    assert status.stream == "cam" and status.level == "warning"
    assert status.message.startswith("stream cam: frame shape changed from (64, 80, 3) to (32, 40, 3) at seq 2")
    assert [line for line in _worker_lines(caplog) if "shape changed" in line] == [status.message]
    beat = recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat) and not m.loading)[-1]
    assert beat.stats["shape_changes"] == 2
    assert task.join().frames_out == len(images)


# --- capture ------------------------------------------------------------------------------


def test_a_video_truncated_in_the_middle_is_sent_up_to_the_damage_with_a_status(background, sockets, address,
                                                                                 video, tmp_path):
    data = video(40).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    task = background(lambda stop: capture(VideoFileSource(cut), CaptureConfig(pub=addr, mode="lossless", fast=True),
                                           stop))
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    frames = [m for m in messages if isinstance(m, protocol.Frame)]
    assert 5 < len(frames) < 40 and [f.seq for f in frames] == list(range(len(frames)))
    (status,) = [m for m in messages if isinstance(m, protocol.Status)]
    assert status.level == "warning" and status.message == (
        f"video file {cut}: ended after {len(frames)} of 40 frames (damaged or truncated)")
    # Frames are missing from the end: the stream ends in error, not as a finished file.
    assert messages[-1].reason == "error" and messages[-1].last_seq == len(frames) - 1
    assert task.join().frames_out == len(frames)


def test_a_looped_file_that_goes_missing_is_retried_until_it_is_back(background, sockets, address, video,
                                                                     tmp_path):
    path = video(5, fps=50.0, name="loop")
    aside = tmp_path / "aside.avi"
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    config = CaptureConfig(pub=addr, mode="lossless", loop=True, max_frames=15, retry_initial_s=0.05,
                           retry_max_s=0.1)
    task = background(lambda stop: capture(VideoFileSource(path, loop=True), config, stop))
    # The file goes while its first pass plays; the capture notices at the start of the next.
    recv_until(pull, lambda m: isinstance(m, protocol.Frame) and m.seq == 1)
    os.replace(path, aside)
    lost = recv_until(pull, lambda m: isinstance(m, protocol.Status) and "retrying" in m.message)[-1]
    assert lost.level == "warning" and lost.message.startswith(f"video file {path}: not found; retrying in")
    os.replace(aside, path)
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    assert any(isinstance(m, protocol.Status) and m.message == "loop: reopened" for m in messages)
    assert messages[-1].last_seq == 14 and messages[-1].reason == "max_frames"
    stats = task.join()
    assert stats.frames_out == 15 and stats.source_errors >= 1


# --- file names from the wire ---------------------------------------------------------------


@pytest.mark.parametrize("stream", ["probe1", "..", "...", "a:b", "_x", "A.B-c_d"])
def test_stream_ids_in_video_names_stay_in_the_folder(tmp_path, stream):
    path = stream_path(tmp_path / "out" / "annotated.mp4", stream)
    assert path.parent == tmp_path / "out"
    assert ":" not in path.name and path.suffix == ".mp4"


def test_a_stream_id_with_a_path_separator_never_becomes_a_path(tmp_path):
    for stream in ("../../etc", "a/b", "a\\b"):
        with pytest.raises(protocol.ProtocolError, match="stream must be 1..64 characters"):
            stream_path(tmp_path / "annotated.mp4", stream)
    # The decoder refuses such an id before any consumer could see it.
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.decode(b"../x\x00" + msgpack.packb({"v": 1}))
    assert info.value.kind == "no_topic"


# --- consumers of scores ----------------------------------------------------------------------


def test_a_viewer_reconnects_after_an_oversized_message_and_says_why(sockets, address, caplog):
    addr = address()
    pub = sockets(zmq.PUB, bind=addr)
    beat = protocol.encode(protocol.Heartbeat("_worker", "worker", 1, time.time(), {}))
    with Subscriber(addr, max_size=4096) as sub, caplog.at_level(logging.WARNING, logger="stream.net"):
        deadline = time.monotonic() + 10
        while not sub.receive(0.05):  # a publisher drops everything until the subscription arrives
            pub.send(beat)
            assert time.monotonic() < deadline
        pub.send(b"_worker\x00" + b"\x00" * 8192)
        received = []
        while not received and time.monotonic() < deadline:
            pub.send(beat)
            received = [m for m in sub.receive(0.05) if isinstance(m, protocol.Heartbeat)]
        assert received, "no message after the oversized one"
    lines = [r.getMessage() for r in caplog.records]
    assert any("a message over 4096 bytes was refused unread" in line and "reconnected" in line for line in lines)
    assert sub.rejected >= 1
