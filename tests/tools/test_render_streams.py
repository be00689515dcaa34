"""The streams section of tools.render: the table, its plain lines, and the two views of fetalhead watch."""

from __future__ import annotations

import io

from rich.console import Console

from stream.protocol import Status
from stream.watch import StreamBoard
from tests.stream.conftest import T0, heartbeat, score
from tools.render import BoardLog, LiveBoard, board_view, process_line, render, row_line, score_bar


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


def test_row_line_says_how_many_were_lost():
    board = StreamBoard(clock=lambda: T0)
    # seq 3 dropped by the worker (counted in Score.dropped); seqs 6 and 7 lost on the way.
    for seq, dropped in ((0, 0), (1, 0), (2, 0), (4, 1), (5, 1), (8, 1)):
        board.update(score(seq, dropped=dropped, flags=("gap",) if seq == 4 else ()), now=T0 + seq * 0.1)
    (row,) = board.rows(now=T0 + 0.8)
    assert "2 lost" in row_line(row)


def test_process_line_of_a_loading_then_ready_worker():
    board = StreamBoard(clock=lambda: T0)
    board.update(heartbeat(T0 + 1, loading=1, uptime_s=1.0), now=T0 + 1)
    board.update(heartbeat(T0 + 9, loading=1, uptime_s=9.2), now=T0 + 9)
    (proc,) = board.processes(now=T0 + 10)
    assert process_line(proc) == "worker pid 4321: loading its model (9 s)"
    board.update(heartbeat(T0 + 13, frames_in=0, frames_out=0), now=T0 + 13)
    (proc,) = board.processes(now=T0 + 13)
    assert process_line(proc).startswith("worker pid 4321: in 0 out 0")


def test_score_bar():
    assert score_bar(None) == " " * 6
    assert score_bar(0.5) == "███░░░" and score_bar(1.7, width=2) == "██"


def test_the_log_view_prints_changed_streams_each_alert_once_then_the_table():
    now = [T0]
    board = StreamBoard(clock=lambda: now[0])
    out = io.StringIO()
    view = BoardLog(Console(file=out, width=160), interval_s=0.0)
    board.update(score(0), now=T0)
    view.update(board)
    view.update(board)  # nothing new: no second line
    now[0] = T0 + 5  # no worker heartbeat for 5 s
    view.update(board)
    view.update(board)
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("probe1 seq 0 score 0.80 Head") for line in lines) == 1
    assert sum(line.startswith("warning: no worker heartbeat") for line in lines) == 1
    assert "fetalhead streams" not in out.getvalue()
    view.close(board)
    assert "fetalhead streams" in out.getvalue()


def test_a_terminal_gets_the_live_table_and_a_pipe_the_log():
    terminal = Console(file=io.StringIO(), force_terminal=True, width=160)
    assert isinstance(board_view(1.0, terminal), LiveBoard)
    assert isinstance(board_view(1.0, Console(file=io.StringIO(), width=160)), BoardLog)
    board = StreamBoard(clock=lambda: T0)
    board.update(score(0), now=T0)
    view = board_view(1.0, terminal)
    view.update(board)
    view.close(board)
    assert "probe1" in terminal.file.getvalue()
