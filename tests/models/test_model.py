import keras
import numpy as np
import pytest

from models.backbones import build_backbone, keras_cache_dir
from models.cnn_lstm import (build_cnn_lstm, build_feature_extractor, build_temporal_head, inference_head,
                             parameter_counts)
from models.config import ModelConfig
from models.errors import WeightsError
from models.runtime import Runtime
from models.scoring import RollingWindow, streaming_scores, window_scores


def test_vgg19_cnn_lstm_has_the_seeds_parameter_count():
    config = ModelConfig(weights="none")
    model = build_cnn_lstm(config)
    trainable, frozen = parameter_counts(model)
    assert trainable == 993_665
    assert frozen == 20_024_384 + 768  # VGG19 conv weights + BatchNorm moving statistics
    assert model.input_shape == (None, 8, 224, 224, 3)
    assert model.output_shape == (None, 8)
    assert model.get_layer("temporal_head").input.shape == (None, None, 512)
    # The clip's frames go through the backbone as one batch, not one call per time step.
    assert model.get_layer("vgg19").input.shape == (None, 224, 224, 3)
    assert not any(isinstance(layer, keras.layers.TimeDistributed) for layer in model.layers)


def test_pieces_and_composition_agree(tiny_config, tiny_models, rng):
    extractor, head = tiny_models
    frames = rng.normal(size=(2, 8, 64, 64, 3)).astype(np.float32)
    model = build_cnn_lstm(tiny_config, extractor, head)
    end_to_end = model.predict_on_batch(frames)
    features = extractor.predict_on_batch(frames.reshape(16, 64, 64, 3)).reshape(2, 8, -1)
    np.testing.assert_allclose(end_to_end, head.predict_on_batch(features), atol=1e-6)
    assert not extractor.trainable


def test_inference_head_matches_training_head_and_is_causal(tiny_config, tiny_models, rng):
    _, head = tiny_models
    fast = inference_head(head, tiny_config)
    assert all(layer.recurrent_dropout == 0 for layer in fast.layers if hasattr(layer, "recurrent_dropout"))
    features = rng.normal(size=(3, 8, head.input_shape[-1])).astype(np.float32)
    full = head.predict_on_batch(features)
    np.testing.assert_allclose(fast.predict_on_batch(features), full, atol=1e-6)
    # Causal: a prefix of the window scores its positions exactly as the full window does.
    for length in (1, 4, 7):
        np.testing.assert_allclose(fast.predict_on_batch(features[:, :length]), full[:, :length], atol=1e-6)


def test_streaming_scores_are_the_last_position_of_each_window(tiny_config, tiny_models, rng):
    runtime = Runtime(tiny_config, *tiny_models)
    features = rng.normal(size=(20, runtime.feature_dim)).astype(np.float32)
    scores = runtime.scan_scores(features)
    windows = window_scores(features, runtime.score_windows, 8)
    assert windows.shape == (13, 8)
    np.testing.assert_allclose(scores[7:], windows[:, -1], atol=1e-6)
    np.testing.assert_allclose(scores[:7], windows[0, :7], atol=1e-6)
    # The worker's incremental view gives the same scores.
    rolling = RollingWindow(8, runtime.feature_dim)
    live = []
    for seq, row in enumerate(features):
        rolling.push(row, seq)
        live.append(runtime.score_windows(rolling.view()[None])[0, -1])
    np.testing.assert_allclose(live, scores, atol=1e-5)
    # A scan shorter than the window still gets a score per frame.
    assert runtime.scan_scores(features[:5]).shape == (5,)
    np.testing.assert_allclose(streaming_scores(features, runtime.score_windows, 8, batch_size=3), scores, atol=1e-6)


def test_rolling_window_tracks_warmup_and_gaps():
    window = RollingWindow(3, 2)
    window.push(np.ones(2), 0)
    assert window.warming_up and len(window) == 1
    window.push(np.ones(2), 1)
    window.push(np.ones(2) * 2, 2)
    assert not window.warming_up and not window.has_gap
    window.push(np.ones(2) * 5, 4)
    assert window.has_gap
    np.testing.assert_array_equal(window.view()[:, 0], [1, 2, 5])
    for seq in (5, 6):
        window.push(np.zeros(2), seq)
    assert not window.has_gap


def test_local_weights_file_loads(tmp_path, tiny_config, rng):
    source = build_backbone(ModelConfig(backbone="tiny", weights="none", image_size=64, seed=7))
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    loaded = build_backbone(tiny_config, weights=str(path))
    images = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(images), source.predict_on_batch(images), atol=1e-6)


