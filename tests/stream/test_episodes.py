"""Head episodes on the wire: the ``episode`` message, and capture -> worker -> record --best-frames over ZeroMQ."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import threading
import sys
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pydicom
import pytest
import zmq
from pydicom.uid import SecondaryCaptureImageStorage

from models.episodes import episodes
from models.errors import ConfigError
from stream import protocol
from stream.capture import CaptureConfig, capture
from stream.protocol import Episode
from stream.record import EPISODES_CSV, RecordConfig, record
from stream.sources import VideoFileSource
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import T0, WAIT_S, read_video, recv_message, recv_until, write_avi

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "subscribe_scores.py"


def episode(**overrides) -> Episode:
    fields = dict(stream="probe1", kind="end", first_seq=3, last_seq=9, peak_score=0.91, peak_seq=5, best_seq=5,
                  t_first=T0, t_last=T0 + 0.24, threshold=0.5, model="tiny-test")
    return Episode(**{**fields, **overrides})


# --- the message ------------------------------------------------------------------------


@pytest.mark.parametrize("msg", [episode(), episode(kind="start", last_seq=None, t_last=None, peak_seq=3, best_seq=4)])
def test_an_episode_round_trips(msg):
    assert protocol.decode(protocol.encode(msg)) == msg


@pytest.mark.parametrize("overrides, match", [
    (dict(kind="begin"), "episode.kind must be one of start, end"),
    (dict(kind="start"), "episode.last_seq must be null on start"),
    (dict(t_last=None), "episode.t_last must be null on start and a time on end"),
    (dict(last_seq=2), r"episode.last_seq must be an integer in \[3,"),
    (dict(best_seq=10), r"episode.best_seq must be within first_seq..last_seq \(3..9\), got 10"),
    (dict(peak_seq=1), r"episode.peak_seq must be an integer in \[3,"),
    (dict(peak_score=1.5), r"episode.peak_score must be a finite number in \[0.0, 1.0\]"),
    (dict(stream="_worker"), "episode.stream must be a data stream id"),
    (dict(model=""), "episode.model must be a non-empty string"),
])
def test_a_bad_episode_is_one_line_naming_the_field(overrides, match):
    fields = {**dataclasses.asdict(episode()), **overrides}
    data = protocol.topic(fields["stream"]) + msgpack.packb({"v": 1, "type": "episode", **fields})
    with pytest.raises(protocol.ProtocolError, match=match) as info:
        protocol.decode(data)
    assert info.value.kind == protocol.KIND_BAD_FIELD and "\n" not in str(info.value)


# --- capture -> worker -> record over ZeroMQ -----------------------------------------------

FRAMES = 60


def scan(n: int) -> list[np.ndarray]:
    """Blocks of 15 dark and 15 bright frames, a small disc moving across: the tiny model scores the blocks apart."""
    frames = []
    for i in range(n):
        frame = np.full((64, 80, 3), 230 if (i // 15) % 2 else 10, np.uint8)
        cv2.circle(frame, (10 + i, 32), 6, (128, 128, 128), -1)
        frames.append(frame)
    return frames


def steering_threshold(scores: np.ndarray) -> float:
    """The threshold between two of ``scores`` that makes at least two episodes, farthest from every score.

    The tiny model is untrained and freshly initialised, so which block scores higher is not known in advance.
    """
    values = np.unique(scores)
    candidates = (values[1:] + values[:-1]) / 2
    return float(max(candidates, key=lambda t: (len(episodes(range(len(scores)), scores, t)) >= 2,
                                                np.abs(scores - t).min())))


@pytest.mark.slow
def test_best_frames_come_out_of_a_real_pipeline(tmp_path, sockets, address, background, tiny_bundle, tiny_runtime):
    path = write_avi(tmp_path / "scan.avi", scan(FRAMES))
    images = read_video(path)
    offline = tiny_runtime.scan_scores(tiny_runtime.frame_features(images))
    threshold = steering_threshold(offline)
    expected = episodes(range(FRAMES), offline, threshold)
    # Far enough from every score that the worker's scores (within 1e-5 of these) decide alike.
    assert len(expected) >= 2 and np.abs(offline - threshold).min() > 1e-4, f"scores {np.round(offline, 4)}"
    bundle = dataclasses.replace(tiny_bundle, threshold=threshold)
    frames_addr, scores_addr = address(), address()
    best = tmp_path / "best"
    # The recorder first: it is subscribed long before the worker has loaded its model.
    recorder = background(lambda stop: record(RecordConfig(sub=scores_addr, best_frames=best, until_eos=True,
                                                           hwm=10_000), stop))
    worker = background(lambda stop: serve(bundle, WorkerConfig(
        sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.2, forward_frames=True,
        exit_after_eos=1), stop))
    sub = sockets(zmq.SUB, connect=scores_addr)
    # A v1 client written from the document alone, that knows nothing of episodes.
    client = subprocess.Popen([sys.executable, str(EXAMPLE), scores_addr, "scan"], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline() == "worker ready\n"
        recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat) and m.stream == "_worker" and not m.loading)
        background(lambda stop: capture(VideoFileSource(path), CaptureConfig(
            pub=frames_addr, mode="lossless", fast=True, stream="scan"), stop))
        messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream), timeout_s=60)
        out, _ = client.communicate(timeout=WAIT_S)
    finally:
        client.kill()
        client.wait()
        client.stdout.close()
    stats = recorder.join(60)
    worker.join(60)

    # The worker's episodes are the offline ones of the same scores; each start comes before its end.
    sent = [m for m in messages if isinstance(m, Episode)]
    ends = [m for m in sent if m.kind == "end"]
    assert [(m.kind, m.first_seq) for m in sent] == [(k, e.first_seq) for e in expected for k in ("start", "end")]
    assert [(m.first_seq, m.last_seq, m.peak_seq, m.best_seq) for m in ends] == [
        (e.first_seq, e.last_seq, e.peak_seq, e.best_seq) for e in expected]
    assert {m.model for m in ends} == {bundle.model_id} and {m.threshold for m in ends} == {threshold}
    # The example ignored them and still printed every score and stopped at the end of stream.
    assert client.returncode == 0 and len(out.splitlines()) == FRAMES

    n = len(expected)
    assert (stats.scores, stats.episodes, stats.best_frames, stats.best_frames_missing) == (FRAMES, n, n, 0)
    rows = list(csv.DictReader((best / EPISODES_CSV).open()))
    assert [(int(r["first_seq"]), int(r["last_seq"]), int(r["peak_seq"]), int(r["best_seq"])) for r in rows] == [
        (m.first_seq, m.last_seq, m.peak_seq, m.best_seq) for m in ends]
    assert [float(r["peak_score"]) for r in rows] == pytest.approx([m.peak_score for m in ends], abs=1e-6)
    for row, end in zip(rows, ends):
        png = cv2.imread(str(best / row["png"]), cv2.IMREAD_UNCHANGED)
        assert png is not None and np.array_equal(png, images[end.best_seq]), "the PNG is the raw frame"
        dcm = best / row["dicom"]
        ds = pydicom.dcmread(dcm)
        assert ds.SOPClassUID == SecondaryCaptureImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert str(ds.PatientName) == "" and ds.PatientID == ""
        assert f"seq {end.best_seq} " in ds.ImageComments and f"score {end.peak_score:.4f}" in ds.ImageComments
        assert f"model {bundle.model_id}" in ds.ImageComments and ds.DerivationDescription == ds.ImageComments
        assert np.array_equal(ds.pixel_array, cv2.cvtColor(images[end.best_seq], cv2.COLOR_BGR2RGB))
        dump = subprocess.run(["dcmdump", str(dcm)], capture_output=True, text=True, check=True).stdout
        assert "=SecondaryCaptureImageStorage" in dump
        assert "(0010,0010) PN (no value available)" in dump
        assert f"seq {end.best_seq} " in dump


# --- the command surface ------------------------------------------------------------------


def test_run_passes_best_frames_to_the_recorder_and_has_the_worker_forward_frames():
    from stream.run import RunConfig, build_specs

    config = RunConfig(source="clip.avi", model="m.fhb", best_frames=Path("best"), watch=False)
    record_spec, worker_spec, _ = build_specs(config, "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002")
    assert record_spec.name == "record" and record_spec.final
    assert record_spec.argv[-2:] == ("--best-frames", "best")
    assert "--forward-frames" in worker_spec.argv


def test_record_takes_best_frames_and_patient_flags(tmp_path, capsys):
    from tools.commands.record import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--best-frames" in text and "--patient-name" in text and "--patient-id" in text
    assert main(["--best-frames", str(tmp_path), "--patient-name", "a\\b"]) != 0
    assert "patient_name: must be at most 64 printable characters without a backslash" in capsys.readouterr().err


def test_the_worker_ends_an_open_episode_when_it_forgets_an_idle_stream(tiny_runtime, tiny_bundle, sockets):
    from stream.worker import Scorer, _Loop

    now = [100.0]
    # Threshold 0: every score is Head, so the episode opens on the second frame and never ends by itself.
    scorer = Scorer(tiny_runtime, 0.0, tiny_bundle.model_id, idle_s=10.0, clock=lambda: now[0])
    out = sockets(zmq.PAIR, bind="inproc://episodes-out")
    inbox = sockets(zmq.PAIR, connect="inproc://episodes-out")
    loop = _Loop(scorer, WorkerConfig(mode="lossless", heartbeat_s=0.2), out, threading.Event(), None)
    images = scan(4)
    loop.handle([(zmq.Frame(protocol.encode(protocol.frame_message("a", seq, image, t_capture=T0 + seq))),
                  T0 + seq) for seq, image in enumerate(images)])
    now[0] = 111.0
    loop.heartbeat()
    got = []
    while not got or not isinstance(got[-1], protocol.Heartbeat):
        got.append(recv_message(inbox))
    kinds = [(m.TYPE, getattr(m, "kind", None)) for m in got]
    assert kinds == [("score", None), ("score", None), ("episode", "start"), ("score", None), ("score", None),
                     ("episode", "end"), ("status", None), ("heartbeat", None)]
    end = got[5]
    assert (end.first_seq, end.last_seq, end.t_first, end.t_last) == (0, 3, T0, T0 + 3)
    assert end.peak_score == max(m.score for m in got if isinstance(m, protocol.Score))
    assert not loop.episodes, "the forgotten stream's tracker is forgotten too"


@pytest.mark.parametrize("hold", [1, 3])
def test_the_workers_hold_setting_decides_when_an_episode_starts(hold, tiny_runtime, tiny_bundle, sockets):
    from stream.worker import Scorer, _Loop

    scorer = Scorer(tiny_runtime, 0.0, tiny_bundle.model_id)
    out = sockets(zmq.PAIR, bind=f"inproc://hold-{hold}")
    inbox = sockets(zmq.PAIR, connect=f"inproc://hold-{hold}")
    loop = _Loop(scorer, WorkerConfig(mode="lossless", hold=hold), out, threading.Event(), None)
    loop.handle([(zmq.Frame(protocol.encode(protocol.frame_message("a", seq, image, t_capture=T0 + seq))),
                  T0 + seq) for seq, image in enumerate(scan(4))])
    kinds = [recv_message(inbox).TYPE for _ in range(5)]
    # Every score is Head at threshold 0: the episode starts once `hold` of them are in.
    assert kinds == ["score"] * hold + ["episode"] + ["score"] * (4 - hold)


def test_a_bad_hold_is_one_line():
    with pytest.raises(ConfigError, match=r"^hold: must be an integer in \[1, \d+\], got 0$"):
        WorkerConfig(hold=0)
