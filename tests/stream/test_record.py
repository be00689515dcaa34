"""The recorder: annotate(), the Recorder driven with messages, and record() over a socket."""

from __future__ import annotations

import csv
import logging
import sys
import time

import cv2
import numpy as np
import pytest
import zmq

from stream import protocol
from stream.protocol import EndOfStream
from stream.record import (HEAD_COLOUR, NOT_HEAD_COLOUR, RecordConfig, Recorder, annotate, border_width,
                           estimate_fps, gui_problem, record, stream_path)
from tests.stream.conftest import T0, make_frames, read_video, score, wait_subscribed

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
    wait_subscribed(pub)
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
