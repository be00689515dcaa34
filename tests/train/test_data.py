"""train.data: layouts, label files, images and load_dataset, on real files; windows stay inside scans."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from models.classes import CLASS_NAMES, HEAD, NOT_HEAD
from models.errors import DataError
from models.windows import windows
from train.data import (Problem, Scan, load_dataset, load_scan, normalise_column, parse_label, read_image,
                        read_labels, scan_dirs)

SIZE = (12, 16)  # H, W of test frames


def image(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """uint8 (H, W) noise, different for every seed so no two frames share content."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def write_images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(names):
        path = folder / name
        assert cv2.imwrite(str(path), image(seed * 1000 + k))
        paths.append(path)
    return paths


def write_csv(path: Path, rows: list[tuple], header: tuple[str, str] = ("frame", "label")) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_video(path: Path, n_frames: int, size: tuple[int, int] = (32, 48)) -> Path:
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (w, h), True)
    assert writer.isOpened()
    for k in range(n_frames):
        writer.write(cv2.cvtColor(cv2.GaussianBlur(image(k, size), (5, 5), 0), cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def frame_names(n: int) -> list[str]:
    return [f"frame_{i:04d}.png" for i in range(n)]


def alternating(n: int) -> list[int]:
    """Labels 1 for every third frame: both classes present."""
    return [HEAD if i % 3 == 0 else NOT_HEAD for i in range(n)]


def write_scan(root: Path, name: str, labels: list[int], *, seed: int = 0) -> Path:
    """A scan folder with frames/ and labels.csv (Head / Not-Head), labels in frame order."""
    folder = root / name
    names = frame_names(len(labels))
    write_images(folder / "frames", names, seed=seed)
    write_csv(folder / "labels.csv", [(n, CLASS_NAMES[v]) for n, v in zip(names, labels)])
    return folder


def good_dataset(root: Path) -> Path:
    """Two good scans of 10 frames under ``root``; tests break one of them."""
    write_scan(root, "scan_1", alternating(10), seed=1)
    write_scan(root, "scan_2", alternating(10), seed=2)
    return root

# --- layouts ---------------------------------------------------------------------------------------

def test_frames_are_in_natural_order_and_labels_aligned_to_it(tmp_path):
    names = ["frame10.png", "frame2.png", "Frame3.png", "frame1.png"]
    write_images(tmp_path / "frames", names)
    # Rows in another order than the frames: labels follow the frame order, not the rows.
    write_csv(tmp_path / "labels.csv", [("frame10.png", "Head"), ("frame1.png", "Not-Head"),
                                        ("Frame3.png", "Head"), ("frame2.png", "Not-Head")])
    scan, problems = load_scan(tmp_path)
    assert problems == []
    assert scan.frame_names == ("frame1.png", "frame2.png", "Frame3.png", "frame10.png")
    assert scan.labels.tolist() == [0, 0, 1, 1]
    assert scan.labels.dtype == np.int8
    assert scan.source == "frames" and scan.video is None and len(scan) == 4


@pytest.mark.parametrize("sub", ["frames", "ImageData", "imagedata", "."])
def test_frame_folders_are_found(tmp_path, sub):
    scan_dir = tmp_path / "scan_a"
    write_images(scan_dir / sub, frame_names(5))
    write_csv(scan_dir / "labels.csv", [(n, v) for n, v in zip(frame_names(5), alternating(5))])
    scan, problems = load_scan(scan_dir)
    assert problems == []
    assert scan.name == "scan_a" and scan.root == scan_dir
    assert [p.name for p in scan.frame_files] == frame_names(5)
    assert scan.labels.tolist() == alternating(5)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"])
def test_image_formats_read_as_uint8(tmp_path, suffix):
    write_images(tmp_path, [f"a{suffix}", f"b{suffix}"])
    write_csv(tmp_path / "labels.csv", [("a", "Head"), ("b", "Not-Head")])
    scan, problems = load_scan(tmp_path, check_images=True)
    assert problems == []
    frame = scan.read_frame(0)
    assert frame.dtype == np.uint8 and frame.shape == SIZE


@pytest.mark.parametrize("head, not_head", [("Head", "Not-Head"), ("head", "NotHead"), ("HEAD", "Not_Head"),
                                             ("Head", "not head")])
def test_class_folders_give_labels_in_natural_order_across_both(tmp_path, head, not_head):
    write_images(tmp_path / head, ["f1.png", "f3.png", "f10.png"], seed=1)
    write_images(tmp_path / not_head, ["f2.png", "f4.png"], seed=2)
    scan, problems = load_scan(tmp_path)
    assert problems == []
    assert scan.frame_names == ("f1.png", "f2.png", "f3.png", "f4.png", "f10.png")
    assert scan.labels.tolist() == [1, 0, 1, 0, 1]
    assert scan.source == "class folders"


def test_class_folders_override_a_label_file_with_a_warning(tmp_path):
    write_images(tmp_path / "Head", ["f1.png"], seed=1)
    write_images(tmp_path / "Not-Head", ["f2.png"], seed=2)
    write_csv(tmp_path / "labels.csv", [("f1.png", "Not-Head")])
    scan, problems = load_scan(tmp_path)
    assert scan.labels.tolist() == [1, 0]
    assert [(p.path.name, p.fatal) for p in problems] == [("labels.csv", False)]


def test_video_with_labels_by_frame_index(tmp_path):
    write_video(tmp_path / "scan.avi", 12)
    labels = alternating(12)
    rows = [(i, "Head" if v else "Not-Head") for i, v in enumerate(labels)]
    write_csv(tmp_path / "labels.csv", rows[::-1], header=("Frame Index", "Label"))
    for check_images in (False, True):
        scan, problems = load_scan(tmp_path, check_images=check_images)
        assert problems == []
        assert scan.video == tmp_path / "scan.avi" and scan.frame_files == () and scan.source == "video"
        assert scan.labels.tolist() == labels
        assert scan.frame_names == tuple(str(i) for i in range(12))
    frames = list(scan.iter_frames())
    assert len(frames) == 12 and frames[0].shape == (32, 48, 3) and frames[0].dtype == np.uint8
    np.testing.assert_array_equal(scan.read_frame(5), frames[5])
    with pytest.raises(IndexError):
        scan.read_frame(12)


def test_labels_xlsx_with_other_column_names_and_mixed_values(tmp_path):
    names = frame_names(6)
    write_images(tmp_path / "ImageData", names)
    values = ["Head", "not head", 1, 0, True, "no"]
    pd.DataFrame({" Image-Name ": [n.upper().removesuffix(".PNG") for n in names], "CLASS": values}).to_excel(
        tmp_path / "labels.xlsx", index=False)
    scan, problems = load_scan(tmp_path)
    assert problems == []
    assert scan.labels.tolist() == [1, 0, 1, 0, 1, 0]


def test_frame_names_match_with_or_without_extension_and_folder(tmp_path):
    write_images(tmp_path / "frames", ["A.png", "b.PNG", "c.jpg"])
    write_csv(tmp_path / "labels.csv", [("a", 1), ("frames/B.png", 0), ("C.JPG", 1)])
    scan, problems = load_scan(tmp_path)
    assert problems == []
    assert scan.labels.tolist() == [1, 0, 1]


def test_semicolon_csv_from_a_spreadsheet(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "labels.csv").write_text("\ufeffFile;Category\na.png;Head\nb.png;Not Head\n")
    scan, problems = load_scan(tmp_path)
    assert problems == [] and scan.labels.tolist() == [1, 0]


def test_scan_labels_are_read_only(tmp_path):
    scan = load_scan(write_scan(tmp_path, "s", alternating(3)))[0]
    with pytest.raises(ValueError):
        scan.labels[0] = 1


def test_iter_frames_reads_images_in_order(tmp_path):
    scan = load_scan(write_scan(tmp_path, "s", alternating(4), seed=7))[0]
    frames = list(scan.iter_frames())
    assert len(frames) == 4
    for k, frame in enumerate(frames):
        np.testing.assert_array_equal(frame, image(7000 + k))


# --- labels ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("Head", 1), ("head", 1), (" HEAD ", 1), ("Not-Head", 0), ("Not Head", 0), ("NotHead", 0),
    ("Not_Head", 0), ("not-head", 0), ("NOT HEAD", 0), ("1", 1), ("0", 0), ("1.0", 1), ("0.0", 0),
    ("true", 1), ("False", 0), ("YES", 1), ("no", 0), (1, 1), (0, 0), (1.0, 1), (0.0, 0),
    (True, 1), (False, 0), (np.int64(1), 1), (np.bool_(False), 0),
    ("", None), ("maybe", None), ("2", None), (2, None), (-1, None), (float("nan"), None), (None, None),
    ("heads", None),
])
def test_parse_label(value, expected):
    assert parse_label(value) == expected


