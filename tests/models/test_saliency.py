"""LayerCAM against truths known by construction: the streaming scores, a hand-built extractor, the phantom's skull."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def runtime(tiny_config, tiny_models):
    from models.runtime import Runtime

    return Runtime(tiny_config, *tiny_models)


def _probe_runtime(config):
    """An extractor whose two features are the means of relu(brightness) and relu(-brightness)."""
    import keras

    from models.cnn_lstm import build_temporal_head
    from models.runtime import Runtime

    # The head's random weights decide the signs of its gradients: the same ones on every run.
    keras.utils.set_random_seed(7)
    inputs = keras.Input((config.image_size, config.image_size, 3))
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="probe_conv")
    x = keras.layers.GlobalAveragePooling2D()(conv(inputs))
    extractor = keras.Model(inputs, x, name="probe")
    conv.set_weights([np.array([[[[1.0, -1.0]] * 3]], np.float32) / 3, np.zeros(2, np.float32)])
    return Runtime(config, extractor, build_temporal_head(config, 2))


def _disc_frames(n: int, centre: tuple[int, int], grey: int, size: int = 64) -> list[np.ndarray]:
    """Mid-grey frames (0 after the tiny backbone's normalisation) with one disc of ``grey``."""
    import cv2

    frames = []
    for _ in range(n):
        frame = np.full((size, size), 128, np.uint8)
        cv2.circle(frame, centre, 6, grey, -1)
        frames.append(frame)
    return frames


def _feature_gradient(runtime, held: np.ndarray) -> np.ndarray:
    """d score / d features of the newest frame of ``held`` (W, F), by central differences."""
    grads = []
    for c in range(held.shape[1]):
        step = np.zeros_like(held)
        step[-1, c] = 1e-2
        up, down = (runtime.score_windows((held + s)[None].astype(np.float32))[0, -1] for s in (step, -step))
        grads.append((up - down) / 2e-2)
    return np.array(grads)


def test_scores_are_the_streaming_scores(runtime, tiny_config):
    from models.preprocess import preprocess_batch
    from models.saliency import LayerCam

    frames = [np.random.default_rng(i).integers(0, 255, (64, 80), dtype=np.uint8) for i in range(12)]
    images = preprocess_batch(frames, tiny_config)
    cam = LayerCam(runtime)
    # Frames before and after the first full window of 8, in one batch of mixed window lengths.
    indices = [0, 3, 7, 8, 11]
    saliency = cam.scan(images, indices, batch_size=3)
    expected = runtime.scan_scores(runtime.features(images))[indices]
    np.testing.assert_allclose(saliency.scores, expected, atol=1e-5)
    assert saliency.heat.shape == (5, *cam.grid) and cam.layer == "tiny_conv1+tiny_conv2" and cam.grid == (32, 32)
    assert saliency.heat.min() >= 0.0 and saliency.heat.max() <= 1.0
    for heat in saliency.heat:
        assert heat.max() == pytest.approx(1.0) or not heat.any()


def test_heat_is_layer_cam_by_finite_differences(tiny_config):
    """relu(sum_c relu(dscore/dA_c) * A_c), with the derivative measured numerically on the held window.

    The probe's features are the means of its map, so dscore/dA_c is dscore/dF_c over the cells, the same in each.
    """
    from models.preprocess import preprocess_batch
    from models.saliency import LayerCam

    runtime = _probe_runtime(tiny_config)
    frames = [np.random.default_rng(i).integers(0, 255, (64, 64), dtype=np.uint8) for i in range(10)]
    images = preprocess_batch(frames, tiny_config)
    features = runtime.features(images)
    t, window = 9, tiny_config.window
    grads = _feature_gradient(runtime, features[t - window + 1:t + 1].astype(np.float64))
    assert grads.max() > 0, "a head that no feature raises explains nothing"
    maps = np.maximum(np.stack([images[t].mean(-1), -images[t].mean(-1)], -1), 0)
    expected = np.maximum(maps @ np.maximum(grads, 0), 0)
    expected /= expected.max()
    heat = LayerCam(runtime).scan(images, [t]).heat[0]
    np.testing.assert_allclose(heat, expected, atol=0.02)


def test_layers_fuse_as_the_mean_of_each_layers_map(runtime, tiny_config):
    """Each layer's map normalised, the coarser resized to the finer grid, averaged, normalised again."""
    import cv2

    from models.preprocess import preprocess_batch
    from models.saliency import LayerCam

    frames = [np.random.default_rng(50 + i).integers(0, 255, (64, 64), dtype=np.uint8) for i in range(9)]
    images = preprocess_batch(frames, tiny_config)
    fused = LayerCam(runtime).scan(images, [4, 8])
    fine = LayerCam(runtime, ["tiny_conv1"]).scan(images, [4, 8])
    coarse = LayerCam(runtime, ["tiny_conv2"]).scan(images, [4, 8])
    assert fine.heat.shape == (2, 32, 32) and coarse.heat.shape == (2, 8, 8)
    for b in range(2):
        expected = fine.heat[b] + cv2.resize(coarse.heat[b], (32, 32), interpolation=cv2.INTER_LINEAR)
        assert expected.max() > 0
        np.testing.assert_allclose(fused.heat[b], expected / expected.max(), atol=1e-4)
    np.testing.assert_allclose(fused.scores, fine.scores, atol=1e-6)


def test_map_layers_take_the_two_coarsest_stages_of_4_cells_or_more():
    import keras

    from models.saliency import map_layers

    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="a1")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="a2")(x)
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", name="b")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="c")(x)
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", name="d")(x)
    assert map_layers(keras.Model(inputs, x)) == ("b", "c")
    assert map_layers(keras.Model(inputs, x), stages=3) == ("a2", "b", "c")
    tiny = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, strides=4, padding="same", name="small")(tiny)
    assert map_layers(keras.Model(tiny, keras.layers.Conv2D(4, 1, strides=2, name="smaller")(y))) == ("small",)


