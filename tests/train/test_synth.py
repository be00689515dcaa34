"""train.synth: deterministic phantom sweeps, their labels, and the dataset they write."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from models.errors import ConfigError
from tools.commands.synth import main
from train.data import check_dataset, load_dataset
from train.synth import Sweep, SynthConfig, synth_dataset, synthetic_frames

H, W = 96, 128


@pytest.fixture(scope="module")
def sweep():
    return Sweep(3, 60, H, W)


def test_frames_are_uint8_of_the_requested_size(sweep):
    frame = sweep.frame(0)
    assert frame.dtype == np.uint8 and frame.shape == (H, W)
    assert len(sweep) == 60 and sweep.labels.shape == (60,) and sweep.labels.dtype == np.int8


def test_deterministic_for_a_seed_in_any_order(sweep):
    again = Sweep(3, 60, H, W)
    np.testing.assert_array_equal(again.labels, sweep.labels)
    for i in (59, 0, 31):  # another order than the first sweep's
        np.testing.assert_array_equal(again.frame(i), sweep.frame(i))
    other = Sweep(4, 60, H, W)
    assert not np.array_equal(other.frame(0), sweep.frame(0))


def test_consecutive_frames_differ(sweep):
    frames = [sweep.frame(i) for i in range(5)]
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(frames))


@pytest.mark.parametrize("n_frames", [20, 60, 121])
def test_head_fraction_and_both_classes_in_every_sweep(n_frames):
    for seed in range(12):
        labels = Sweep(seed, n_frames, H, W).labels
        assert 0.2 <= labels.mean() <= 0.3, (seed, labels.mean())
        # One run of Head frames, with Not-Head frames before and after it.
        changes = np.flatnonzero(np.diff(labels))
        assert len(changes) == 2 and labels[0] == 0 and labels[-1] == 0, (seed, labels)


def test_head_fraction_setting():
    labels = Sweep(1, 100, H, W, head_fraction=(0.4, 0.5)).labels
    assert 0.4 <= labels.mean() <= 0.5


def test_fan_on_black_with_text_only_outside(sweep):
    outside = ~sweep.fan_mask
    assert 0.3 < sweep.fan_mask.mean() < 0.8
    frames = np.stack([sweep.frame(i) for i in range(0, 60, 7)])
    lit_outside = frames[:, outside] > 0
    assert 0.0 < lit_outside.mean() < 0.05  # burned-in text, nothing else
    # The text is the same in every frame, and it never touches the fan.
    assert (lit_outside == lit_outside[0]).all()
    text = np.zeros((H, W), bool)
    text[outside] = lit_outside[0]
    assert not (np.roll(text, 1, 0) & sweep.fan_mask).any() and not (np.roll(text, 1, 1) & sweep.fan_mask).any()
    # The scan area itself is lit (noise floor), so it reads as one region.
    assert (frames[:, sweep.fan_mask] > 0).mean() > 0.99


def test_head_frames_are_brighter_where_the_skull_is():
    s = Sweep(0, 60, H, W)
    head = np.flatnonzero(s.labels)
    middle = s.frame(int(head[len(head) // 2]))
    far = s.frame(0)
    # The skull ring is the brightest structure: many more saturated pixels inside the fan.
    assert (middle[s.fan_mask] > 200).sum() > 1.5 * (far[s.fan_mask] > 200).sum()


def test_sweep_validation():
    with pytest.raises(ValueError, match="n_frames must be >= 3, got 2"):
        Sweep(0, 2, H, W)
    with pytest.raises(IndexError):
        Sweep(0, 10, H, W).frame(10)


def test_synthetic_frames_is_an_endless_stream():
    stream = synthetic_frames(seed=2, height=H, width=W)
    items = list(itertools.islice(stream, 400))  # more than the longest sweep (180 frames)
    assert all(f.shape == (H, W) and f.dtype == np.uint8 for f, _ in items)
    labels = np.array([label for _, label in items])
    assert set(labels.tolist()) == {0, 1}


@pytest.mark.parametrize("field, value, message", [
    ("scans", 0, "scans: must be >= 1, got 0"), ("frames", 5, "frames: must be >= 10, got 5"),
    ("height", 10, "height: must be 64..2048, got 10"), ("width", 5000, "width: must be 64..2048"),
    ("video_fraction", 1.5, "video_fraction: must be in"), ("head_fraction", (0.3, 0.2), "head_fraction: must be"),
    ("seed", -1, "seed: must be >= 0"),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        SynthConfig(**{field: value})


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    config = SynthConfig(scans=5, frames=30, height=H, width=W, seed=7)
    return out, config, synth_dataset(out, config)


def test_written_dataset_layout(written):
    out, config, folders = written
    assert [f.name for f in folders] == [f"scan_{k:03d}" for k in range(5)]
    videos = [f for f in folders if (f / "scan.avi").exists()]
    assert len(videos) == 1  # 0.2 of 5 scans
    xlsx = [f for f in folders if (f / "labels.xlsx").exists()]
    assert len(xlsx) == 1 and not (xlsx[0] / "labels.csv").exists()
    image_scan = next(f for f in folders if f not in videos and f not in xlsx)
    assert sorted(p.name for p in (image_scan / "frames").iterdir())[:2] == ["frame_0000.png", "frame_0001.png"]
    table = pd.read_csv(image_scan / "labels.csv")
    assert list(table.columns) == ["frame", "label"] and set(table["label"]) == {"Head", "Not-Head"}
    assert pd.read_csv(videos[0] / "labels.csv")["frame"].tolist() == list(range(30))


def test_every_frame_written_is_reported_to_the_progress(tmp_path, recording_progress):
    config = SynthConfig(scans=3, frames=12, height=H, width=W)
    synth_dataset(tmp_path / "data", config, progress=recording_progress)
    (task,) = recording_progress.tasks
    assert (task.description, task.total, task.completed, task.closed) == ("synth", 36, 36, True)


def test_written_dataset_loads_and_passes_the_check(written):
    out, config, folders = written
    report = check_dataset(out, window=8)
    assert report.ok and report.problems == [], [str(p) for p in report.problems]
    scans = load_dataset(out, window=8)
    assert len(scans) == 5
    for k, scan in enumerate(scans):
        sweep = Sweep(np.random.default_rng((config.seed, k)), config.frames, H, W)
        np.testing.assert_array_equal(scan.labels, sweep.labels)
        assert 0.2 <= scan.labels.mean() <= 0.3


def test_written_frames_match_the_sweep(written):
    out, config, folders = written
    for k, scan in enumerate(load_dataset(out)):
        sweep = Sweep(np.random.default_rng((config.seed, k)), config.frames, H, W)
        frames = list(scan.iter_frames())
        assert len(frames) == config.frames
        if scan.video is None:
            np.testing.assert_array_equal(frames[3], sweep.frame(3))  # PNG is lossless
        else:
            # MJPG at quality 100: close, not exact, and read back as BGR.
            assert frames[3].shape == (H, W, 3)
            assert np.abs(frames[3][..., 0].astype(int) - sweep.frame(3)).mean() < 3


def test_main_writes_and_reports(capsys, tmp_path):
    out = tmp_path / "phantom"
    code = main([str(out), "--scans", "3", "--frames", "12", "--height", str(H), "--width", str(W), "--seed", "1"])
    assert code == 0
    text = capsys.readouterr().out
    assert f"wrote 3 scans (2 as PNG frames, 1 as MJPG video) of 12 frames {H}x{W} to {out}" in text
    assert "Head " in text and "Not-Head " in text
    assert check_dataset(out, window=4).ok


def test_main_refuses_a_non_empty_folder_and_bad_settings(capsys, tmp_path):
    (tmp_path / "taken.txt").write_text("x")
    assert main([str(tmp_path), "--scans", "1", "--frames", "10", "--height", str(H), "--width", str(W)]) == 1
    assert capsys.readouterr().err.strip() == f"fetalhead: error: {tmp_path}: already exists and is not an empty folder"
    assert main([str(tmp_path / "new"), "--frames", "5"]) == 1
    assert "frames: must be >= 10, got 5" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_main_reads_a_config_file_and_flags_override_it(capsys, tmp_path):
    config = tmp_path / "fh.toml"
    config.write_text(f"[synth]\nscans = 2\nframes = 40\nheight = {H}\nwidth = {W}\nvideo_fraction = 0.0\n")
    out = tmp_path / "data"
    assert main([str(out), "--config", str(config), "--frames", "10"]) == 0
    scans = load_dataset(out, window=4)
    assert [len(s) for s in scans] == [10, 10] and all(s.video is None for s in scans)
