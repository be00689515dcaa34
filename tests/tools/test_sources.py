"""``tools.sources``: scan-folder and synthetic sources, and ``open_source`` resolving every kind of spec."""

import itertools
import logging

import cv2
import numpy as np
import pytest
import zmq

from stream import net, protocol
from stream.capture import CaptureConfig, capture
from stream.sources import SourceError, VideoFileSource
from tests.stream.conftest import WAIT_S, Task, make_frames, read_video, recv_until, write_avi
from tools.commands.capture import main
from tools.sources import ScanFolderSource, open_source


def test_a_video_file_opens_as_a_video_file_source(tmp_path):
    path = write_avi(tmp_path / "clip.avi", make_frames(3))
    with open_source(str(path)) as source:
        assert isinstance(source, VideoFileSource)
        assert source.name == "clip"


def test_scan_folder_source_plays_the_training_format(tmp_path):
    scan = tmp_path / "scan01"
    (scan / "frames").mkdir(parents=True)
    frames = make_frames(6)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(scan / "frames" / f"frame{i}.png"), frame)
    (scan / "labels.csv").write_text("frame,label\n" + "".join(f"frame{i},{'Head' if i % 2 else 'Not-Head'}\n"
                                                                for i in range(6)))
    with open_source(str(scan)) as source:
        assert isinstance(source, ScanFolderSource)
        assert source.name == "scan01" and source.fps == 25.0
        items = list(source)
    assert len(items) == 6 and items[-1][1] == pytest.approx(5 / 25.0)
    np.testing.assert_array_equal(items[2][0], frames[2])


def test_synthetic_source_is_endless_at_30_fps():
    with open_source("synthetic", size=(48, 64)) as source:
        items = list(itertools.islice(source, 5))
    assert source.fps == 30.0 and source.name == "synthetic"
    assert all(image.shape == (48, 64) and image.dtype == np.uint8 for image, _ in items)


@pytest.fixture
def bad_sources(tmp_path):
    """Spec -> what its SourceError says, for each kind of bad source."""
    (tmp_path / "notes.avi").write_text("not a video")
    (tmp_path / "empty").mkdir()
    return {
        str(tmp_path / "missing.avi"): "missing.avi: not found",
        str(tmp_path / "notes.avi"): "notes.avi: not a video",
        str(tmp_path / "empty"): "scan folder .*empty: no frames",
        "7": "video device 7: cannot be opened",
    }


def test_bad_sources_are_one_line_source_errors(bad_sources):
    for spec, match in bad_sources.items():
        with pytest.raises(SourceError, match=match) as info:
            open_source(spec)
        assert "\n" not in str(info.value)


def test_capture_main_reports_a_bad_source_in_one_line_and_exits_1(bad_sources, capsys):
    for spec in bad_sources:
        assert main([spec, "--pub", net.free_tcp_address()]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("fetalhead: error:") and spec in err and "\n" not in err


# --- damaged scan folders ---------------------------------------------------------------


def write_scan(folder, frames):
    """A scan folder of PNG frames ``frames/frame000.png`` ... with labels; returns its path."""
    (folder / "frames").mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / "frames" / f"frame{i:03d}.png"), frame)
    (folder / "labels.csv").write_text("frame,label\n" + "".join(f"frame{i:03d},Head\n" for i in range(len(frames))))
    return folder


