"""The OpenCV sources: a video file's frames and times, looped, truncated, or not a video at all."""

import itertools
import logging
import os

import numpy as np
import pytest

from stream.sources import SourceError, VideoFileSource
from tests.stream.conftest import read_video


def test_video_file_source_gives_every_frame_with_its_time(video):
    path = video(12, fps=20.0)
    with VideoFileSource(path) as source:
        assert source.fps == 20.0 and source.name == "clip"
        items = list(source)
    assert len(items) == 12
    assert [t for _, t in items] == pytest.approx([i / 20.0 for i in range(12)])
    for (image, _), expected in zip(items, read_video(path)):
        assert image.dtype == np.uint8 and image.shape == (64, 80, 3)
        np.testing.assert_array_equal(image, expected)


def test_looped_video_starts_again(video):
    path = video(5)
    with VideoFileSource(path, loop=True, fps=50.0) as source:
        items = list(itertools.islice(source, 12))
    assert source.fps == 50.0
    assert [t for _, t in items] == pytest.approx([(i % 5) / 50.0 for i in range(12)])


def test_truncated_video_gives_the_frames_before_the_damage_and_warns(video, tmp_path, caplog):
    data = video(40).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="stream.sources"), VideoFileSource(cut) as source:
        frames = list(source)
    assert 5 < len(frames) < 40
    assert any("ended after" in r.getMessage() and "of 40" in r.getMessage() for r in caplog.records)


def test_a_file_that_is_not_a_video_is_a_one_line_source_error(tmp_path):
    notes = tmp_path / "notes.avi"
    notes.write_text("not a video")
    with pytest.raises(SourceError, match="notes.avi: not a video") as info:
        VideoFileSource(notes)
    assert "\n" not in str(info.value)


def test_opening_a_file_leaves_the_ffmpeg_options_of_the_process_as_they_were(video, monkeypatch):
    path = video(3)
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)
    assert len(list(VideoFileSource(path))) == 3
    assert "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "probesize;5000000")
    assert len(list(VideoFileSource(path))) == 3
    assert os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] == "probesize;5000000"


def test_a_video_that_became_unreadable_after_opening_is_a_source_error(video):
    path = video(5)
    source = VideoFileSource(path)
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(SourceError, match="clip.avi: not a video"):
        list(source)
