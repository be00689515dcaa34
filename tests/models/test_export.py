"""models.export: the three formats load and give the Keras scores; the ONNX pieces run the rolling buffer."""

from collections import deque

import numpy as np
import pytest

from models.bundle import load, save
from models.errors import ConfigError
from models.export import CHOICES, KERAS, ONNX, SAVED_MODEL, export, export_format, piece_path
from models.preprocess import preprocess_batch

ATOL = 1e-4
FRAMES = 13  # longer than the window of 8: the buffer fills, then rolls


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_config):
    import keras

    from models.cnn_lstm import build_feature_extractor, build_temporal_head

    # Seeded, and the head's weights moved off their initial values: freshly initialised, a head scores
    # every frame about alike, and agreement between such scores would prove little.
    keras.utils.set_random_seed(11)
    extractor = build_feature_extractor(tiny_config)
    head = build_temporal_head(tiny_config, extractor.output_shape[-1])
    rng = np.random.default_rng(7)
    head.set_weights([np.abs(w) + 0.5 if "variance" in v.path else w + rng.normal(0, 0.5, w.shape).astype(w.dtype)
                      for v, w in zip(head.weights, head.get_weights())])
    path = save(tmp_path_factory.mktemp("bundle") / "model.fhb", tiny_config, extractor, head, threshold=0.42)
    return load(path)


@pytest.fixture(scope="module")
def images(bundle):
    """Preprocessed float32 (FRAMES, S, S, 3): a bright disc moving over speckle."""
    import cv2

    rng = np.random.default_rng(3)
    frames = []
    for i in range(FRAMES):
        frame = rng.integers(0, 60, (90, 120), dtype=np.uint8)
        cv2.circle(frame, (15 + 7 * i, 45), 14 + i % 5, 220, -1)
        frames.append(frame)
    return preprocess_batch(frames, bundle.config)


def keras_scores(bundle, clips: np.ndarray) -> np.ndarray:
    """What ``models.runtime`` gives for preprocessed clips (B, W, S, S, 3): scores (B, W)."""
    runtime = bundle.runtime()
    size = bundle.config.image_size
    features = runtime.features(clips.reshape(-1, size, size, 3)).reshape(len(clips), clips.shape[1], -1)
    return runtime.score_windows(features)


def onnx_session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path, clips):
    return onnx_session(path).run(["scores"], {"frames": clips})[0]


def run_saved_model(path, clips):
    import tensorflow as tf

    # Held in a name: the endpoint refers to the loaded object's variables, which die with it.
    loaded = tf.saved_model.load(str(path))
    return loaded.serve(clips).numpy()


def run_keras(path, clips):
    import keras

    return keras.saving.load_model(path).predict_on_batch(clips)


@pytest.mark.parametrize(("name", "run"), [("model.onnx", run_onnx), ("model.savedmodel", run_saved_model),
                                           ("model.keras", run_keras)], ids=["onnx", "savedmodel", "keras"])
def test_every_format_loads_back_and_gives_the_keras_scores(bundle, images, tmp_path, name, run):
    clips = np.stack([images[:8], images[5:]])
    [path] = export(bundle, tmp_path / name)
    assert path == tmp_path / name and path.exists()
    scores = run(path, clips)
    expected = keras_scores(bundle, clips)
    assert scores.shape == (2, 8) and np.ptp(expected) > 0.1  # scores that differ, so agreement means something
    np.testing.assert_allclose(scores, expected, atol=ATOL)


def test_the_onnx_model_names_its_input_and_output_and_carries_the_model_settings(bundle, tmp_path):
    import onnx

    [path] = export(bundle, tmp_path / "model.onnx")
    session = onnx_session(path)
    [frames], [scores] = session.get_inputs(), session.get_outputs()
    assert (frames.name, frames.shape, frames.type) == ("frames", ["batch", 8, 64, 64, 3], "tensor(float)")
    assert (scores.name, scores.shape) == ("scores", ["batch", 8])
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["fetalhead.backbone"] == "tiny" and meta["fetalhead.window"] == "8"
    assert meta["fetalhead.image_size"] == "64" and float(meta["fetalhead.threshold"]) == pytest.approx(0.42)
    assert meta["fetalhead.model_id"] == bundle.model_id


