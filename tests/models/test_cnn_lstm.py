"""models.cnn_lstm: the seed's architecture, its pieces composed, the inference and fixed-window heads."""

import keras
import numpy as np

from models.backbones import FEATURE_SIZES
from models.cnn_lstm import (build_cnn_lstm, build_feature_extractor, build_temporal_head, describe, inference_head,
                             parameter_counts)
from models.config import ModelConfig


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


def test_every_backbone_builds_with_its_feature_size():
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


def test_describe_lists_every_layer_with_the_models_counts(tiny_config):
    summary = describe(tiny_config)
    trainable, frozen = parameter_counts(build_cnn_lstm(tiny_config))
    assert (summary.trainable, summary.non_trainable) == (trainable, frozen)
    assert summary.feature_dim == FEATURE_SIZES["tiny"]
    names = [name for name, _, _ in summary.layers]
    assert names[:2] == ["frames", "per-frame tiny (frozen, avg pool)"] and names[-1] == "scores"
    assert summary.layers[0] == ("frames", str((None, 8, 64, 64, 3)), 0)
    assert sum(parameters for _, _, parameters in summary.layers) == trainable + frozen
