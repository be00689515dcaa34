"""Training on files that break during extraction: ``fetalhead train`` stops in one line naming the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tools.commands.train import main
FLAGS = ["--backbone", "tiny", "--weights", "none", "--image-size", "48", "--folds", "2", "--epochs", "1",
         "--no-progress"]


def write_scan(folder: Path, frames: int, *, video: bool = False) -> None:
    """A scan of real image (or MJPG video) files and labels.csv, alternating Head and Not-Head in runs of 4."""
    rng = np.random.default_rng(len(folder.name))
    images = [rng.integers(0, 255, (40, 48, 3), np.uint8) for _ in range(frames)]
    folder.mkdir(parents=True)
    if video:
        writer = cv2.VideoWriter(str(folder / "scan.avi"), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"),
                                 25.0, (48, 40), True)
        for image in images:
            writer.write(image)
        writer.release()
        names = [str(i) for i in range(frames)]
    else:
        (folder / "frames").mkdir()
        names = [f"frame_{i:03d}.png" for i in range(frames)]
        for name, image in zip(names, images):
            assert cv2.imwrite(str(folder / "frames" / name), image)
    labels = ["Head" if (i // 4) % 2 else "Not-Head" for i in range(frames)]
    pd.DataFrame({"frame": names, "label": labels}).to_csv(folder / "labels.csv", index=False)


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    write_scan(root / "scan_a", 16)
    write_scan(root / "scan_b", 16)
    write_scan(root / "scan_c", 24, video=True)
    return root


def run_train(capsys, dataset: Path, tmp_path: Path) -> tuple[int, str]:
    code = main([str(dataset), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), *FLAGS])
    return code, capsys.readouterr().err.strip()


def test_an_image_that_cannot_be_read_during_extraction_stops_training_naming_it(capsys, dataset, tmp_path):
    # Not empty, so the quick check before training lets it through; decoding it fails.
    bad = dataset / "scan_b" / "frames" / "frame_009.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    code, err = run_train(capsys, dataset, tmp_path)
    assert code == 1
    assert err == f"fetalhead: error: {bad}: not a readable image"
    assert not (tmp_path / "run" / "model.fhb").exists()


def test_a_video_that_breaks_during_extraction_stops_training_naming_it(capsys, dataset, tmp_path):
    video = dataset / "scan_c" / "scan.avi"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) * 2 // 3])
    code, err = run_train(capsys, dataset, tmp_path)
    assert code == 1 and "\n" not in err
    assert err.startswith(f"fetalhead: error: {video}: ended after ") and err.endswith(" of 24 frames")


def test_a_label_file_in_an_unknown_format_is_named(capsys, dataset, tmp_path):
    labels = dataset / "scan_a" / "labels.csv"
    labels.rename(labels.with_name("labels.json"))
    code, err = run_train(capsys, dataset, tmp_path)
    assert code == 1
    assert f"{dataset / 'scan_a' / 'labels.json'}: unknown label file format .json; use labels.csv or " \
           f"labels.xlsx" in err
