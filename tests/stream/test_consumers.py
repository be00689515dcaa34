"""Consumers of the scores socket: the watcher's StreamBoard, the recorder, annotate()."""

from __future__ import annotations

import csv
import io
import logging
import sys
import time

import cv2
import numpy as np
import pytest
import zmq
from rich.console import Console

from stream import net, protocol
from stream.protocol import EndOfStream, Heartbeat, Score, Status
from stream.record import (HEAD_COLOUR, NOT_HEAD_COLOUR, RecordConfig, Recorder, annotate, border_width,
                           estimate_fps, gui_problem, record, stream_path)
from stream.stats import GapCounter, LatencyWindow, RateCounter
from stream.watch import StreamBoard, WatchConfig, process_line, render, row_line, watch
from tests.stream.conftest import WAIT_S, make_frames, read_video

T0 = 1_700_000_000.0


def score(seq: int, value: float = 0.8, *, stream: str = "probe1", latency: float = 0.02, dropped: int = 0,
          flags: tuple[str, ...] = (), t: float | None = None, threshold: float = 0.5) -> Score:
    t_capture = T0 + seq * 0.04 if t is None else t
    return Score(stream=stream, seq=seq, score=value, decision=value >= threshold, threshold=threshold,
                 model="tiny-test", t_capture=t_capture, t_received=t_capture + 0.001,
                 t_scored=t_capture + latency, latency=latency, flags=flags, window=min(seq + 1, 8),
                 dropped=dropped)


def heartbeat(t: float = T0, **stats) -> Heartbeat:
    return Heartbeat("_worker", "worker", 4321, t, stats)


# --- pure counters ------------------------------------------------------------------------


def test_rate_counter_counts_intervals_and_forgets_old_events():
    rate = RateCounter(window_s=2.0)
    for i in range(11):  # 10 intervals in 1 s
        rate.add(100.0 + i * 0.1)
    assert rate.rate(101.0) == pytest.approx(10.0)
    for i in range(11, 31):
        rate.add(100.0 + i * 0.1)
    assert rate.rate(103.0) == pytest.approx(10.0)
    assert rate.rate(110.0) == 0.0


def test_latency_window_matches_numpy_and_is_bounded():
    window = LatencyWindow(size=100)
    values = np.random.default_rng(0).exponential(20.0, 250)
    for v in values:
        window.add(float(v))
    assert len(window) == 100
    for q in (50, 99):
        assert window.percentile(q) == pytest.approx(np.percentile(values[-100:], q))
    assert LatencyWindow().percentile(50) is None


def test_gap_counter_counts_holes_and_restarts():
    gaps = GapCounter()
    assert [gaps.add(s) for s in (0, 1, 4, 5, 0, 2)] == [0, 0, 2, 0, 0, 1]
    assert gaps.missing == 3 and gaps.restarts == 1


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
    assert "2 lost" in row_line(row)


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
    assert process_line(proc) == "worker pid 4321: loading its model (9 s)"
    # A worker that stops sending while loading is silent like any other.
    (warning,) = board.warnings(now=T0 + 13)
    assert "silent for 4 s" in warning
    board.update(heartbeat(T0 + 13, frames_in=0, frames_out=0), now=T0 + 13)
    (proc,) = board.processes(now=T0 + 13)
    assert not proc["loading"] and process_line(proc).startswith("worker pid 4321: in 0 out 0")


def test_board_expects_a_finished_capture_to_fall_silent():
    board = StreamBoard(clock=lambda: T0)
    board.update(Heartbeat("_capture.probe1", "capture", 11, T0, {"frames_out": 5}), now=T0)
    board.update(heartbeat(), now=T0 + 10)
    board.update(score(0), now=T0 + 10)
    assert any("capture" in w for w in board.warnings(now=T0 + 10))
    board.update(EndOfStream("probe1", 0, "eof", T0), now=T0 + 10)
    assert board.warnings(now=T0 + 10) == []


def test_render_without_a_terminal():
    board = StreamBoard(clock=lambda: T0)
    board.update(score(7, 0.93, flags=("warmup",)), now=T0)
    board.update(score(0, 0.12, stream="probe2"), now=T0)
    board.update(heartbeat(frames_in=8, frames_out=8, fps_in=25.0, fps_out=25.0), now=T0)
    board.update(Status("probe2", "warning", "device 0 lost, retrying in 2.0 s", T0), now=T0)
    out = io.StringIO()
    Console(file=out, width=160).print(render(board, now=T0 + 0.5))
    text = out.getvalue()
    assert "probe1" in text and "0.93" in text and "Head" in text and "warmup" in text
    assert "Not-Head" in text and "device 0 lost" in text and "worker pid 4321" in text


