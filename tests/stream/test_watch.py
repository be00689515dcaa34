"""The viewer's state (StreamBoard) driven with messages, and the watch loop over a socket."""

from __future__ import annotations

import dataclasses
import io
import time

import numpy as np
import pytest
import zmq
from rich.console import Console

from models.errors import ConfigError
from stream import protocol
from stream.consumer import ConsumerConfig
from stream.protocol import EndOfStream, Heartbeat, Status
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
    assert not board.processes(now=T0 + 10)[0]["finished"]
    board.update(EndOfStream("probe1", 0, "eof", T0), now=T0 + 10)
    assert board.warnings(now=T0 + 10) == []
    capture = {p["id"]: p for p in board.processes(now=T0 + 10)}["_capture.probe1"]
    assert capture["dead"] and capture["finished"]


def test_board_verdict_is_smoothed_and_in_view_runs_from_where_the_head_came():
    board = StreamBoard(hold=3, clock=lambda: T0)
    values = [0.1, 0.9, 0.2, 0.9, 0.9, 0.9, 0.9, 0.2, 0.9]
    rows = []
    for seq, value in enumerate(values):
        board.update(score(seq, value), now=T0 + seq * 0.04)
        rows.append(board.rows(now=T0 + seq * 0.04)[0])
    # One Head decision alone does not turn the verdict; three in a row do, and one Not-Head does not undo it.
    assert [r["decision"] for r in rows][:3] == ["Not-Head", "Head", "Not-Head"]
    assert [r["verdict"] for r in rows] == ["Not-Head"] * 5 + ["Head"] * 4
    assert [r["in_view_s"] is None for r in rows] == [True] * 5 + [False] * 4
    # Back-dated to seq 3, where the run of Head decisions began: 8 - 3 frames at 25 fps.
    assert rows[-1]["in_view_s"] == pytest.approx(5 * 0.04)
    board.update(EndOfStream("probe1", 8, "eof", T0), now=T0 + 1)
    (row,) = board.rows(now=T0 + 1)
    assert row["ended"] and row["verdict"] == "Head" and row["in_view_s"] is None
    # The next run of the stream starts at Not-Head, however its last run ended.
    board.update(score(0, 0.9), now=T0 + 2)
    assert board.rows(now=T0 + 2)[0]["verdict"] == "Not-Head"


def test_board_history_holds_the_last_seconds_oldest_first():
    board = StreamBoard(history_s=2.02, clock=lambda: T0)
    for seq in range(100):  # 4 s at 25 fps
        board.update(score(seq, seq / 100), now=T0 + seq * 0.04)
    (row,) = board.rows(now=T0 + 4)
    ages = [age for age, _ in row["history"]]
    assert ages == sorted(ages, reverse=True) and ages[-1] == 0.0 and max(ages) <= 2.02
    assert len(row["history"]) == 51 and row["history"][-1][1] == pytest.approx(0.99)
    board.update(score(0, 0.5), now=T0 + 5)  # the source started again: its old scores are another run
    assert board.rows(now=T0 + 5)[0]["history"] == ((0.0, 0.5),)


def started(seq: int, window: int, *, stream: str = "probe1", dropped: int = 0, flags=("warmup",)):
    """The first score of a stream the worker began at seq - window + 1."""
    return dataclasses.replace(score(seq, stream=stream, dropped=dropped, flags=flags), window=window)


