"""The recorder: annotate(), the Recorder driven with messages, and record() over a socket."""

from __future__ import annotations

import csv
import dataclasses
import logging
import sys
import time

import cv2
import numpy as np
import pytest
import zmq

from models.errors import ConfigError
from stream import protocol
from stream.consumer import ConsumerConfig
from stream.protocol import EndOfStream
from stream.record import (CSV_FIELDS, HEAD_COLOUR, NOT_HEAD_COLOUR, UNSCORED_COLOUR, RecordConfig, Recorder,
                           annotate, band_height, estimate_fps, gui_problem, record, report, stream_path, tags_of)
from tests.stream.conftest import T0, make_frames, read_video, score, wait_subscribed

# --- annotate -------------------------------------------------------------------------


def scan_image(i: int = 0, height: int = 72, width: int = 96) -> np.ndarray:
    """A clean uint8 (height, width, 3) scan: a bright disc on grey, burned-in text bottom left as scanners do."""
    image = np.full((height, width, 3), 60, np.uint8)
    cv2.circle(image, (width // 5 + 2 * i, height // 2), height // 5, (210, 200, 190), -1)
    cv2.putText(image, "12cm", (2, height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
    return image


def share(pixels: np.ndarray, colour, tolerance: int = 50) -> float:
    """The fraction of (N, 3) ``pixels`` within ``tolerance`` of ``colour`` in every channel."""
    return float((np.abs(pixels.reshape(-1, 3).astype(int) - np.array(colour)).max(axis=1) < tolerance).mean())


def label_rows(annotated: np.ndarray, height: int) -> np.ndarray:
    """The band's upper part, where the verdict is written (above the score bar)."""
    return annotated[height:height + band_height(height, annotated.shape[1]) * 6 // 10]


def shade(colour) -> tuple[int, ...]:
    return tuple(round(c * 0.6) for c in colour)


@pytest.mark.parametrize("shape", [(90, 120), (90, 120, 1), (90, 120, 3), (90, 120, 4), (481, 640, 3)])
def test_annotate_adds_a_band_below_and_leaves_the_scan_as_it_was(shape):
    image = np.full(shape, 90, np.uint8)
    head = annotate(image, 0.93, 0.5, True)
    not_head = annotate(image, 0.12, 0.5, False)
    height, width = shape[:2]
    band = band_height(height, width)
    assert head.shape == not_head.shape == (height + band, width, 3) and head.dtype == np.uint8
    assert head.shape[0] % 2 == 0, "video codecs want an even height"
    assert (image == 90).all(), "the input must not be modified"
    assert (head[:height] == 90).all() and (not_head[:height] == 90).all(), "nothing is drawn over the scan"
    assert share(label_rows(head, height), HEAD_COLOUR, 1) > 0.7
    assert share(label_rows(not_head, height), NOT_HEAD_COLOUR, 1) > 0.7
    assert share(not_head[height:], HEAD_COLOUR, 1) == 0
    # Black on green, white on red: the label's ink.
    assert share(label_rows(head, height), (0, 0, 0), 60) > 0.01
    assert share(label_rows(not_head, height), (255, 255, 255), 60) > 0.01
    # The score bar is filled to the score.
    bar = slice(height + band - band // 12 - band // 10, height + band - band // 12 - band // 10 + 1)
    assert share(head[bar], (240, 240, 240), 1) > 0.75 > 0.2 > share(not_head[bar], (240, 240, 240), 1)


def test_annotate_text_grows_with_the_frame():
    assert band_height(72, 96) == 36 and band_height(480, 640) == 78 and band_height(1080, 1920) == 174
    ink = [share(label_rows(annotate(np.zeros((h, w), np.uint8), 0.1, 0.5), h), (255, 255, 255), 1)
           * band_height(h, w) * w for h, w in ((240, 320), (480, 640), (1080, 1920))]
    assert ink[0] * 3 < ink[1] and ink[1] * 3 < ink[2]


def test_annotate_shows_the_verdict_given_over_the_raw_decision():
    image = scan_image()
    held = annotate(image, 0.9, 0.5, True, verdict=False)
    assert share(label_rows(held, 72), NOT_HEAD_COLOUR, 1) > 0.7
    assert np.array_equal(annotate(image, 0.7, 0.6), annotate(image, 0.7, 0.6, True))
    assert np.array_equal(annotate(image, 0.7, 0.6, False), annotate(image, 0.7, 0.6, verdict=False))


def test_annotate_hatches_a_tagged_band_and_greys_a_frame_without_score():
    image = scan_image(height=240, width=320)
    plain = label_rows(annotate(image, 0.9, 0.5, verdict=True), 240)
    warmup = label_rows(annotate(image, 0.9, 0.5, verdict=True, tags=tags_of(("warmup",))), 240)
    assert tags_of(("gap", "new-flag", "warmup")) == ("gap", "warm-up")
    assert share(plain, HEAD_COLOUR, 1) > 0.8 and share(plain, shade(HEAD_COLOUR), 1) == 0
    assert 0.25 < share(warmup, HEAD_COLOUR, 1) < 0.6 and 0.25 < share(warmup, shade(HEAD_COLOUR), 1) < 0.6
    unscored = annotate(image, None, 0.5)
    assert share(unscored[240:], UNSCORED_COLOUR, 1) > 0.8 and share(unscored[240:], HEAD_COLOUR, 60) == 0


def test_annotate_checks_its_inputs():
    image = np.zeros((60, 80), np.uint8)
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
    images = [scan_image(i, 48, 64) for i in range(6)]
    config = RecordConfig(csv=tmp_path / "s.csv", video=tmp_path / "v.avi", hold=1)
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
    written = read_video(stats.videos["probe1"])
    assert len(written) == 6
    bands = [label_rows(image, 48) for image in written]
    assert [share(band, UNSCORED_COLOUR) > 0.6 for band in bands] == [False, True, False, False, False, True]
    # The stand-in shows frame 3's scan and verdict, its band hatched: it is not a frame of its own.
    assert np.abs(written[4][:48].astype(int) - images[3]).max() < 60
    assert share(bands[3], HEAD_COLOUR) > 0.7 and share(bands[4], HEAD_COLOUR) < 0.6
    assert share(bands[4], HEAD_COLOUR) + share(bands[4], shade(HEAD_COLOUR)) > 0.6
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [int(r["seq"]) for r in rows] == [0, 2, 3, 4]


def test_the_csv_adds_the_smoothed_verdict_after_the_raw_columns(tmp_path):
    path = tmp_path / "s.csv"
    values = [0.9, 0.1, 0.9, 0.9, 0.9, 0.1, 0.9]
    with Recorder(RecordConfig(csv=path, hold=3)) as recorder:
        for seq, value in enumerate(values):
            recorder.handle(score(seq, value))
    with path.open() as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == CSV_FIELDS == ("stream", "seq", "score", "decision", "threshold", "flags", "latency_ms",
                                           "t_capture", "t_scored", "model", "verdict")
    rows = list(csv.DictReader(path.open()))
    assert [r["decision"] for r in rows] == ["Head", "Not-Head", "Head", "Head", "Head", "Not-Head", "Head"]
    assert [r["verdict"] for r in rows] == ["Not-Head"] * 4 + ["Head"] * 3
    assert [float(r["score"]) for r in rows] == values


def test_the_recorder_counts_frames_lost_before_the_first_score(tmp_path, caplog):
    def first(seq: int, window: int, **kwargs) -> protocol.Score:
        return dataclasses.replace(score(seq, **kwargs), window=window)

    with Recorder(RecordConfig(csv=tmp_path / "s.csv")) as recorder:
        # The worker's first frame was seq 3: seqs 0..2 never reached it.
        recorder.handle(first(3, 1, flags=("warmup",)))
        recorder.handle(first(4, 2, flags=("warmup",)))
        recorder.handle(EndOfStream("probe1", 4, "eof", T0))
        recorder.handle(first(2, 1, flags=("warmup",)))  # the next run lost 2 more
        recorder.handle(first(900, 8, stream="joined"))  # a stream running long before: nothing known
    stats = recorder.close()
    assert stats.lost_at_start == 5 and stats.missing_seqs == 0
    with caplog.at_level(logging.WARNING, logger="stream.record"):
        report(stats)
    (line,) = [r.getMessage() for r in caplog.records if "before the first score" in r.getMessage()]
    assert line.startswith("5 frames lost before the first score: they never reached the worker")


def test_record_settings_are_the_consumers_with_a_longer_queue(tmp_path):
    assert issubclass(RecordConfig, ConsumerConfig)
    assert RecordConfig(csv=tmp_path / "s.csv").hwm == 256 > ConsumerConfig().hwm
    with pytest.raises(ConfigError, match="nothing to record"):
        RecordConfig()
    with pytest.raises(ConfigError, match="hold: must be an integer"):
        RecordConfig(csv=tmp_path / "s.csv", hold=0)


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
    images = [scan_image(i, height, width) for i in range(n)]
    # Not-Head, the head from seq 15 with a one-frame blip at 20; seqs 0..6 are the worker's warm-up.
    values = [0.9 if seq >= 15 and seq != 20 else 0.1 for seq in range(n)]
    config = RecordConfig(sub=addr, csv=tmp_path / "scores.csv", video=tmp_path / f"annotated{suffix}",
                          stream="probe1", until_eos=True, hold=3)
    task = background(lambda stop: record(config, stop))
    wait_subscribed(pub)
    for seq, image in enumerate(images):
        # What worker --forward-frames sends: each frame, then its score; another stream is ignored.
        pub.send(protocol.encode(frame(seq, image)))
        pub.send(protocol.encode(score(seq, values[seq], flags=("warmup",) if seq < 7 else ())))
        pub.send(protocol.encode(score(seq, stream="other")))
    pub.send(protocol.encode(EndOfStream("probe1", n - 1, "eof", time.time())))
    stats = task.join()

    assert stats.scores == n and stats.unscored_frames == 0 and stats.frameless_scores == 0
    assert stats.streams_ended == ("probe1",)
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert len(rows) == n and {r["stream"] for r in rows} == {"probe1"}
    assert [int(r["seq"]) for r in rows] == list(range(n))
    assert [r["decision"] == "Head" for r in rows] == [v >= 0.5 for v in values]
    # Head three frames after the head came (back-dated in the verdict, not in the frames); the blip changes nothing.
    verdicts = [r["verdict"] == "Head" for r in rows]
    assert verdicts == [seq >= 17 for seq in range(n)]
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
    assert len(written) == n and written[0].shape == (height + band_height(height, width), width, 3)
    for seq, image in enumerate(written):
        # The scan as it was sent, within the codec's error: nothing drawn over it.
        diff = np.abs(image[:height].astype(int) - images[seq])
        assert diff.mean() < 4 and diff.max() < 60, f"frame {seq}: the scan area changed"
        band = label_rows(image, height)
        colour = HEAD_COLOUR if verdicts[seq] else NOT_HEAD_COLOUR
        if seq < 7:  # warm-up: hatched in the verdict's colour
            assert share(band, colour) < 0.6 and share(band, shade(colour)) > 0.25, f"frame {seq}"
        else:
            assert share(band, colour) > 0.7, f"frame {seq}"


# --- best frames ----------------------------------------------------------------------


def worker_episodes(tracker, s):
    """The Episode messages a worker sends after Score ``s`` (stream.worker._Loop.send_episodes)."""
    return [protocol.Episode(**dataclasses.asdict(e), threshold=s.threshold, model=s.model)
            for e in tracker.feed(s.seq, s.score, s.t_capture)]


def test_best_frames_keep_the_peak_of_each_episode_and_say_when_one_never_came(tmp_path, caplog):
    import pydicom

    from models.episodes import EpisodeTracker
    from stream.record import EPISODE_FIELDS, EPISODES_CSV

    # A spike at 1 (higher than any episode frame, too short to be one), an episode 3..6 peaking at 5,
    # one from 9 still open when the recording stops; probe2's frames never come.
    values = [0.1, 0.95, 0.1, 0.7, 0.8, 0.9, 0.6, 0.1, 0.1, 0.7, 0.8, 0.85]
    recorder = Recorder(RecordConfig(best_frames=tmp_path, patient_name="Doe^Jane", patient_id="X1"))
    trackers = {"probe1": EpisodeTracker("probe1", 0.5), "probe2": EpisodeTracker("probe2", 0.5)}
    images = [scan_image(i) for i in range(len(values))]
    with caplog.at_level(logging.WARNING, logger="stream.record"):
        for seq, value in enumerate(values):
            recorder.handle(frame(seq, images[seq]))
            for stream in ("probe1", "probe2"):
                s = score(seq, value, stream=stream)
                recorder.handle(s)
                for msg in worker_episodes(trackers[stream], s):
                    recorder.handle(msg)
            # Bounded: one kept frame per stream whatever the episode's length.
            assert len(recorder.best._candidate) <= 1
        # The worker closes an open episode before it forwards the end of stream.
        for msg in trackers["probe2"].close():
            recorder.handle(protocol.Episode(**dataclasses.asdict(msg), threshold=0.5, model="tiny-test"))
        recorder.handle(EndOfStream("probe2", len(values) - 1, "eof", T0 + 1))
        stats = recorder.close()

    assert (stats.episodes, stats.best_frames, stats.best_frames_missing) == (4, 2, 2)
    rows = list(csv.DictReader((tmp_path / EPISODES_CSV).open()))
    assert list(rows[0]) == list(EPISODE_FIELDS)
    got = [(r["stream"], r["first_seq"], r["last_seq"], r["best_seq"], bool(r["png"]), bool(r["dicom"]))
           for r in rows]
    assert sorted(got) == [("probe1", "3", "6", "5", True, True), ("probe1", "9", "", "11", True, True),
                           ("probe2", "3", "6", "5", False, False), ("probe2", "9", "11", "11", False, False)]
    first = next(r for r in rows if r["stream"] == "probe1" and r["first_seq"] == "3")
    assert float(first["duration_s"]) == pytest.approx(0.12) and float(first["peak_score"]) == 0.9
    assert np.array_equal(cv2.imread(str(tmp_path / first["png"])), images[5])
    ds = pydicom.dcmread(tmp_path / first["dicom"])
    assert (str(ds.PatientName), ds.PatientID, ds.Modality) == ("Doe^Jane", "X1", "US")
    assert "seq 5 score 0.9000 threshold 0.5000 model tiny-test" in ds.ImageComments
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings and all("best frame" in line and "\n" not in line for line in warnings)
    assert "episode probe2#3: best frame 5 never came" in warnings[0]


def test_a_grey_best_frame_stays_grey_in_dicom(tmp_path):
    import pydicom

    from stream.record import BestFrames

    best = BestFrames(tmp_path)
    image = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    best.scored(frame(0, image), score(0, 0.9))
    best.scored(frame(1, image), score(1, 0.8))
    best.episode(protocol.Episode("probe1", "end", 0, 1, 0.9, 0, 0, T0, T0 + 0.04, 0.5, "tiny-test"))
    best.close()
    (path,) = tmp_path.glob("*.dcm")
    ds = pydicom.dcmread(path)
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel) == ("MONOCHROME2", 1)
    assert np.array_equal(ds.pixel_array, image)


def test_best_frames_alone_is_something_to_record_and_patient_fields_are_checked(tmp_path):
    assert RecordConfig(best_frames=tmp_path).needs_frames
    with pytest.raises(ConfigError, match="patient_id: must be at most 64 printable characters"):
        RecordConfig(best_frames=tmp_path, patient_id="x" * 65)
