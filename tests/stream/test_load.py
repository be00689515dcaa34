"""Load: a long lossless replay through real capture and worker loops, checked frame by frame by seq."""

from __future__ import annotations

import logging
import time

import numpy as np
import zmq

from stream import protocol
from stream.capture import CaptureConfig, capture
from stream.sources import Source
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import recv_until, until_end_of_stream

log = logging.getLogger(__name__)

COUNT = 10_000


class Replay(Source):
    """``count`` tiny grey frames (32x40) drawn in turn from a few fixed images, no pacing of its own."""

    name = "replay"

    def __init__(self, count: int, seed: int = 0) -> None:
        self.count = count
        rng = np.random.default_rng(seed)
        self.images = [rng.integers(0, 256, (32, 40), np.uint8) for _ in range(16)]

    def __iter__(self):
        for i in range(self.count):
            yield self.images[i % len(self.images)], None


def test_lossless_replay_loses_and_duplicates_nothing(background, sockets, address, tiny_bundle):
    """10,000 frames, capture as fast as the worker takes them (about 10 s on 2 cores)."""
    count = COUNT
    frames_addr, scores_addr = address(), address()
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", max_batch=64, heartbeat_s=0.5,
                          exit_after_eos=1)
    worker = background(lambda stop: serve(tiny_bundle, config, stop))
    # No receive limit: this consumer must keep every score however far it falls behind.
    consumer = sockets(zmq.SUB, connect=scores_addr, hwm=0)
    recv_until(consumer, lambda m: isinstance(m, protocol.Heartbeat))

    started = time.monotonic()
    source = background(lambda stop: capture(Replay(count), CaptureConfig(pub=frames_addr, mode="lossless",
                                                                          fast=True), stop))
    seqs = []
    for msg in until_end_of_stream(consumer, 30.0):
        if isinstance(msg, protocol.Score):
            seqs.append(msg.seq)
    elapsed = time.monotonic() - started

    assert len(seqs) == count and seqs == list(range(count)), "frames lost, duplicated or out of order"
    assert msg.last_seq == count - 1 and msg.reason == "eof"
    assert source.join().frames_out == count
    stats = worker.join()
    assert (stats.frames_in, stats.frames_out, stats.dropped, stats.rejected) == (count, count, 0, {})
    log.info("lossless replay: %d frames in %.1f s (%.0f frames/s), none lost or duplicated",
             count, elapsed, count / elapsed)


def test_a_lossless_capture_holds_its_frames_until_a_worker_connects(background, sockets, address):
    addr = address()
    task = background(lambda stop: capture(Replay(50), CaptureConfig(pub=addr, mode="lossless", fast=True), stop))
    time.sleep(0.5)  # the capture is bound and blocked on its first frame
    pull = sockets(zmq.PULL, connect=addr)
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    assert [m.seq for m in messages if isinstance(m, protocol.Frame)] == list(range(50))
    assert task.join().frames_out == 50


class Pausing(Replay):
    """``Replay``, then a pause before the source ends (time for the worker to go away)."""

    def __init__(self, count: int, pause_s: float) -> None:
        super().__init__(count)
        self.pause_s = pause_s

    def __iter__(self):
        yield from super().__iter__()
        time.sleep(self.pause_s)


def test_a_lossless_end_of_stream_waits_for_a_worker_that_comes_back(background, sockets, address):
    """The worker went away after the last frame; its successor, 3 s later, still gets the end of stream
    (after a stop, the capture would give up on it after 2 s)."""
    addr = address()
    first = sockets(zmq.PULL, connect=addr)
    task = background(lambda stop: capture(Pausing(5, 0.5), CaptureConfig(pub=addr, mode="lossless", fast=True),
                                           stop))
    frames = recv_until(first, lambda m: isinstance(m, protocol.Frame) and m.seq == 4)
    assert [m.seq for m in frames if isinstance(m, protocol.Frame)] == list(range(5))
    first.close(linger=0)
    time.sleep(3.0)
    second = sockets(zmq.PULL, connect=addr)
    end = recv_until(second, lambda m: isinstance(m, protocol.EndOfStream))[-1]
    assert (end.last_seq, end.reason) == (4, "eof")
    assert task.join().reason == "eof"
