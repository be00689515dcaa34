"""Hardening (issue 17), each case sent for real to a running worker over loopback: the worker keeps
scoring good frames and its counters say what happened."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from models.bundle import Bundle
from models.runtime import Runtime
from stream import protocol
from stream.capture import CaptureConfig, capture
from stream.sources import Source
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import make_frames, recv_until, wait_subscribed

ROOT = Path(__file__).resolve().parents[2]


def with_runtime(bundle: Bundle, runtime_class: type[Runtime]) -> Bundle:
    """``bundle`` whose ``runtime()`` builds a ``runtime_class``."""

    class Wrapped(Bundle):
        def runtime(self):
            return runtime_class(self.config, self.extractor, self.head)

    return Wrapped(**{f.name: getattr(bundle, f.name) for f in dataclasses.fields(bundle)})


def is_ready(m: protocol.Message) -> bool:
    return isinstance(m, protocol.Heartbeat) and m.stream == "_worker" and not m.loading


def send(sock: zmq.Socket, msg: protocol.Message | bytes) -> None:
    assert sock.poll(10_000, zmq.POLLOUT), "the worker never took the message"
    sock.send(msg if isinstance(msg, bytes) else protocol.encode(msg))


def frame(stream: str, seq: int, image: np.ndarray | None = None) -> protocol.Frame:
    return protocol.frame_message(stream, seq, make_frames(1, seed=seq)[0] if image is None else image)


def end(stream: str, last_seq: int | None) -> protocol.EndOfStream:
    return protocol.EndOfStream(stream, last_seq, "eof", time.time())


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stream.worker" and r.levelno >= logging.WARNING]


@pytest.fixture
def lossless(background, sockets, address, tiny_bundle):
    """``lossless(bundle=None, **config)``: a lossless worker in a thread -> (PUSH to it, SUB of its scores, task)."""

    def start(bundle: Bundle | None = None, **config):
        frames_addr, scores_addr = address(), address()
        push = sockets(zmq.PUSH, bind=frames_addr)
        cfg = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.1,
                           warn_interval_s=0.0, **config)
        task = background(lambda stop: serve(bundle or tiny_bundle, cfg, stop))
        sub = sockets(zmq.SUB, connect=scores_addr)
        recv_until(sub, is_ready)
        return push, sub, task

    return start


class FlakyRuntime(Runtime):
    """The tiny model, whose backbone fails on any batch that holds an all-black frame."""

    def features(self, images):
        # Black is -1 after the tiny backbone's normalisation (warm-up's zeros stay 0).
        if any(np.all(image == -1.0) for image in images):
            raise RuntimeError("backbone failed on a constant image")
        return super().features(images)


def test_a_frame_that_breaks_the_model_is_counted_and_the_worker_scores_on(lossless, tiny_bundle, caplog):
    push, sub, task = lossless(with_runtime(tiny_bundle, FlakyRuntime), max_batch=8, exit_after_eos=1)
    black = np.zeros((64, 80, 3), np.uint8)
    with caplog.at_level(logging.WARNING, logger="stream.worker"):
        for seq in range(12):
            send(push, frame("cam", seq, black if seq in (3, 9) else None))
        send(push, end("cam", 11))
        messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream))
    scores = {m.seq: m for m in messages if isinstance(m, protocol.Score)}
    assert sorted(scores) == [s for s in range(12) if s not in (3, 9)]
    assert scores[4].dropped == 1 and "gap" in scores[4].flags and scores[11].dropped == 2
    assert [line for line in warnings_of(caplog) if "(internal)" in line] == [
        "rejected frame cam#3 (internal): RuntimeError: backbone failed on a constant image",
        "rejected frame cam#9 (internal): RuntimeError: backbone failed on a constant image"]
    beat = recv_until(sub, lambda m: is_ready(m) and m.stats["frames_in"] == 12)[-1]
    assert beat.stats["rejected.internal"] == 2 and beat.stats["frames_out"] == 10
    assert task.join().rejected == {"internal": 2}


def test_upstream_messages_in_a_workers_name_are_not_forwarded_and_the_rest_are(lossless):
    push, sub, task = lossless(exit_after_eos=1)
    spoofs = [protocol.Heartbeat("_worker", "worker", 1, time.time(), {"frames_out": 10**9}),
              protocol.Status("_worker", "error", "the model failed, stop the scan", time.time())]
    genuine = [protocol.Heartbeat("_capture.cam", "capture", 2, time.time(), {"frames_out": 1}),
               protocol.Status("cam", "warning", "device 0 lost, retrying in 2 s", time.time())]
    for msg in spoofs + genuine:
        send(push, msg)
    send(push, frame("cam", 0))
    send(push, end("cam", 0))
    messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream))
    assert all(m in messages for m in genuine)
    assert not any(m in messages for m in spoofs)
    assert all(m.pid == os.getpid() for m in messages if isinstance(m, protocol.Heartbeat) and m.stream == "_worker")
    assert task.join().rejected == {"spoofed": 2}


def test_a_new_stream_over_max_streams_is_rejected_in_one_line_until_a_stream_ends(lossless, caplog):
    push, sub, task = lossless(max_streams=2, exit_after_eos=3)
    with caplog.at_level(logging.WARNING, logger="stream.worker"):
        for stream in ("a", "b", "c"):
            send(push, frame(stream, 0))
        send(push, frame("a", 1))
        recv_until(sub, lambda m: isinstance(m, protocol.Score) and (m.stream, m.seq) == ("a", 1))
        (line,) = warnings_of(caplog)
        assert line.startswith("rejected frame c#0 (too_many_streams): a new stream, and 2 streams are held "
                               "(max_streams)")
        beat = recv_until(sub, lambda m: is_ready(m) and "rejected.too_many_streams" in m.stats)[-1]
        assert beat.stats["rejected.too_many_streams"] == 1 and beat.stats["streams"] == 2
        # An end of stream makes room.
        send(push, end("a", 1))
        send(push, frame("c", 1))
        messages = recv_until(sub, lambda m: isinstance(m, protocol.Score) and m.stream == "c")
    assert [m.seq for m in messages if isinstance(m, protocol.Score)] == [1]
    for stream, last in (("b", 0), ("c", 1)):
        send(push, end(stream, last))
    stats = task.join()
    assert stats.frames_out == 4 and stats.rejected == {"too_many_streams": 1}


def test_an_idle_stream_is_forgotten_with_a_status_and_comes_back_flagged(lossless):
    push, sub, task = lossless(stream_idle_s=0.3, exit_after_eos=1)
    send(push, frame("x", 0))
    messages = recv_until(sub, lambda m: isinstance(m, protocol.Status) and m.stream == "x")
    assert [m.seq for m in messages if isinstance(m, protocol.Score)] == [0]
    assert messages[-1].level == "info" and "no frame for 0.3 s, forgotten" in messages[-1].message
    beat = recv_until(sub, is_ready)[-1]
    assert beat.stats["streams"] == 0 and beat.stats["streams_expired"] == 1
    # What came before is unknown now: the window starts afresh, flagged.
    send(push, frame("x", 5))
    (score,) = [m for m in recv_until(sub, lambda m: isinstance(m, protocol.Score)) if isinstance(m, protocol.Score)]
    assert (score.seq, score.flags, score.window) == (5, ("warmup", "gap"), 1)
    send(push, end("x", 5))
    assert task.join().frames_out == 2


def test_heartbeats_stay_readable_with_600_streams(lossless):
    """Per-stream figures for every stream put 1,200 keys in a heartbeat: over what a decoder takes (1,024)."""
    push, sub, task = lossless(max_batch=64, max_streams=1000)
    (image,) = make_frames(1)
    for i in range(600):
        send(push, frame(f"s{i}", 0, image))
    # recv_until decodes every message with the project's own decoder.
    beat = recv_until(sub, lambda m: is_ready(m) and m.stats.get("frames_out") == 600)[-1]
    assert beat.stats["streams"] == 600 and len(beat.stats) < 100
    assert sum(key.startswith("frames_out.") for key in beat.stats) == 32
    task.stop.set()
    assert task.join().frames_out == 600


class CountingRuntime(Runtime):
    """The tiny model, recording the size of every backbone call after warm-up."""

    sizes: list[int] = []

    def features(self, images):
        CountingRuntime.sizes.append(len(images))
        return super().features(images)

    def warm_up(self):
        super().warm_up()
        CountingRuntime.sizes.clear()


def test_live_mode_with_many_streams_scores_at_most_a_batch_at_a_time_and_every_stream(
        background, sockets, address, tiny_bundle):
    """200 streams of 3 frames each at once: one backbone call of 200 frames (memory grows with the
    streams) without the bound; with it, calls of max_batch, the newest frame of every stream scored."""
    frames_addr, scores_addr = address(), address()
    # Unbounded on this side: every frame reaches the worker, which alone decides what to drop.
    xpub = sockets(zmq.XPUB, bind=frames_addr, hwm=0)
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="live", max_batch=4, heartbeat_s=0.1)
    task = background(lambda stop: serve(with_runtime(tiny_bundle, CountingRuntime), config, stop))
    sub = sockets(zmq.SUB, connect=scores_addr, hwm=0)
    recv_until(sub, is_ready)
    wait_subscribed(xpub)
    streams = [f"s{i}" for i in range(200)]
    (image,) = make_frames(1)
    for seq in range(3):
        for stream in streams:
            xpub.send(protocol.encode(frame(stream, seq, image)))
    last: dict[str, protocol.Score] = {}

    def every_newest_scored(m):
        if isinstance(m, protocol.Score):
            last[m.stream] = m
        return len(last) == len(streams) and all(s.seq == 2 for s in last.values())

    recv_until(sub, every_newest_scored, timeout_s=60)
    assert CountingRuntime.sizes and max(CountingRuntime.sizes) <= 4
    beat = recv_until(sub, lambda m: is_ready(m) and m.stats["frames_in"] == 600)[-1]
    # Every frame is scored or counted as dropped, none lost.
    assert beat.stats["frames_out"] + beat.stats["dropped"] == 600 and beat.stats["lost"] == 0
    task.stop.set()
    task.join()


# --- processes ---------------------------------------------------------------------------


def worker_process(bundle: Path, sub: str, pub: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tools.cli", "worker", "--model", str(bundle), "--sub", sub,
                             "--pub", pub, "--heartbeat", "0.2", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def stopped(process: subprocess.Popen) -> str:
    """Its output, once it has exited (killed if it has not within 30 s)."""
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"still running 30 s after being stopped:\n{out[-2000:]}")
    return out


@pytest.mark.slow
def test_sigterm_while_the_model_loads_stops_the_worker_then_and_cleanly(sockets, address, tiny_bundle_path):
    """Loading ignored SIGTERM (the handler only set a stop event that loading never looked at)."""
    scores_addr = address()
    sub = sockets(zmq.SUB, connect=scores_addr)
    worker = worker_process(tiny_bundle_path, address(), scores_addr)
    try:
        first = recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat), timeout_s=60)[-1]
        assert first.loading
        worker.send_signal(signal.SIGTERM)
    finally:
        out = stopped(worker)
    assert worker.returncode == 0, out[-2000:]
    assert "worker: SIGTERM while loading its model, stopped" in out
    beats = []
    while sub.poll(200):
        beats.append(protocol.decode(sub.recv()))
    assert all(m.loading for m in beats if isinstance(m, protocol.Heartbeat)), "it went on to become ready"


class Endless(Source):
    """Small grey frames (48x64), as many as the worker takes."""

    name = "endless"

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, (48, 64), np.uint8) for _ in range(8)]

    def __iter__(self):
        for i in range(10**9):
            yield self.images[i % len(self.images)], None


@pytest.mark.slow
def test_kill_9_of_a_lossless_worker_marks_the_first_score_of_its_successor(background, sockets, address,
                                                                            tiny_bundle_path):
    """What was in flight to the killed worker is lost (docs/protocol.md, section 5); its successor's
    first score says so with ``gap``, and the stream goes on in order."""
    frames_addr, scores_addr = address(), address()
    sub = sockets(zmq.SUB, connect=scores_addr, hwm=0)
    first = worker_process(tiny_bundle_path, frames_addr, scores_addr, "--mode", "lossless")
    second = None
    try:
        recv_until(sub, is_ready, timeout_s=60)
        background(lambda stop: capture(Endless(), CaptureConfig(pub=frames_addr, mode="lossless", fast=True,
                                                                  stream="cam"), stop))
        before = [m.seq for m in recv_until(sub, lambda m: isinstance(m, protocol.Score) and m.seq >= 300)
                  if isinstance(m, protocol.Score)]
        first.kill()
        first.wait()
        second = worker_process(tiny_bundle_path, frames_addr, scores_addr, "--mode", "lossless")
        messages = recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat) and m.pid == second.pid
                              and not m.loading, timeout_s=60)
        before += [m.seq for m in messages if isinstance(m, protocol.Score)]
        after = [m for m in recv_until(sub, lambda m: isinstance(m, protocol.Score) and m.window == 8)
                 if isinstance(m, protocol.Score)]
        second.send_signal(signal.SIGINT)
    finally:
        if first.poll() is None:
            first.kill()
        stopped(first)
        if second is not None:
            stopped(second)
    assert "gap" in after[0].flags and "warmup" in after[0].flags and after[0].seq > before[-1]
    seqs = before + [m.seq for m in after]
    assert seqs == sorted(set(seqs)) and seqs[:300] == list(range(300))
    assert not any("gap" in m.flags for m in after[1:])
