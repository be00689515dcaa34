"""Damaged video files: every frame sent is the file's own frame at its own seq and time, and the damage is told.

Each damaged file is a real video written with OpenCV and then spoiled on
disk: garbage written over its middle, or its end cut off. The tests show
that a plain OpenCV read of such a file goes wrong (frames shifted, half
decoded, or decoded from lost frames), then that the source, the capture
and a worker behind it do not.
"""

import logging

import cv2
import numpy as np
import pytest
import zmq

from stream import protocol
from stream.capture import CaptureConfig, capture
from stream.sources import VideoFileSource
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import make_frames, read_video, recv_until

FPS = 25.0


def spoil(path, out, *, at=0.5, size=20_000, seed=0):
    """A copy of ``path`` at ``out`` with ``size`` random bytes written over it at fraction ``at``."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start:start + size] = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


def indexed(items):
    """(frame index from t_source, image) of a source's items."""
    return [(round(t * FPS), image) for image, t in items]


def assert_own_frames(indexed_items, intact):
    """Every image is bit for bit the intact file's frame at its index, and indexes only go up."""
    indexes = [i for i, _ in indexed_items]
    assert indexes == sorted(set(indexes))
    for i, image in indexed_items:
        assert np.array_equal(image, intact[i]), f"frame {i} is not the file's frame {i}"


def gaps(indexes):
    return [(a, b) for a, b in zip(indexes, indexes[1:]) if b != a + 1]


def timed_read(path):
    """(index from the frame's timestamp, image) of every frame a plain OpenCV read decodes."""
    reader = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = reader.read()
        if not ok:
            break
        frames.append((round(reader.get(cv2.CAP_PROP_POS_MSEC) / 1000 * FPS), image))
    reader.release()
    return frames


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "stream.sources" and r.levelno == logging.WARNING]


@pytest.fixture
def damaged(video, tmp_path):
    """A 200-frame video and a copy with 20 KB of garbage in its middle: (intact frames, damaged path)."""
    path = video(200, fps=FPS)
    intact = read_video(path)
    bad = spoil(path, tmp_path / "damaged.avi")
    plain = read_video(bad)
    # A plain read of the damaged file shifts every frame after the damage.
    assert len(plain) < 200 and not np.array_equal(plain[150], intact[150])
    return intact, bad


def test_frames_after_garbage_keep_their_index_and_the_damage_is_a_gap(damaged, caplog):
    intact, bad = damaged
    with caplog.at_level(logging.WARNING, logger="stream.sources"), VideoFileSource(bad) as source:
        items = indexed(source)
    assert_own_frames(items, intact)
    indexes = [i for i, _ in items]
    ((before, after),) = gaps(indexes)
    assert indexes[0] == 0 and indexes[-1] == 199 and 90 < before < after < 120
    assert source.missing == 200 - len(items) == after - before - 1
    assert warnings_of(caplog) == [f"video file {bad}: frames {before + 1} to {after - 1} damaged or unreadable, "
                                   "left out"]


def test_a_capture_of_a_damaged_video_sends_each_frame_at_its_seq_and_ends_with_error(damaged, background, sockets,
                                                                                      address):
    intact, bad = damaged
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    task = background(lambda stop: capture(VideoFileSource(bad), CaptureConfig(pub=addr, mode="lossless", fast=True,
                                                                               stream="probe1"), stop))
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    frames = [m for m in messages if isinstance(m, protocol.Frame)]
    assert [f.t_source for f in frames] == pytest.approx([f.seq / FPS for f in frames])
    assert_own_frames([(f.seq, f.image()) for f in frames], intact)
    ((before, after),) = gaps([f.seq for f in frames])
    (status,) = [m for m in messages if isinstance(m, protocol.Status)]
    assert (status.stream, status.level) == ("probe1", "warning")
    assert status.message == f"video file {bad}: frames {before + 1} to {after - 1} damaged or unreadable, left out"
    # The warning goes out before the first frame after the gap.
    assert messages.index(status) < messages.index(next(f for f in frames if f.seq == after))
    assert (messages[-1].last_seq, messages[-1].reason) == (199, "error")
    stats = task.join()
    assert (stats.frames_out, stats.last_seq, stats.reason) == (len(frames), 199, "error")