def test_the_onnx_pieces_run_as_a_rolling_buffer_give_the_workers_streaming_scores(bundle, images, tmp_path):
    extractor_path, head_path = export(bundle, tmp_path / "model.onnx", pieces=True)
    assert (extractor_path.name, head_path.name) == ("model-extractor.onnx", "model-head.onnx")
    assert not (tmp_path / "model.onnx").exists()
    extractor, head = onnx_session(extractor_path), onnx_session(head_path)
    window = bundle.config.window
    # The device's loop of docs/export.md: one frame in, its features into the buffer, the head over the
    # buffer zero-padded at the end to the window, the score at the newest frame's position.
    buffer: deque[np.ndarray] = deque(maxlen=window)
    scores = []
    for image in images:
        [features] = extractor.run(["features"], {"frames": image[None]})[0]
        buffer.append(features)
        batch = np.zeros((1, window, len(features)), np.float32)
        batch[0, :len(buffer)] = np.stack(buffer)
        scores.append(head.run(["scores"], {"features": batch})[0][0, len(buffer) - 1])
    runtime = bundle.runtime()
    features = runtime.features(images)
    np.testing.assert_allclose(extractor.run(["features"], {"frames": images})[0], features, atol=ATOL)
    np.testing.assert_allclose(scores, runtime.scan_scores(features), atol=ATOL)


def test_a_savedmodel_folder_is_named_by_a_trailing_slash_or_no_extension(bundle, tmp_path):
    clips = np.zeros((1, 8, 64, 64, 3), np.float32)
    [path] = export(bundle, f"{tmp_path}/plain/", pieces=False)
    assert path.is_dir() and (path / "saved_model.pb").exists()
    np.testing.assert_allclose(run_saved_model(path, clips), keras_scores(bundle, clips), atol=ATOL)


@pytest.mark.parametrize(("out", "kind"), [("m.keras", KERAS), ("m.ONNX", ONNX), ("m.savedmodel", SAVED_MODEL),
                                           ("m/", SAVED_MODEL), ("exports/m", SAVED_MODEL)])
def test_the_extension_names_the_format(out, kind):
    assert export_format(out) == kind


@pytest.mark.parametrize("out", ["m.h5", "m.pt", "m.tflite", "model.v2"])
def test_an_unknown_extension_is_one_line_naming_the_choices(bundle, tmp_path, out):
    with pytest.raises(ConfigError) as caught:
        export(bundle, tmp_path / out)
    message = str(caught.value)
    assert message == f"export {tmp_path / out}: unknown format {'.' + out.split('.')[-1]!r}: write {CHOICES}"
    assert "\n" not in message and list(tmp_path.iterdir()) == []


def test_pieces_take_the_outputs_extension():
    assert str(piece_path("out/m.onnx", "head")) == "out/m-head.onnx"
    assert str(piece_path("out/m/", "extractor")) == "out/m-extractor"
    assert str(piece_path("m.savedmodel", "extractor")) == "m-extractor.savedmodel"


def test_fetalhead_model_export_pieces_writes_both(bundle, tmp_path, capsys):
    from tools.commands.model import main

    assert main(["export", str(bundle.path), str(tmp_path / "m.onnx"), "--pieces"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'm-extractor.onnx'}: frames (N, 64, 64, 3)" in out
    assert f"wrote {tmp_path / 'm-head.onnx'}: features (batch, 8, 64) -> scores (batch, 8)" in out


@pytest.mark.slow
def test_a_vgg19_bundle_exports_to_onnx_with_the_keras_scores(tmp_path, rng):
    from models.cnn_lstm import build_feature_extractor, build_temporal_head
    from models.config import ModelConfig

    # The architecture at a small image size: the same layers to convert as at 224, a fraction of the compute.
    config = ModelConfig(backbone="vgg19", weights="none", image_size=64, window=8)
    extractor = build_feature_extractor(config)
    vgg = load(save(tmp_path / "vgg19.fhb", config, extractor, build_temporal_head(config, extractor.output_shape[-1])))
    clips = rng.normal(0, 60, (1, 8, 64, 64, 3)).astype(np.float32)
    [path] = export(vgg, tmp_path / "vgg19.onnx")
    np.testing.assert_allclose(run_onnx(path, clips), keras_scores(vgg, clips), atol=ATOL)