def _subscribed(sock: zmq.Socket, timeout_s: float = WAIT_S) -> None:
    """Wait until a subscriber's subscription reaches an XPUB socket, so nothing sent is lost."""
    if net.recv(sock, timeout_s) is None:
        pytest.fail(f"no subscriber within {timeout_s} s")


def test_watch_over_a_socket_until_end_of_stream(sockets, address, background):
    addr = address()
    pub = sockets(zmq.XPUB, bind=addr, hwm=1000)
    out = io.StringIO()
    config = WatchConfig(sub=addr, until_eos=True, interval_s=0.05)
    task = background(lambda stop: watch(config, stop, console=Console(file=out, width=160)))
    _subscribed(pub)
    pub.send(protocol.encode(heartbeat(time.time(), frames_in=3, frames_out=3)))
    for seq in (0, 1, 2):
        pub.send(protocol.encode(score(seq, t=time.time())))
    pub.send(protocol.encode(EndOfStream("probe1", 2, "eof", time.time())))
    board = task.join()
    (row,) = board.rows()
    assert row["seq"] == 2 and row["scores"] == 3 and row["ended"]
    assert board.processes()[0]["frames_in"] == 3
    assert "probe1" in out.getvalue() and "ended" in out.getvalue()


# --- annotate -------------------------------------------------------------------------


def _border(image: np.ndarray) -> np.ndarray:
    edge = border_width(*image.shape[:2])
    return np.concatenate([image[:edge].reshape(-1, 3), image[-edge:].reshape(-1, 3),
                           image[:, :edge].reshape(-1, 3), image[:, -edge:].reshape(-1, 3)])


@pytest.mark.parametrize("shape", [(90, 120), (90, 120, 3)])
def test_annotate_border_is_green_for_head_only(shape):
    image = np.full(shape, 90, np.uint8)
    head = annotate(image, 0.93, 0.5, True)
    not_head = annotate(image, 0.12, 0.5, False)
    assert head.shape == not_head.shape == (90, 120, 3) and head.dtype == np.uint8
    assert (image == 90).all(), "the input must not be modified"
    green = np.all(_border(head) == HEAD_COLOUR, axis=1)
    assert green.mean() > 0.95
    assert not np.any(np.all(_border(not_head) == HEAD_COLOUR, axis=1))
    assert np.all(_border(not_head) == NOT_HEAD_COLOUR, axis=1).mean() > 0.95
    # The score bar is filled to the score: far more green along the bottom for 0.93 than red for 0.12.
    bar_row = head.shape[0] - border_width(90, 120) - 6
    assert (np.all(head[bar_row] == HEAD_COLOUR, axis=1).sum()
            > 4 * np.all(not_head[bar_row] == NOT_HEAD_COLOUR, axis=1).sum())


def test_annotate_decision_defaults_to_threshold_and_checks_inputs():
    image = np.zeros((60, 80), np.uint8)
    assert np.array_equal(annotate(image, 0.7, 0.6), annotate(image, 0.7, 0.6, True))
    unscored = annotate(image, None, 0.5)
    assert not np.any(np.all(_border(unscored) == HEAD_COLOUR, axis=1))
    with pytest.raises(ValueError, match="score must be in"):
        annotate(image, 1.5, 0.5)
    with pytest.raises(ValueError, match="uint8"):
        annotate(image.astype(np.float32), 0.5, 0.5)


# --- Recorder without sockets -----------------------------------------------------------


def frame(seq: int, image: np.ndarray, *, stream: str = "probe1", fps: float = 20.0) -> protocol.Frame:
    return protocol.frame_message(stream, seq, image, t_source=seq / fps, t_capture=T0 + seq / fps)


def test_estimate_fps_uses_seq_advance():
    assert estimate_fps([0, 1, 2, 3], [0.0, 0.05, 0.1, 0.15]) == pytest.approx(20.0)
    assert estimate_fps([0, 2, 4], [0.0, 0.1, 0.2]) == pytest.approx(20.0)
    assert estimate_fps([0], [0.0]) is None
    assert estimate_fps([0, 1], [None, 0.1]) is None


