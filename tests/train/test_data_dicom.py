"""train.data: a DICOM cine as a scan's frames, labelled by frame index like a video, through the same data check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import RLELossless

from models.classes import HEAD, NOT_HEAD
from models.errors import DataError
from tests.stream.test_dicom import gray_frames, write_cine
from train.data import check_dataset, load_dataset, load_scan


def write_labels(path: Path, labels: list[int]) -> None:
    path.write_text("frame,label\n" + "".join(f"{i},{'Head' if v else 'Not-Head'}\n" for i, v in enumerate(labels)))


def labels_of(n: int) -> list[int]:
    return [HEAD if i % 3 == 0 else NOT_HEAD for i in range(n)]


def test_a_dicom_cine_is_a_scan_with_labels_by_frame_index(tmp_path):
    frames = gray_frames(10)
    write_cine(tmp_path / "exam.dcm", frames, syntax=RLELossless, FrameTime=40)
    write_labels(tmp_path / "labels.csv", labels_of(10))
    for check_images in (False, True):
        scan, problems = load_scan(tmp_path, check_images=check_images)
        assert problems == []
        assert scan.video == tmp_path / "exam.dcm" and scan.frame_files == () and scan.source == "video"
        assert scan.labels.tolist() == labels_of(10) and scan.frame_names == tuple(str(i) for i in range(10))
    np.testing.assert_array_equal(np.stack(list(scan.iter_frames())), frames)
    np.testing.assert_array_equal(scan.read_frame(7), frames[7])
    with pytest.raises(IndexError):
        scan.read_frame(10)


def test_the_data_check_reports_a_frame_count_that_disagrees_with_the_data(tmp_path):
    scan = tmp_path / "data" / "scan1"
    scan.mkdir(parents=True)
    write_cine(scan / "exam.dcm", gray_frames(5), frame_count=8)
    write_labels(scan / "labels.csv", labels_of(8))
    report = check_dataset(tmp_path / "data", window=2)
    assert [str(p) for p in report.fatal if p.path.name == "exam.dcm"] == [
        f"{scan / 'exam.dcm'}: ended after 5 of 8 frames (truncated, or Number of Frames is wrong)"]
    # Without decoding, the header's count stands, and reading stops with the same line.
    [loaded] = load_dataset(tmp_path / "data", window=2)
    with pytest.raises(DataError, match="ended after 5 of 8 frames"):
        list(loaded.iter_frames())


def test_a_dcm_that_is_not_dicom_and_labels_past_the_end_are_problems_of_their_files(tmp_path):
    bad, short = tmp_path / "bad", tmp_path / "short"
    bad.mkdir(), short.mkdir()
    (bad / "exam.dcm").write_text("not an image\n" * 20)
    write_labels(bad / "labels.csv", labels_of(4))
    write_cine(short / "exam.dcm", gray_frames(4))
    write_labels(short / "labels.csv", labels_of(6))
    _, problems = load_scan(bad)
    assert [str(p) for p in problems] == [f"{bad / 'exam.dcm'}: not a DICOM file (no DICM header)"]
    _, problems = load_scan(short)
    assert [p.message for p in problems if p.fatal] == ["frame 4 is not in exam.dcm (frames 0..3)",
                                                        "frame 5 is not in exam.dcm (frames 0..3)"]