def test_local_weights_file_for_a_keras_application(tmp_path, rng):
    config = ModelConfig(backbone="mobilenetv2", weights="none", image_size=96)
    source = build_backbone(config)
    path = tmp_path / "mobilenetv2.weights.h5"
    source.save_weights(path)
    loaded = build_backbone(config, weights=str(path))
    images = rng.normal(size=(1, 96, 96, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(images), source.predict_on_batch(images), atol=1e-5)


def test_weights_errors_are_one_line(tmp_path, tiny_config):
    with pytest.raises(WeightsError, match="not found"):
        build_backbone(tiny_config, weights=str(tmp_path / "missing.weights.h5"))
    other = build_backbone(ModelConfig(backbone="mobilenetv2", weights="none", image_size=96))
    path = tmp_path / "mobilenet.weights.h5"
    other.save_weights(path)
    with pytest.raises(WeightsError) as info:
        build_backbone(tiny_config, weights=str(path))
    assert f"weights file {path}: cannot load into tiny" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(WeightsError, match="tiny has no ImageNet weights"):
        build_backbone(ModelConfig(backbone="tiny", weights="imagenet"))


def test_offline_imagenet_says_which_file_to_put_where(tmp_path, monkeypatch):
    # This machine has no internet, so Keras's real download fails here as it does offline.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    config = ModelConfig(backbone="mobilenetv2", image_size=96)
    try:
        build_backbone(config)
    except WeightsError as exc:
        message = str(exc)
    else:
        pytest.skip("ImageNet weights could be downloaded: this machine is online")
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5" in message
    assert str(keras_cache_dir()) == str(tmp_path / "models")
    assert str(tmp_path / "models") in message
    assert "--weights" in message


def test_every_backbone_builds_with_its_feature_size():
    from models.backbones import FEATURE_SIZES

    for name, size in FEATURE_SIZES.items():
        extractor = build_feature_extractor(ModelConfig(backbone=name, weights="none", image_size=64))
        assert extractor.output_shape == (None, size)
        head = build_temporal_head(ModelConfig(backbone=name), size)
        assert head.output_shape == (None, None)


def test_fixed_window_and_keras_lstm_heads_take_the_same_weights_and_give_the_same_scores(tiny_config, tiny_models,
                                                                                           rng):
    _, head = tiny_models
    fixed = build_temporal_head(tiny_config, head.input_shape[-1], fixed_window=True, name="head_fixed")
    fixed.set_weights(head.get_weights())
    assert fixed.input_shape == (None, tiny_config.window, head.input_shape[-1])
    assert fixed.name == "head_fixed"
    stock = build_temporal_head(tiny_config, head.input_shape[-1], lstm=keras.layers.LSTM)
    stock.set_weights(head.get_weights())
    assert [type(layer) for layer in stock.layers if isinstance(layer, keras.layers.LSTM)] == [keras.layers.LSTM] * 2
    features = rng.normal(size=(3, tiny_config.window, head.input_shape[-1])).astype(np.float32)
    expected = head.predict_on_batch(features)
    np.testing.assert_allclose(fixed.predict_on_batch(features), expected, atol=1e-6)
    np.testing.assert_allclose(stock.predict_on_batch(features), expected, atol=1e-6)


def test_single_frames_through_the_xla_extractor_give_the_batched_features(tiny_config, tiny_models, rng):
    images = rng.normal(size=(3, 64, 64, 3)).astype(np.float32)
    plain = Runtime(tiny_config, *tiny_models)
    assert not plain.frame_xla and plain.frame_extractor is plain.extractor
    compiled = Runtime(tiny_config, *tiny_models, frame_xla=True)
    batched = compiled.features(images)
    singles = np.concatenate([compiled.features(image[None]) for image in images])
    if keras.backend.backend() == "tensorflow":
        assert compiled.frame_extractor is not compiled.extractor
        assert compiled.frame_extractor.jit_compile
    np.testing.assert_allclose(singles, batched, rtol=1e-5, atol=1e-5)


def test_warm_up_traces_without_tensorflows_retracing_warning(tiny_config, tiny_models, caplog):
    """Its traces are intended; TensorFlow counts them across models and would warn at the fifth."""
    for _ in range(2):
        with caplog.at_level("WARNING"):
            Runtime(tiny_config, *tiny_models).warm_up()
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def test_after_warm_up_no_batch_size_traces_again(tiny_config):
    """The single-frame and batched paths are traced for any size, with XLA single frames too."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("counts TensorFlow traces")
    size = tiny_config.image_size
    for frame_xla in (False, True):
        # Fresh models: the shared ones' functions have seen other tests' shapes.
        extractor = build_feature_extractor(tiny_config)
        head = build_temporal_head(tiny_config, extractor.output_shape[-1])
        runtime = Runtime(tiny_config, extractor, head, frame_xla=frame_xla)
        runtime.warm_up()
        functions = [runtime.extractor.predict_function, runtime.frame_extractor.predict_function,
                     runtime.head.predict_function, runtime.step_head.predict_function]
        traced = [f.experimental_get_tracing_count() for f in functions]
        for n in (1, 3, 5, 16):
            runtime.features(np.zeros((n, size, size, 3), np.float32))
        features = np.zeros((3, runtime.feature_dim), np.float32)
        for n in (1, 4, 7):
            runtime.score_newest([features] * n)
        assert [f.experimental_get_tracing_count() for f in functions] == traced