def test_recorder_counts_and_writes_what_it_cannot_match(tmp_path):
    images = make_frames(6, 48, 64)
    config = RecordConfig(csv=tmp_path / "s.csv", video=tmp_path / "v.avi")
    with Recorder(config) as recorder:
        for seq in range(4):
            recorder.handle(frame(seq, images[seq]))
            if seq != 1:  # the score of frame 1 never comes
                recorder.handle(score(seq))
        recorder.handle(score(4))  # its frame never comes
        recorder.handle(frame(5, images[5]))  # still waiting for its score at the end
    stats = recorder.close()
    assert stats.scores == 4 and stats.unscored_frames == 2 and stats.frameless_scores == 1
    assert stats.frames == {"probe1": 5}
    assert stats.videos == {"probe1": stream_path(tmp_path / "v.avi", "probe1")}
    # Frames 0, 1, 2, 3 and 5, with frame 3 repeated in seq 4's place to keep the timing.
    assert len(read_video(stats.videos["probe1"])) == 6
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [int(r["seq"]) for r in rows] == [0, 2, 3, 4]


def test_show_without_gui_says_why_and_goes_on(tmp_path, caplog):
    assert "headless" in gui_problem("  GUI:     NONE\n", {})
    if sys.platform.startswith("linux"):
        assert "DISPLAY" in gui_problem("  GUI:     GTK3\n", {})
    assert gui_problem("  GUI:     GTK3\n", {"DISPLAY": ":0"}) is None
    with caplog.at_level(logging.WARNING, logger="stream.record"):
        recorder = Recorder(RecordConfig(csv=tmp_path / "s.csv", show=True))
    if recorder.window is None:
        (line,) = [r.getMessage() for r in caplog.records]
        assert "cannot open a window" in line and "pip install opencv-python" in line and "\n" not in line
    recorder.handle(frame(0, make_frames(1)[0]))
    recorder.handle(score(0))
    assert recorder.close().scores == 1


# --- record over a socket ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_record_frames_and_scores_from_one_socket(tmp_path, sockets, address, background, suffix):
    addr = address()
    pub = sockets(zmq.XPUB, bind=addr, hwm=1000)
    n, height, width = 30, 72, 96
    images = make_frames(n, height, width)
    config = RecordConfig(sub=addr, csv=tmp_path / "scores.csv", video=tmp_path / f"annotated{suffix}",
                          stream="probe1", until_eos=True)
    task = background(lambda stop: record(config, stop))
    _subscribed(pub)
    for seq, image in enumerate(images):
        # What worker --forward-frames sends: each frame, then its score; another stream is ignored.
        pub.send(protocol.encode(frame(seq, image)))
        pub.send(protocol.encode(score(seq, 0.9 if seq % 2 else 0.1, flags=("warmup",) if seq < 7 else ())))
        pub.send(protocol.encode(score(seq, stream="other")))
    pub.send(protocol.encode(EndOfStream("probe1", n - 1, "eof", time.time())))
    stats = task.join()

    assert stats.scores == n and stats.unscored_frames == 0 and stats.frameless_scores == 0
    assert stats.streams_ended == ("probe1",)
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert len(rows) == n and {r["stream"] for r in rows} == {"probe1"}
    assert [int(r["seq"]) for r in rows] == list(range(n))
    assert rows[1]["decision"] == "Head" and rows[0]["decision"] == "Not-Head"
    assert rows[0]["flags"] == "warmup" and rows[10]["flags"] == ""
    assert float(rows[0]["latency_ms"]) == pytest.approx(20.0)
    assert rows[0]["model"] == "tiny-test"

    path = tmp_path / f"annotated{suffix}"
    capture = cv2.VideoCapture(str(path))
    try:
        assert capture.isOpened()
        assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(20.0, abs=0.5)
    finally:
        capture.release()
    written = read_video(path)
    assert len(written) == n and written[0].shape == (height, width, 3)
    # Odd seqs are Head: their border is green (allowing for lossy compression).
    for seq in (1, 2):
        top = written[seq][1, width // 2].astype(int)
        assert (abs(top - HEAD_COLOUR).max() < 60) == (seq % 2 == 1)