@pytest.mark.parametrize("header, expected", [
    ("Frame", "frame"), ("  File Name ", "file_name"), ("Image-Name", "image_name"), ("frame  index", "frame_index"),
    ("LABEL", "label"), ("Frame - Index", "frame_index"),
])
def test_normalise_column(header, expected):
    assert normalise_column(header) == expected


@pytest.mark.parametrize("frame_col, label_col", [
    ("frame", "label"), ("File", "Class"), ("filename", "labels"), ("File Name", "Category"), ("image", "head"),
    ("Image Name", "label"), ("name", "label"), ("index", "label"), ("Frame-Index", "label"),
])
def test_read_labels_accepts_column_names(tmp_path, frame_col, label_col):
    path = write_csv(tmp_path / "labels.csv", [("a.png", "Head"), ("b.png", "Not-Head")], header=(frame_col, label_col))
    table = read_labels(path)
    assert list(table["frame"]) == ["a.png", "b.png"]
    assert table["label"].tolist() == [1, 0] and table["label"].dtype == np.int8


def test_read_labels_rows_are_spreadsheet_rows_and_unknown_values_are_minus_one(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("frame,label\na.png,Head\n\nb.png,maybe\n,\nc.png,0\n")
    table = read_labels(path)
    assert list(table["frame"]) == ["a.png", "b.png", "c.png"]
    assert table["label"].tolist() == [1, -1, 0]
    assert table["row"].tolist() == [2, 4, 6]
    assert list(table["value"]) == ["Head", "maybe", "0"]


def test_read_labels_keeps_leading_zeros(tmp_path):
    path = write_csv(tmp_path / "labels.csv", [("0001", 1), ("0002", 0)])
    assert list(read_labels(path)["frame"]) == ["0001", "0002"]


def test_read_labels_errors_name_the_file_and_the_problem(tmp_path):
    txt = tmp_path / "labels.txt"
    txt.write_text("a.png Head\n")
    with pytest.raises(DataError, match=r"labels\.txt: unknown label file format \.txt"):
        read_labels(txt)
    no_label = write_csv(tmp_path / "labels.csv", [("a.png", "x")], header=("frame", "comment"))
    with pytest.raises(DataError, match=r"labels\.csv: no label column \(columns: frame, comment"):
        read_labels(no_label)
    broken = tmp_path / "broken.csv"
    broken.write_text('frame,label\n"a.png,Head\nb.png,Head,extra,more\n')
    with pytest.raises(DataError, match=r"broken\.csv: cannot read as CSV"):
        read_labels(broken)
    fake = tmp_path / "fake.xlsx"
    fake.write_text("not a workbook")
    with pytest.raises(DataError, match=r"fake\.xlsx: cannot read as an Excel workbook"):
        read_labels(fake)
    with pytest.raises(DataError, match=r"missing\.csv: not found"):
        read_labels(tmp_path / "missing.csv")


# --- images ----------------------------------------------------------------------------------------

def test_read_image_16_bit_and_alpha(tmp_path):
    deep = np.array([[0, 256, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.tolist() == [[0, 1, 255]]
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 2] = 200
    cv2.imwrite(str(tmp_path / "alpha.png"), bgra)
    out = read_image(tmp_path / "alpha.png")
    assert out.shape == (4, 5, 3) and out[0, 0].tolist() == [0, 0, 200]


def test_read_image_errors_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"junk\.png: not a readable image"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(DataError, match=r"gone\.png: cannot read"):
        read_image(tmp_path / "gone.png")


# --- windows ---------------------------------------------------------------------------------------

def test_windows_never_cross_scans(tmp_path):
    lengths = [9, 12, 8, 15]
    for k, n in enumerate(lengths):
        write_scan(tmp_path, f"scan_{k}", alternating(n), seed=k)
    scans = load_dataset(tmp_path, window=8)
    assert [len(s) for s in scans] == lengths
    for scan in scans:
        w = windows(len(scan), 8)
        assert w.shape == (len(scan) - 7, 8)
        assert w.max() == len(scan) - 1  # the last frame of this scan, never one of the next


# --- datasets --------------------------------------------------------------------------------------

def test_scan_dirs_natural_order_and_errors(tmp_path):
    for name in ["scan10", "scan2", "scan1", ".hidden"]:
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in scan_dirs(tmp_path)] == ["scan1", "scan2", "scan10"]
    with pytest.raises(DataError, match="nowhere: not found"):
        scan_dirs(tmp_path / "nowhere")
    with pytest.raises(DataError, match="notes.txt: not a folder"):
        scan_dirs(tmp_path / "notes.txt")


def test_load_dataset_returns_scans_in_natural_order(tmp_path):
    for k in (10, 2, 1):
        write_scan(tmp_path, f"scan{k}", alternating(9), seed=k)
    scans = load_dataset(tmp_path)
    assert [s.name for s in scans] == ["scan1", "scan2", "scan10"]
    assert all(isinstance(s, Scan) for s in scans)


def test_load_dataset_leaves_short_scans_out_with_a_warning(tmp_path, caplog):
    write_scan(tmp_path, "long", alternating(10))
    write_scan(tmp_path, "short", alternating(5), seed=1)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        scans = load_dataset(tmp_path, window=8)
    assert [s.name for s in scans] == ["long"]
    assert "shorter than the window of 8" in caplog.text


def test_load_dataset_refuses_fatal_problems_and_lists_them(tmp_path):
    write_scan(tmp_path, "good", alternating(10))
    bad = write_scan(tmp_path, "bad", alternating(10), seed=1)
    (bad / "labels.csv").write_text("frame,label\n" + "\n".join(f"{n},Head" for n in frame_names(8)) + "\n")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{tmp_path}: 2 problems make the data unusable for training")
    assert lines[1].strip() == f"{bad / 'frames' / 'frame_0008.png'}: no label in labels.csv"
    assert lines[2].strip() == f"{bad / 'frames' / 'frame_0009.png'}: no label in labels.csv"


def test_problem_str():
    assert str(Problem(Path("a/labels.csv"), "unknown label 'x'", row=3)) == "a/labels.csv:row 3: unknown label 'x'"
    assert str(Problem(Path("a/f.png"), "empty file")) == "a/f.png: empty file"
