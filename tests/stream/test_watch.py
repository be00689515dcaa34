"""The viewer's state (StreamBoard) driven with messages, and the watch loop over a socket."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import zmq
from rich.console import Console

from stream import protocol
from stream.protocol import EndOfStream, Heartbeat
from stream.watch import StreamBoard, WatchConfig, watch
from tests.stream.conftest import T0, heartbeat, score, wait_subscribed
from tools.render import BoardLog

# --- StreamBoard ----------------------------------------------------------------------


def test_board_rates_and_latency_percentiles():
    board = StreamBoard(clock=lambda: T0)
    latencies = np.linspace(0.010, 0.050, 41)
    for seq, latency in enumerate(latencies):
        board.update(score(seq, latency=float(latency)), now=T0 + seq * 0.04)  # 25 fps
    (row,) = board.rows(now=T0 + 40 * 0.04)
    assert row["stream"] == "probe1" and row["seq"] == 40 and row["scores"] == 41
    assert row["fps_in"] == pytest.approx(25.0) and row["fps_out"] == pytest.approx(25.0)
    assert row["latency_p50_ms"] == pytest.approx(np.percentile(latencies, 50) * 1000)
    assert row["latency_p99_ms"] == pytest.approx(np.percentile(latencies, 99) * 1000)
    assert row["drops"] == 0 and row["decision"] == "Head" and not row["ended"]


def test_board_drops_are_worker_drops_plus_unexplained_gaps():
    board = StreamBoard(clock=lambda: T0)
    # seq 3 dropped by the worker (counted in Score.dropped); seqs 6 and 7 lost on the way.
    for seq, dropped in ((0, 0), (1, 0), (2, 0), (4, 1), (5, 1), (8, 1)):
        board.update(score(seq, dropped=dropped, flags=("gap",) if seq == 4 else ()), now=T0 + seq * 0.1)
    (row,) = board.rows(now=T0 + 0.8)
    assert (row["dropped"], row["lost"], row["drops"]) == (1, 2, 3)
    # Frames are counted in by their seq advance, scored or not: 8 frames in 0.8 s.
    assert row["fps_in"] == pytest.approx(10.0)


def test_board_end_of_stream_and_restart():
    board = StreamBoard(clock=lambda: T0)
    assert not board.all_ended
    board.update(score(0, stream="a"), now=T0)
    board.update(score(0, stream="b"), now=T0)
    board.update(EndOfStream("a", 0, "eof", T0), now=T0 + 1)
    assert not board.all_ended
    board.update(EndOfStream("b", 0, "eof", T0), now=T0 + 1)
    assert board.all_ended
    rows = {r["stream"]: r for r in board.rows(now=T0 + 2)}
    assert rows["a"]["ended"] and rows["a"]["end_reason"] == "eof" and rows["a"]["age_s"] == pytest.approx(1.0)
    # The source starts again: seq goes back, the stream is live again and no gap is counted.
    board.update(score(3, stream="a", dropped=2), now=T0 + 3)
    board.update(score(0, stream="a"), now=T0 + 4)
    rows = {r["stream"]: r for r in board.rows(now=T0 + 4)}
    assert not rows["a"]["ended"] and rows["a"]["restarts"] == 1 and not board.all_ended
    assert rows["a"]["dropped"] == 2  # the worker's count of the earlier run is kept


def test_board_heartbeats_and_silent_worker_warning():
    board = StreamBoard(clock=lambda: T0)
    assert board.warnings(now=T0 + 1) == []
    assert "no worker heartbeat" in board.warnings(now=T0 + 3.5)[0]
    board.update(heartbeat(frames_in=100, frames_out=97, dropped=3, fps_in=25.0, fps_out=24.5,
                           **{"rejected.version": 2, "rejected.oversized": 1}), now=T0 + 4)
    (proc,) = board.processes(now=T0 + 5)
    assert proc["role"] == "worker" and proc["pid"] == 4321 and not proc["dead"]
    assert (proc["frames_in"], proc["frames_out"], proc["rejected"]) == (100, 97, 3)
    assert proc["rejected_by"] == {"version": 2, "oversized": 1}
    assert board.warnings(now=T0 + 5) == []
    (warning,) = board.warnings(now=T0 + 7.5)
    assert "worker" in warning and "silent for 4 s" in warning


def test_board_shows_a_loading_worker_as_starting_not_missing():
    board = StreamBoard(clock=lambda: T0)
    board.update(heartbeat(T0 + 1, loading=1, uptime_s=1.0), now=T0 + 1)
    board.update(heartbeat(T0 + 9, loading=1, uptime_s=9.2), now=T0 + 9)
    assert board.warnings(now=T0 + 10) == []
    (proc,) = board.processes(now=T0 + 10)
    assert proc["loading"] and proc["uptime_s"] == 9.2
    # A worker that stops sending while loading is silent like any other.
    (warning,) = board.warnings(now=T0 + 13)
    assert "silent for 4 s" in warning
    board.update(heartbeat(T0 + 13, frames_in=0, frames_out=0), now=T0 + 13)
    (proc,) = board.processes(now=T0 + 13)
    assert not proc["loading"]


def test_board_expects_a_finished_capture_to_fall_silent():
    board = StreamBoard(clock=lambda: T0)
    board.update(Heartbeat("_capture.probe1", "capture", 11, T0, {"frames_out": 5}), now=T0)
    board.update(heartbeat(), now=T0 + 10)
    board.update(score(0), now=T0 + 10)
    assert any("capture" in w for w in board.warnings(now=T0 + 10))
    board.update(EndOfStream("probe1", 0, "eof", T0), now=T0 + 10)
    assert board.warnings(now=T0 + 10) == []


# --- the loop over a socket --------------------------------------------------------


def test_watch_over_a_socket_until_end_of_stream(sockets, address, background):
    addr = address()
    pub = sockets(zmq.XPUB, bind=addr, hwm=1000)
    out = io.StringIO()
    config = WatchConfig(sub=addr, until_eos=True, interval_s=0.05)
    task = background(lambda stop: watch(config, stop, BoardLog(Console(file=out, width=160), config.interval_s)))
    wait_subscribed(pub)
    pub.send(protocol.encode(heartbeat(time.time(), frames_in=3, frames_out=3)))
    for seq in (0, 1, 2):
        pub.send(protocol.encode(score(seq, t=time.time())))
    pub.send(protocol.encode(EndOfStream("probe1", 2, "eof", time.time())))
    board = task.join()
    (row,) = board.rows()
    assert row["seq"] == 2 and row["scores"] == 3 and row["ended"]
    assert board.processes()[0]["frames_in"] == 3
    assert "probe1" in out.getvalue() and "ended" in out.getvalue()