def test_board_counts_frames_lost_before_the_first_score_only_when_the_worker_never_had_them():
    board = StreamBoard(clock=lambda: T0)
    # The worker subscribed late: its first frame was seq 5, and it dropped 2 of the 5 before.
    board.update(started(5, 1, stream="late-worker", dropped=2), now=T0)
    # This watcher joined a stream running for long: a full window, nothing is known about seqs 0..499.
    board.update(started(500, 8, stream="late-watcher", flags=()), now=T0)
    # Joined while the worker's window was filling: the worker began at seq 2.
    board.update(started(4, 3, stream="warming"), now=T0)
    # A hole in the window: where the worker began cannot be told.
    board.update(started(6, 3, stream="holed", flags=("warmup", "gap")), now=T0)
    # The worker's first frame, flagged gap since what came before it is unknown to the worker.
    board.update(started(4, 1, stream="begun-late", flags=("warmup", "gap")), now=T0)
    rows = {r["stream"]: r for r in board.rows(now=T0)}
    assert {name: r["lost_at_start"] for name, r in rows.items()} == {
        "late-worker": 3, "late-watcher": 0, "warming": 2, "holed": 0, "begun-late": 4}
    assert (rows["late-worker"]["dropped"], rows["late-worker"]["lost"], rows["late-worker"]["drops"]) == (2, 3, 5)
    # A new run after an end of stream is a first score again, not a gap after the last run.
    board.update(EndOfStream("warming", 4, "eof", T0), now=T0 + 1)
    board.update(started(9, 1, stream="warming"), now=T0 + 2)
    row = {r["stream"]: r for r in board.rows(now=T0 + 2)}["warming"]
    assert (row["lost_at_start"], row["lost"], row["restarts"]) == (11, 11, 0)


def test_board_drops_the_events_of_an_ended_stream_and_ages_out_old_ones():
    now = [T0]
    board = StreamBoard(event_max_age_s=30.0, clock=lambda: now[0])
    board.update(Status("probe1", "warning", "device 0 lost, retrying in 2.0 s", T0), now=T0)
    board.update(Status("_capture.probe1", "info", "probe1: reopened", T0), now=T0)
    board.update(Status("probe2", "warning", "frame shape changed", T0), now=T0)
    board.update(Status("_worker", "error", "out of memory", T0 + 20), now=T0 + 20)
    assert [e["message"] for e in board.recent_events(now=T0 + 20)] == [
        "device 0 lost, retrying in 2.0 s", "probe1: reopened", "frame shape changed", "out of memory"]
    board.update(score(0), now=T0 + 21)
    board.update(EndOfStream("probe1", 0, "eof", T0 + 21), now=T0 + 21)
    assert [e["stream"] for e in board.recent_events(now=T0 + 21)] == ["probe2", "_worker"]
    (event,) = board.recent_events(now=T0 + 40)
    assert event["message"] == "out of memory" and event["age_s"] == pytest.approx(20.0) and event["number"] == 4
    now[0] = T0 + 40
    assert [e.message for e in board.events] == ["out of memory"]


# --- the loop over a socket --------------------------------------------------------


def test_watch_over_a_socket_until_end_of_stream(sockets, address, background):
    addr = address()
    pub = sockets(zmq.XPUB, bind=addr, hwm=1000)
    out = io.StringIO()
    config = WatchConfig(sub=addr, until_eos=True, interval_s=0.05, hold=1)
    task = background(lambda stop: watch(config, stop, BoardLog(Console(file=out, width=160), config.interval_s)))
    wait_subscribed(pub)
    pub.send(protocol.encode(heartbeat(time.time(), frames_in=3, frames_out=3)))
    for seq in (0, 1, 2):
        pub.send(protocol.encode(score(seq, t=time.time())))
    pub.send(protocol.encode(EndOfStream("probe1", 2, "eof", time.time())))
    board = task.join()
    (row,) = board.rows()
    assert row["seq"] == 2 and row["scores"] == 3 and row["ended"]
    assert board.hold == 1 and row["verdict"] == "Head"  # hold 1: the verdict is the raw decision at once
    assert board.processes()[0]["frames_in"] == 3
    assert "probe1" in out.getvalue() and "ended" in out.getvalue()


def test_watch_settings_are_the_consumers_plus_its_own():
    assert issubclass(WatchConfig, ConsumerConfig)
    config = WatchConfig()
    assert (config.hwm, config.interval_s) == (64, 1.0)
    with pytest.raises(ConfigError, match=r"hold: must be an integer in \[1, 1000\], got 0"):
        WatchConfig(hold=0)
    with pytest.raises(ConfigError, match="interval_s: must be > 0"):
        WatchConfig(interval_s=0)