def test_on_bad_frame_stop_ends_the_stream_at_the_damage(damaged, background, sockets, address):
    _, bad = damaged
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    config = CaptureConfig(pub=addr, mode="lossless", fast=True, on_bad_frame="stop")
    task = background(lambda stop: capture(VideoFileSource(bad), config, stop))
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    seqs = [m.seq for m in messages if isinstance(m, protocol.Frame)]
    assert 90 < len(seqs) < 120 and seqs == list(range(len(seqs)))
    assert [m.level for m in messages if isinstance(m, protocol.Status)] == ["warning"]
    assert (messages[-1].last_seq, messages[-1].reason) == (seqs[-1], "error")
    assert task.join().reason == "error"


def test_a_looped_damaged_video_numbers_each_pass_after_the_whole_file_and_warns_once(video, tmp_path, background,
                                                                                     sockets, address):
    path = video(60, fps=FPS)
    intact = read_video(path)
    bad = spoil(path, tmp_path / "looped.avi", size=8_000)
    with VideoFileSource(bad) as source:
        one_pass = [i for i, _ in indexed(source)]
    assert len(one_pass) < 60
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    config = CaptureConfig(pub=addr, mode="lossless", fast=True, loop=True, max_frames=2 * len(one_pass))
    background(lambda stop: capture(VideoFileSource(bad, loop=True), config, stop))
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    frames = [m for m in messages if isinstance(m, protocol.Frame)]
    assert [f.seq for f in frames] == one_pass + [60 + i for i in one_pass]
    assert all(np.array_equal(f.image(), intact[f.seq % 60]) for f in frames)
    assert len([m for m in messages if isinstance(m, protocol.Status)]) == 1
    assert messages[-1].reason == "max_frames"


def test_a_truncated_video_does_not_send_its_cut_off_frame(video, tmp_path, background, sockets, address, caplog):
    path = video(40, fps=FPS)
    intact = read_video(path)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    plain = read_video(cut)
    # A plain read decodes the frame the cut goes through, half of it.
    assert 5 < len(plain) < 40 and not np.array_equal(plain[-1], intact[len(plain) - 1])
    with caplog.at_level(logging.WARNING, logger="stream.sources"), VideoFileSource(cut) as source:
        items = indexed(source)
    assert [i for i, _ in items] == list(range(len(plain) - 1))
    assert_own_frames(items, intact)
    assert warnings_of(caplog) == [f"video file {cut}: ended after {len(items)} of 40 frames (damaged or truncated)"]
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    background(lambda stop: capture(VideoFileSource(cut), CaptureConfig(pub=addr, mode="lossless", fast=True), stop))
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    assert [m.seq for m in messages if isinstance(m, protocol.Frame)] == list(range(len(items)))
    assert (messages[-1].last_seq, messages[-1].reason) == (len(items) - 1, "error")


def test_frames_decoded_from_lost_ones_are_left_out_up_to_the_next_key_frame(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (80, 64), True)
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write MPEG-4")
    for frame in make_frames(200):
        writer.write(frame)
    writer.release()
    intact = read_video(path)
    bad = spoil(path, tmp_path / "damaged.mp4")
    with VideoFileSource(bad) as source:
        items = indexed(source)
    assert_own_frames(items, intact)
    ((before, after),) = gaps([i for i, _ in items])
    assert items[-1][0] == 199 and source.missing == after - before - 1
    # Inside the gap are frames that decode, but wrong: predicted from frames the damage destroyed.
    wrong = [i for i, image in timed_read(bad) if before < i < after and not np.array_equal(image, intact[i])]
    assert wrong


def test_a_worker_scores_every_frame_of_a_damaged_video_and_flags_the_gap(damaged, background, sockets, address,
                                                                          tiny_bundle):
    _, bad = damaged
    frames_addr, scores_addr = address(), address()
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.2, exit_after_eos=1)
    worker = background(lambda stop: serve(tiny_bundle, config, stop))
    sub = sockets(zmq.SUB, connect=scores_addr)
    recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat) and m.stream == "_worker" and not m.loading)
    source = background(lambda stop: capture(VideoFileSource(bad), CaptureConfig(
        pub=frames_addr, mode="lossless", fast=True, stream="replay"), stop))
    messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream), timeout_s=60)
    scores = [m for m in messages if isinstance(m, protocol.Score)]
    sent = source.join()
    ((before, after),) = gaps([s.seq for s in scores])
    assert len(scores) == sent.frames_out and scores[-1].seq == 199
    window = tiny_bundle.config.window
    flagged = [s.seq for s in scores if protocol.FLAG_GAP in s.flags]
    assert flagged == [s.seq for s in scores if after <= s.seq < after + window - 1]
    assert (messages[-1].last_seq, messages[-1].reason) == (199, "error")
    assert worker.join().frames_out == len(scores)
