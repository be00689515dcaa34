"""``tools.sources``: scan-folder and synthetic sources, and ``open_source`` resolving every kind of spec."""

import itertools

import cv2
import numpy as np
import pytest

from stream import net
from stream.sources import SourceError, VideoFileSource
from tests.stream.conftest import make_frames, write_avi
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
