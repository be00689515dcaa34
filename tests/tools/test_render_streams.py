"""The streams section of tools.render: the verdict view, its plain lines, the sparkline, and the two views of watch."""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console

from stream.protocol import EndOfStream, Heartbeat, Status
from stream.watch import StreamBoard
from tests.stream.conftest import T0, heartbeat, score
from tools.render import (SPARK_LEVELS, BoardLog, LiveBoard, board_view, process_line, render, row_line,
                          spark_buckets, spark_level, sparkline)


def text_of(renderable, **console) -> str:
    out = io.StringIO()
    Console(file=out, width=160, **console).print(renderable)
    return out.getvalue()


def test_render_shows_the_verdict_time_in_view_threshold_and_sparkline_beside_the_figures():
    board = StreamBoard(hold=3, clock=lambda: T0)
    for seq in range(50):  # two seconds: Not-Head, then the head comes at seq 20
        board.update(score(seq, 0.9 if seq >= 20 else 0.1, flags=("warmup",) if seq < 7 else ()),
                     now=T0 + seq * 0.04)
    board.update(score(3, 0.12, stream="probe2", flags=("warmup",)), now=T0 + 2)
    board.update(heartbeat(frames_in=8, frames_out=8, fps_in=25.0, fps_out=25.0), now=T0 + 2)
    board.update(Status("probe2", "warning", "device 0 lost, retrying in 2.0 s", T0), now=T0 + 1.5)
    lines = text_of(render(board, now=T0 + 2)).splitlines()
    text = "\n".join(lines)
    assert "verdict held 3 frames" in lines[0]
    (head_line,) = [line for line in lines if "probe1   Head" in line]
    # The engineering figures stand to the right of the verdict.
    assert "in view 1.2 s" in head_line and head_line.index("fps in/out") > head_line.index("in view") + 20
    assert any("probe2   Not-Head" in line for line in lines)
    # The threshold 0.5 is the sparkline's level ▅.
    assert any("score 0.90  threshold 0.50 = ▅" in line for line in lines)
    # Two seconds in slices of 1/3 s: 0.8 s of 0.1, a slice of both, then 0.9.
    assert any(line.startswith("last 10 s " + " " * 24 + "▁▁▅███ ") for line in lines)
    assert "fps in/out" in text and "ms p50/p99" in text and "20/20" in text and "warmup" in text
    assert "device 0 lost" in text and "(0.5 s ago)" in text and "worker pid 4321" in text


def test_render_colours_the_band_by_verdict_and_greys_an_ended_stream():
    board = StreamBoard(hold=1, clock=lambda: T0)
    board.update(score(0, 0.9, stream="a"), now=T0)
    board.update(score(0, 0.1, stream="b"), now=T0)
    board.update(score(0, 0.9, stream="c"), now=T0)
    board.update(EndOfStream("c", 0, "eof", T0), now=T0)
    lines = text_of(render(board, now=T0), force_terminal=True, color_system="standard").splitlines()
    # ANSI SGR: 42 green background, 41 red, grey (the ended one) neither.
    (a,) = [line for line in lines if "a   Head" in line]
    (b,) = [line for line in lines if "b   Not-Head" in line]
    (c,) = [line for line in lines if "c   ended (eof), last verdict Head" in line]
    assert "42m" in a and "41m" not in a
    assert "41m" in b and "42m" not in b
    assert "41m" not in c and "42m" not in c


def test_spark_buckets_are_the_mean_of_each_slice_of_the_last_seconds():
    history = [(3.9, 0.2), (3.1, 0.4), (1.5, 0.9), (0.0, 0.3), (4.0, 1.0)]  # the last one is outside 4 s
    assert spark_buckets(history, 4.0, 4) == [pytest.approx(0.3), None, pytest.approx(0.9), pytest.approx(0.3)]
    assert sparkline(history, 4.0, 4) == "▃ █▃"
    assert [spark_level(v) for v in (0.0, 0.124, 0.125, 0.5, 0.99, 1.0)] == ["▁", "▁", "▂", "▅", "█", "█"]
    assert len(SPARK_LEVELS) == 8