def test_peak_finds_the_only_evidence(tiny_config):
    """The disc is the only evidence: bright where brightness raises the score, else dark. The heat peaks on it."""
    from models.preprocess import preprocess_batch
    from models.saliency import LayerCam, overlay, peak, to_frame

    runtime = _probe_runtime(tiny_config)
    grey = _disc_frames(8, (44, 18), 128)
    grads = _feature_gradient(runtime, runtime.features(preprocess_batch(grey, tiny_config)).astype(np.float64))
    assert grads.max() > 0
    frames = _disc_frames(8, (44, 18), 250 if grads[0] > 0 else 0)
    images = preprocess_batch(frames, tiny_config)
    heat = LayerCam(runtime).scan(images, [7]).heat[0]
    x, y = peak(heat, frames[7], tiny_config)
    assert np.hypot(x - 44, y - 18) <= 6
    laid = to_frame(heat, frames[7], tiny_config)
    assert laid.shape == (64, 64) and laid[18, 44] == laid.max() > 0
    picture = overlay(frames[7], heat, tiny_config)
    assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8


def test_peak_maps_through_roi_and_padding(tiny_config):
    """A wide frame with a scan area: the grid lies over the cropped, centred square, not the whole frame."""
    import dataclasses

    from models.saliency import overlay, peak, to_frame

    config = dataclasses.replace(tiny_config, roi="10,20,80,40")
    frame = np.full((100, 120), 90, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[5, 0] = 1.0
    # The 80x40 box pads to an 80x80 square with 20 rows above it; cell (5, 0) spans the square's rows 50..60.
    assert peak(heat, frame, config) == pytest.approx((10 + 5.0, 20 + 55.0 - 20))
    laid = to_frame(heat, frame, config)
    assert laid[55, 15] > 0.5 and not laid[:20].any() and not laid[:, :10].any() and not laid[60:].any()
    # Where the heat is 0 the frame shows through unchanged.
    picture = overlay(frame, heat, config)
    cold = laid == 0
    assert cold.any() and np.array_equal(picture[cold], np.full((int(cold.sum()), 3), 90, np.uint8))


def test_bad_inputs_name_what_is_wrong(runtime):
    from models.errors import ConfigError
    from models.saliency import LayerCam

    with pytest.raises(ConfigError, match="no layer 'nope'"):
        LayerCam(runtime, ["tiny_conv1", "nope"])
    cam = LayerCam(runtime)
    with pytest.raises(ValueError, match="positions must be in 0..7"):
        cam.maps(np.zeros((1, 64, 64, 3), np.float32), np.zeros((1, 8, 64), np.float32), [8])
    with pytest.raises(ValueError, match="as many"):
        cam.maps(np.zeros((2, 64, 64, 3), np.float32), np.zeros((1, 8, 64), np.float32), [0])


def test_vgg19_architecture_explains_one_frame():
    """The VGG19 path (random weights, 224x224): block4_conv4's 28x28 grid fused with block5_conv4, the runtime's score."""
    from models.cnn_lstm import build_feature_extractor, build_temporal_head
    from models.config import ModelConfig
    from models.preprocess import preprocess
    from models.runtime import Runtime
    from models.saliency import LayerCam

    config = ModelConfig(backbone="vgg19", weights="none", window=2, lstm_units=(8, 4), dense_units=4)
    extractor = build_feature_extractor(config)
    runtime = Runtime(config, extractor, build_temporal_head(config, 512))
    image = preprocess(np.random.default_rng(0).integers(0, 255, (240, 320), dtype=np.uint8), config)[None]
    cam = LayerCam(runtime)
    saliency = cam.scan(image, [0])
    assert cam.layer == "block4_conv4+block5_conv4" and saliency.heat.shape == (1, 28, 28)
    np.testing.assert_allclose(saliency.scores, runtime.scan_scores(runtime.features(image)), atol=1e-5)


def test_explain_command_writes_overlays_and_csv(tmp_path, tiny_config, tiny_models, capsys):
    """``fetalhead explain`` on a phantom scan folder: one PNG per chosen frame, the CSV's scores are the stream's."""
    import csv

    import cv2

    from models.bundle import save
    from models.runtime import Runtime
    from tools.commands.explain import main
    from train.synth import SynthConfig, synth_dataset

    bundle = save(tmp_path / "tiny.fhb", tiny_config, *tiny_models, threshold=0.5)
    scan = synth_dataset(tmp_path / "scans", SynthConfig(scans=1, frames=12, height=72, width=96, seed=2))[0]
    assert main([str(bundle), str(scan), "--out", str(tmp_path / "out"), "--frames", "5", "--no-progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "saliency.csv").open()))
    assert [int(r["frame"]) for r in rows] == [0, 5, 10]
    frames = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((scan / "frames").iterdir())]
    runtime = Runtime(tiny_config, *tiny_models)
    expected = runtime.scan_scores(runtime.frame_features(frames))
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected[[0, 5, 10]], atol=1e-5)
    for row in rows:
        picture = cv2.imread(str(tmp_path / "out" / row["png"]))
        assert picture.shape == (72, 96, 3)
        assert 0 <= float(row["peak_x"]) < 96 and 0 <= float(row["peak_y"]) < 72
    assert "explained 3 of 12 frames" in capsys.readouterr().out


def test_explain_command_says_what_is_wrong(tmp_path, tiny_config, tiny_models, capsys):
    from models.bundle import save
    from tools.commands.explain import main

    bundle = save(tmp_path / "tiny.fhb", tiny_config, *tiny_models)
    assert main([str(bundle), str(tmp_path / "missing.avi"), "--out", str(tmp_path / "out")]) == 1
    assert main([str(bundle), str(tmp_path), "--out", str(tmp_path / "out"), "--frames", "often"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "missing.avi: not found" in lines[0] and "'often' is not head, all" in lines[1]


@pytest.mark.slow
def test_heat_peaks_on_the_skull_of_unseen_phantom_sweeps(tmp_path):
    """A tiny model trained on 16 phantom scans: most Head frames of sweeps it never saw peak inside the skull.

    The study's default training (``python -m tools.saliency_study``, 87.7 % on 8 sweeps), measured on 4.
    """
    from models.saliency import LayerCam
    from tools.saliency_study import head_hits, train_phantom, unseen_sweeps

    runtime = train_phantom(tmp_path, scans=16, frames=80, epochs=20, image_size=64)
    hits = head_hits(LayerCam(runtime), runtime.config, unseen_sweeps(4))
    assert hits.frames > 50
    assert hits.fraction > 0.5 and hits.fraction > 2 * hits.area_share, hits