def corrupt(path):
    """Garbage over the file from byte 40 on: a PNG signature and header with nothing decodable after them."""
    data = bytearray(path.read_bytes())
    data[40:] = bytes(range(256)) * (len(data[40:]) // 256) + bytes(len(data[40:]) % 256)
    path.write_bytes(bytes(data))


def captured(spec, **settings):
    """Every message a lossless capture of ``spec`` sends, up to its end of stream, and the capture's stats."""
    addr = net.free_tcp_address()
    pull = net.socket(zmq.PULL, connect=addr)
    config = CaptureConfig(pub=addr, mode="lossless", fast=True, **settings)
    task = Task(lambda stop: capture(open_source(spec), config, stop))
    try:
        messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
        return messages, task.join()
    finally:
        task.stop.set()
        task.thread.join(WAIT_S)
        pull.close(linger=0)


def test_a_corrupt_png_is_skipped_and_the_frames_after_it_keep_their_seq(tmp_path):
    frames = make_frames(200)
    scan = write_scan(tmp_path / "scan01", frames)
    corrupt(scan / "frames" / "frame100.png")
    messages, stats = captured(str(scan))
    sent = [m for m in messages if isinstance(m, protocol.Frame)]
    assert [f.seq for f in sent] == [i for i in range(200) if i != 100]
    assert all(np.array_equal(f.image(), frames[f.seq]) for f in sent)
    assert [f.t_source for f in sent] == pytest.approx([f.seq / 25.0 for f in sent])
    (status,) = [m for m in messages if isinstance(m, protocol.Status)]
    assert status.level == "warning" and status.message == (
        f"scan folder {scan}: frames/frame100.png (frame 100): not a readable image, left out")
    assert (messages[-1].last_seq, messages[-1].reason) == (199, "error")
    assert (stats.frames_out, stats.reason) == (199, "error")


def test_on_bad_frame_stop_ends_a_scan_folder_at_the_corrupt_png(tmp_path):
    scan = write_scan(tmp_path / "scan01", make_frames(120))
    corrupt(scan / "frames" / "frame100.png")
    messages, _ = captured(str(scan), on_bad_frame="stop")
    assert [m.seq for m in messages if isinstance(m, protocol.Frame)] == list(range(100))
    assert (messages[-1].last_seq, messages[-1].reason) == (99, "error")


def test_a_run_of_unreadable_frames_is_one_warning(tmp_path, caplog):
    scan = write_scan(tmp_path / "scan01", make_frames(12))
    for i in (3, 4, 5, 6, 9):
        corrupt(scan / "frames" / f"frame{i:03d}.png")
    with caplog.at_level(logging.WARNING, logger="stream.sources"), open_source(str(scan)) as source:
        indexes = [round(t * 25) for _, t in source]
    assert indexes == [0, 1, 2, 7, 8, 10, 11] and source.missing == 5
    assert [r.getMessage() for r in caplog.records] == [
        f"scan folder {scan}: frames/frame003.png (frame 3) and the 3 frames after it: not a readable image, left out",
        f"scan folder {scan}: frames/frame009.png (frame 9): not a readable image, left out"]


def test_an_empty_png_is_refused_naming_the_file(tmp_path):
    scan = write_scan(tmp_path / "scan01", make_frames(8))
    (scan / "frames" / "frame005.png").write_bytes(b"")
    with pytest.raises(SourceError) as info:
        open_source(str(scan))
    assert str(info.value) == f"scan folder {scan}: frames/frame005.png: empty file"


def test_a_scan_folder_holding_a_damaged_video_leaves_the_damage_out(tmp_path, caplog):
    scan = tmp_path / "scan02"
    scan.mkdir()
    frames = make_frames(200)
    write_avi(scan / "scan.avi", frames)
    intact = read_video(scan / "scan.avi")
    data = bytearray((scan / "scan.avi").read_bytes())
    data[len(data) // 2:len(data) // 2 + 20_000] = bytes(20_000)
    (scan / "scan.avi").write_bytes(bytes(data))
    (scan / "labels.csv").write_text("frame,label\n" + "".join(f"{i},Head\n" for i in range(200)))
    with caplog.at_level(logging.WARNING, logger="stream.sources"), open_source(str(scan)) as source:
        items = [(round(t * 25), image) for image, t in source]
    assert items[-1][0] == 199 and 0 < source.missing == 200 - len(items)
    assert all(np.array_equal(image, intact[i]) for i, image in items)
    assert [r.getMessage() for r in caplog.records if "damaged or unreadable" in r.getMessage()]