def test_row_line_leads_with_the_verdict_and_says_how_many_were_lost():
    board = StreamBoard(hold=1, clock=lambda: T0)
    # seq 3 dropped by the worker (counted in Score.dropped); seqs 6 and 7 lost on the way.
    for seq, dropped in ((0, 0), (1, 0), (2, 0), (4, 1), (5, 1), (8, 1)):
        board.update(score(seq, dropped=dropped, flags=("gap",) if seq == 4 else ()), now=T0 + seq * 0.1)
    (row,) = board.rows(now=T0 + 0.8)
    line = row_line(row, board.history_s)
    assert line.startswith("probe1   Head   in view 0.3 s score 0.80  threshold 0.50 = ▅ last 10 s ")
    assert line.endswith("drops 3 (2 lost)")


def test_row_line_names_the_frames_lost_before_the_first_score():
    board = StreamBoard(clock=lambda: T0)
    # The worker's first frame of the stream was seq 5: seqs 0..4 never reached it.
    board.update(dataclasses.replace(score(5, 0.2, flags=("warmup",)), window=1), now=T0)
    (row,) = board.rows(now=T0)
    assert row_line(row).endswith("drops 5 (5 lost, 5 before the first score)")
    assert "before 1st score 5 lost" in text_of(render(board, now=T0))


def test_process_line_of_a_loading_then_ready_worker():
    board = StreamBoard(clock=lambda: T0)
    board.update(heartbeat(T0 + 1, loading=1, uptime_s=1.0), now=T0 + 1)
    board.update(heartbeat(T0 + 9, loading=1, uptime_s=9.2), now=T0 + 9)
    (proc,) = board.processes(now=T0 + 10)
    assert process_line(proc) == "worker pid 4321: loading its model (9 s)"
    board.update(heartbeat(T0 + 13, frames_in=0, frames_out=0), now=T0 + 13)
    (proc,) = board.processes(now=T0 + 13)
    assert process_line(proc).startswith("worker pid 4321: in 0 out 0")


def test_a_capture_whose_stream_ended_is_shown_finished_not_silent():
    board = StreamBoard(clock=lambda: T0)
    board.update(Heartbeat("_capture.probe1", "capture", 11, T0, {"frames_out": 96, "fps_out": 25.0}), now=T0)
    board.update(score(95), now=T0)
    def shown() -> str:
        lines = text_of(render(board, now=T0 + 10), force_terminal=True, color_system="standard").splitlines()
        (line,) = [line for line in lines if "capture pid 11" in line]
        return line

    (proc,) = board.processes(now=T0 + 10)
    assert process_line(proc) == "capture pid 11: out 96, 25.0 fps out, silent 10 s"
    assert "\x1b[31m" in shown()  # red
    board.update(EndOfStream("probe1", 95, "eof", T0), now=T0)
    (proc,) = board.processes(now=T0 + 10)
    assert process_line(proc) == "capture pid 11: out 96, finished with its stream"
    assert "\x1b[31m" not in shown()


def test_the_log_view_prints_changed_streams_each_event_and_alert_once_then_the_view():
    now = [T0]
    board = StreamBoard(clock=lambda: now[0])
    out = io.StringIO()
    view = BoardLog(Console(file=out, width=160), interval_s=0.0)
    board.update(score(0, flags=("warmup",)), now=T0)
    board.update(Status("probe1", "warning", "device 0 lost", T0), now=T0)
    view.update(board)
    view.update(board)  # nothing new: no second line
    now[0] = T0 + 5  # no worker heartbeat for 5 s
    view.update(board)
    view.update(board)
    board.update(EndOfStream("probe1", 0, "eof", T0 + 5), now=T0 + 5)
    view.update(board)
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("probe1   Not-Head score 0.80") and "[warmup]" in line for line in lines) == 1
    assert sum(line.startswith("probe1   ended (eof), last verdict Not-Head") for line in lines) == 1
    assert sum(line == "probe1 warning: device 0 lost" for line in lines) == 1
    assert sum(line.startswith("warning: no worker heartbeat") for line in lines) == 1
    assert "fetalhead streams" not in out.getvalue()
    view.close(board)
    assert "fetalhead streams" in out.getvalue()


def test_a_terminal_gets_the_live_view_and_a_pipe_the_log():
    terminal = Console(file=io.StringIO(), force_terminal=True, width=160)
    assert isinstance(board_view(1.0, terminal), LiveBoard)
    assert isinstance(board_view(1.0, Console(file=io.StringIO(), width=160)), BoardLog)
    board = StreamBoard(clock=lambda: T0)
    board.update(score(0), now=T0)
    view = board_view(1.0, terminal)
    view.update(board)
    view.close(board)
    assert "probe1" in terminal.file.getvalue()
