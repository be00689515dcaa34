"""train.data.check_dataset: every data problem is reported with its file (and row), and the exit code says OK or not.

``fetalhead data check`` shows the same report; its surface is tested in tests/tools/test_commands_train.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.train.test_data import (alternating, frame_names, good_dataset, write_csv, write_images, write_scan,
                                   write_video)
from tools.commands.data import main
from train.data import MAX_PER_KIND, check_dataset


def run_check(capsys, root: Path, *flags: str) -> tuple[int, str]:
    code = main(["check", str(root), *flags])
    return code, capsys.readouterr().out


def only_problem(report, fatal: bool):
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    problem = report.problems[0]
    assert problem.fatal is fatal
    return problem


@pytest.fixture
def dataset(tmp_path):
    return good_dataset(tmp_path / "data")


def test_good_dataset_is_ok(capsys, dataset):
    report = check_dataset(dataset)
    assert report.ok and report.problems == [] and report.usable_scans == ["scan_1", "scan_2"]
    assert [(s.name, s.frames, s.head, s.not_head, s.source) for s in report.scans] == [
        ("scan_1", 10, 4, 6, "frames"), ("scan_2", 10, 4, 6, "frames")]
    code, out = run_check(capsys, dataset)
    assert code == 0
    assert "scan_1" in out and "40.0" in out and "OK: 2 usable scans" in out


def test_frame_without_a_label(capsys, dataset):
    write_csv(dataset / "scan_2" / "labels.csv", [(n, "Head") for n in frame_names(9)])
    problem = only_problem(check_dataset(dataset), fatal=True)
    assert problem.path == dataset / "scan_2" / "frames" / "frame_0009.png"
    assert problem.message == "no label in labels.csv"
    code, out = run_check(capsys, dataset)
    assert code == 1
    assert f"error   {problem}" in out
    assert "NOT OK: 1 fatal problem;" in out


def test_label_without_a_frame(capsys, dataset):
    rows = [(n, "Head") for n in frame_names(10)] + [("frame_0042.png", "Head")]
    write_csv(dataset / "scan_1" / "labels.csv", rows)
    problem = only_problem(check_dataset(dataset), fatal=True)
    assert (problem.path, problem.row) == (dataset / "scan_1" / "labels.csv", 12)
    assert problem.message == "frame_0042.png has no frame file in scan_1/frames/"
    code, out = run_check(capsys, dataset)
    assert code == 1 and f"{dataset / 'scan_1' / 'labels.csv'}:row 12: frame_0042.png has no frame file" in out


def test_unknown_label_value_with_its_row(capsys, dataset):
    rows = [(n, "Head") for n in frame_names(10)]
    rows[3] = (rows[3][0], "Maybe")
    write_csv(dataset / "scan_1" / "labels.csv", rows)
    problem = only_problem(check_dataset(dataset), fatal=True)
    assert (problem.path.name, problem.row) == ("labels.csv", 5)
    assert problem.message == "unknown label 'Maybe' for frame_0003.png (expected Head or Not-Head, 1 or 0)"
    assert run_check(capsys, dataset)[0] == 1


def test_unreadable_image_only_when_images_are_checked(capsys, dataset):
    bad = dataset / "scan_1" / "frames" / "frame_0004.png"
    bad.write_bytes(b"\x89PNG but not really")
    problem = only_problem(check_dataset(dataset), fatal=True)
    assert problem.path == bad and problem.message == "not a readable image"
    assert check_dataset(dataset, check_images=False).ok
    assert run_check(capsys, dataset)[0] == 1
    code, out = run_check(capsys, dataset, "--no-images")
    assert code == 0 and "OK" in out


def test_empty_image_even_without_decoding(dataset):
    empty = dataset / "scan_2" / "frames" / "frame_0000.png"
    empty.write_bytes(b"")
    for check_images in (True, False):
        problem = only_problem(check_dataset(dataset, check_images=check_images), fatal=True)
        assert problem.path == empty and problem.message == "empty file"


def test_frame_listed_twice_with_the_same_label_is_a_warning(capsys, dataset):
    rows = [(n, v) for n, v in zip(frame_names(10), alternating(10))] + [("frame_0001.png", 0)]
    write_csv(dataset / "scan_1" / "labels.csv", rows)
    report = check_dataset(dataset)
    problem = only_problem(report, fatal=False)
    assert (problem.path.name, problem.row) == ("labels.csv", 12)
    assert problem.message == "frame_0001.png is listed again (first on row 3)"
    code, out = run_check(capsys, dataset)
    assert code == 0 and f"warning {problem}" in out


def test_frame_listed_twice_with_another_label_is_fatal(dataset):
    rows = [(n, v) for n, v in zip(frame_names(10), alternating(10))] + [("frame_0001", "Head")]
    write_csv(dataset / "scan_1" / "labels.csv", rows)
    report = check_dataset(dataset)
    problem = only_problem(report, fatal=True)
    assert problem.row == 12 and "listed again with another label ('0' on row 3, 'Head' here)" in problem.message
    assert report.usable_scans == ["scan_2"]


def test_identical_frame_files_are_a_warning(dataset):
    frames = dataset / "scan_1" / "frames"
    (frames / "frame_0005.png").write_bytes((frames / "frame_0002.png").read_bytes())
    problem = only_problem(check_dataset(dataset), fatal=False)
    assert problem.path == frames / "frame_0005.png" and problem.message == "same content as frame_0002.png"


def test_scan_shorter_than_the_window_is_left_out(capsys, dataset):
    write_scan(dataset, "scan_3", alternating(5), seed=3)
    report = check_dataset(dataset, window=8)
    problem = only_problem(report, fatal=False)
    assert problem.path == dataset / "scan_3"
    assert problem.message == "5 frames, shorter than the window of 8: no training window, left out"
    assert report.ok and report.usable_scans == ["scan_1", "scan_2"]
    assert check_dataset(dataset, window=5).problems == []
    code, out = run_check(capsys, dataset, "--window", "12")
    assert code == 1 and "no usable scan" in out


def test_no_frames(dataset):
    scan = dataset / "scan_3"
    scan.mkdir()
    write_csv(scan / "labels.csv", [("a.png", "Head")])
    report = check_dataset(dataset)
    problem = only_problem(report, fatal=True)
    assert problem.path == scan and problem.message.startswith("no frames: no images (png, jpg")
    assert report.scans[-1].source == "none"


def test_no_label_file(capsys, dataset):
    (dataset / "scan_2" / "labels.csv").unlink()
    problem = only_problem(check_dataset(dataset), fatal=True)
    assert problem.path == dataset / "scan_2"
    assert problem.message == "no label file (labels.csv or labels.xlsx) and no Head/ Not-Head/ folders"
    code, out = run_check(capsys, dataset)
    assert code == 1 and str(problem) in out


def test_unknown_label_file_format(dataset):
    labels = dataset / "scan_2" / "labels.csv"
    labels.rename(labels.with_suffix(".txt"))
    problem = only_problem(check_dataset(dataset), fatal=True)
    assert problem.path == labels.with_suffix(".txt")
    assert problem.message == "unknown label file format .txt; use labels.csv or labels.xlsx"


def test_unparsable_csv(dataset):
    labels = dataset / "scan_2" / "labels.csv"
    labels.write_bytes(b"\xff\xfe\x00garbage\x00\x01,\x02\n\x00\x00")
    problem = only_problem(check_dataset(dataset), fatal=True)
    assert problem.path == labels and problem.message.startswith("cannot read as CSV (")


def test_missing_label_column(dataset):
    write_csv(dataset / "scan_2" / "labels.csv", [("a.png", "x")], header=("frame", "notes"))
    problem = only_problem(check_dataset(dataset), fatal=True)
    assert problem.message.startswith("no label column (columns: frame, notes; expected one of label")


def test_both_label_files(dataset):
    scan = dataset / "scan_1"
    pd.read_csv(scan / "labels.csv").to_excel(scan / "labels.xlsx", index=False)
    problem = only_problem(check_dataset(dataset), fatal=True)
    assert problem.path == scan and problem.message == "both labels.csv and labels.xlsx; keep one"


def test_frames_and_a_video_in_one_scan(dataset):
    write_video(dataset / "scan_1" / "scan.avi", 10)
    problem = only_problem(check_dataset(dataset), fatal=True)
    assert problem.message == "holds both frame images and a video (scan.avi); keep one"


def test_same_frame_in_both_class_folders(dataset):
    scan = dataset / "scan_3"
    write_images(scan / "Head", ["f1.png", "f2.png"], seed=5)
    write_images(scan / "Not-Head", ["f2.png", "f3.png"], seed=6)
    problem = only_problem(check_dataset(dataset, window=2), fatal=True)
    assert problem.path.name == "f2.png" and "which label is right?" in problem.message


def test_video_with_more_labels_than_frames(capsys, dataset):
    scan = dataset / "scan_3"
    scan.mkdir()
    write_video(scan / "scan.avi", 10)
    write_csv(scan / "labels.csv", [(i, v) for i, v in enumerate(alternating(12))])
    report = check_dataset(dataset)
    assert [(p.row, p.message) for p in report.problems] == [
        (12, "frame 10 is not in scan.avi (frames 0..9)"), (13, "frame 11 is not in scan.avi (frames 0..9)")]
    assert report.scans[-1].source == "video" and report.scans[-1].frames == 10
    assert run_check(capsys, dataset)[0] == 1


def test_video_frames_without_labels_and_bad_indexes(dataset):
    scan = dataset / "scan_3"
    scan.mkdir()
    write_video(scan / "scan.avi", 10)
    write_csv(scan / "labels.csv", [(i, "Head") for i in range(8)] + [("eight", "Head")])
    problems = check_dataset(dataset).problems
    assert [(p.path.name, p.row, p.message) for p in problems] == [
        ("labels.csv", 10, "frame 'eight' is not a frame index (0, 1, 2 ...) of scan.avi"),
        ("scan.avi", None, "frame 8 has no label in labels.csv"),
        ("scan.avi", None, "frame 9 has no label in labels.csv"),
    ]


def test_unreadable_video(dataset):
    scan = dataset / "scan_3"
    scan.mkdir()
    (scan / "scan.mp4").write_bytes(b"not a video")
    write_csv(scan / "labels.csv", [(0, "Head")])
    problem = only_problem(check_dataset(dataset), fatal=True)
    assert problem.path == scan / "scan.mp4" and problem.message == "cannot open video"


def test_many_problems_of_one_kind_are_counted_after_the_first_ones(dataset):
    write_scan(dataset, "scan_3", alternating(40), seed=3)
    write_csv(dataset / "scan_3" / "labels.csv", [("frame_0000.png", "Head")])
    problems = check_dataset(dataset).problems
    assert len(problems) == MAX_PER_KIND + 1
    assert all(p.message == "no label in labels.csv" for p in problems[:MAX_PER_KIND])
    assert str(problems[-1]) == f"{dataset / 'scan_3'}: and {39 - MAX_PER_KIND} more: frames without a label"
    assert problems[-1].fatal


def test_dataset_level_problems(capsys, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    code, out = run_check(capsys, root)
    assert code == 1 and "no scan folders" in out
    write_scan(tmp_path / "one_class", "s", [1] * 8)
    report = check_dataset(tmp_path / "one_class")
    assert [p.message for p in report.problems] == ["no Not-Head frame in any usable scan"]
    scan = write_scan(tmp_path / "flat", "s", alternating(8))
    write_csv(tmp_path / "flat" / "labels.csv", [])
    problem = only_problem(check_dataset(tmp_path / "flat"), fatal=False)
    assert "is this a scan folder?" in problem.message and scan.exists()
