"""Shared fixtures for stream tests: a tiny bundle, small videos, loopback sockets, threads.

Every wait has a timeout that fails the test instead of hanging it, every
socket is closed with linger 0, and every background thread is stopped and
joined at teardown.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import pytest
import zmq

from stream import net, protocol

WAIT_S = 20.0  # the most any one test waits for a message or a thread
T0 = 1_700_000_000.0  # unix seconds of the made-up messages


def make_frames(n: int, height: int = 64, width: int = 80, seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 (height, width, 3) BGR frames: a bright disc moving over speckle."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        frame = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
        centre = (int(width * (0.2 + 0.6 * (i % 50) / 50)), height // 2)
        cv2.circle(frame, centre, max(3, height // 5), (210, 200, 190), -1)
        frames.append(frame)
    return frames


def write_avi(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """Write BGR ``frames`` to an MJPG .avi with OpenCV's built-in writer (no FFmpeg needed)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps,
                             (width, height), True)
    assert writer.isOpened(), f"cannot write {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    """Every frame of a video as OpenCV decodes it (what a capture of the file sends)."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def alive(pid: int) -> bool:
    """True while ``pid`` is a running process (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def recv_message(sock: zmq.Socket, timeout_s: float = WAIT_S) -> protocol.Message:
    """The next decoded message on ``sock``; fails the test if none arrives in time."""
    data = net.recv(sock, timeout_s)
    if data is None:
        pytest.fail(f"no message within {timeout_s} s")
    return protocol.decode(data)


def until_end_of_stream(sock: zmq.Socket, stall_s: float = WAIT_S) -> Iterator[protocol.Message]:
    """Each message as it arrives, up to and including the first EndOfStream.

    Fails the test when the next message takes over ``stall_s``: a long run
    may take any time, but must keep moving.
    """
    received = 0
    while True:
        data = net.recv(sock, stall_s)
        if data is None:
            pytest.fail(f"stalled: no message within {stall_s} s after {received} messages")
        received += 1
        message = protocol.decode(data)
        yield message
        if isinstance(message, protocol.EndOfStream):
            return


def recv_until(sock: zmq.Socket, done: Callable[[protocol.Message], bool],
               timeout_s: float = WAIT_S) -> list[protocol.Message]:
    """Messages up to and including the first for which ``done`` is true; fails on timeout."""
    deadline = time.monotonic() + timeout_s
    messages = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"condition not met within {timeout_s} s ({len(messages)} messages received)")
        messages.append(recv_message(sock, left))
        if done(messages[-1]):
            return messages


def score(seq: int, value: float = 0.8, *, stream: str = "probe1", latency: float = 0.02, dropped: int = 0,
          flags: tuple[str, ...] = (), t: float | None = None, threshold: float = 0.5) -> protocol.Score:
    """A worker's Score of frame ``seq``, captured at ``t`` (default T0 + seq / 25)."""
    t_capture = T0 + seq * 0.04 if t is None else t
    return protocol.Score(stream=stream, seq=seq, score=value, decision=value >= threshold, threshold=threshold,
                          model="tiny-test", t_capture=t_capture, t_received=t_capture + 0.001,
                          t_scored=t_capture + latency, latency=latency, flags=flags, window=min(seq + 1, 8),
                          dropped=dropped)


def heartbeat(t: float = T0, **stats) -> protocol.Heartbeat:
    """A worker's heartbeat with ``stats``."""
    return protocol.Heartbeat("_worker", "worker", 4321, t, stats)


def wait_subscribed(sock: zmq.Socket, timeout_s: float = WAIT_S) -> None:
    """Wait until a subscriber's subscription reaches an XPUB socket, so nothing sent is lost."""
    if net.recv(sock, timeout_s) is None:
        pytest.fail(f"no subscriber within {timeout_s} s")


@pytest.fixture(scope="session")
def tiny_bundle_path(tmp_path_factory, tiny_config, tiny_models) -> Path:
    from models.bundle import save

    extractor, head = tiny_models
    return save(tmp_path_factory.mktemp("bundle") / "tiny.fhb", tiny_config, extractor, head, threshold=0.5)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundle_path):
    from models.bundle import load

    return load(tiny_bundle_path)


@pytest.fixture(scope="session")
def tiny_runtime(tiny_bundle):
    runtime = tiny_bundle.runtime()
    runtime.warm_up()
    return runtime


@pytest.fixture
def video(tmp_path) -> Callable[..., Path]:
    """``video(n, fps=25, name="clip", **frame_kwargs)`` -> path of a new MJPG .avi."""

    def make(n: int, fps: float = 25.0, name: str = "clip", **kwargs: Any) -> Path:
        return write_avi(tmp_path / f"{name}.avi", make_frames(n, **kwargs), fps)

    return make


@pytest.fixture
def address() -> Callable[[], str]:
    """A factory of free ``tcp://127.0.0.1:<port>`` addresses."""
    return net.free_tcp_address


@pytest.fixture
def sockets():
    """``sockets(kind, bind=... | connect=..., **net.socket kwargs)``; all closed at teardown."""
    opened: list[zmq.Socket] = []

    def make(kind: int, **kwargs: Any) -> zmq.Socket:
        sock = net.socket(kind, **kwargs)
        opened.append(sock)
        return sock

    yield make
    for sock in opened:
        sock.close(linger=0)


class Task:
    """A function running in a thread with its own stop event; ``join`` returns its result."""

    def __init__(self, fn: Callable[[threading.Event], Any]) -> None:
        self.stop = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[threading.Event], Any]) -> None:
        try:
            self.result = fn(self.stop)
        except BaseException as exc:  # reported by join, in the test's thread
            self.error = exc

    def join(self, timeout_s: float = WAIT_S) -> Any:
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self.stop.set()
            pytest.fail(f"background task still running after {timeout_s} s")
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def background():
    """``background(fn)`` runs ``fn(stop_event)`` in a thread; teardown stops and joins every one."""
    tasks: list[Task] = []

    def start(fn: Callable[[threading.Event], Any]) -> Task:
        tasks.append(Task(fn))
        return tasks[-1]

    yield start
    for task in tasks:
        task.stop.set()
    for task in tasks:
        task.thread.join(WAIT_S)
        assert not task.thread.is_alive(), "a background task did not stop"
