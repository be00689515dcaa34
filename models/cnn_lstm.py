"""The one model definition: feature extractor, temporal head, and the two composed.

The seed's CNN-LSTM, split where the project uses it separately::

    frames (B, T, S, S, 3) --extractor per frame--> (B, T, F)
        --LSTM 256 (rd 0.4) -> BN -> Dropout 0.4 -> LSTM 128 (rd 0.4) -> BN -> Dropout 0.4
        --Dense 64 relu -> Dropout 0.3 -> Dense 1 sigmoid--> scores (B, T)

Training caches the extractor's features and fits only the head; the streaming
worker runs the extractor once per frame and the head on a buffer of features.
Keras 3 ops only, so the same code runs on the TensorFlow, JAX and PyTorch backends.
``describe`` lists the composed model's layers for ``fetalhead model info``.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import layers

from models.backbones import build_backbone
from models.config import ModelConfig
from models.lstm import LSTM


def build_feature_extractor(config: ModelConfig, *, weights: str | None = None) -> keras.Model:
    """One preprocessed frame float32 (S, S, 3) -> float32 feature vector (F,); frozen."""
    return build_backbone(config, weights=weights)


def build_temporal_head(config: ModelConfig, feature_dim: int, *, inference: bool = False,
                        fixed_window: bool = False, lstm: type[keras.layers.LSTM] = LSTM,
                        name: str | None = None, members: int = 1) -> keras.Model:
    """Feature sequences float32 (B, T, F) -> per-frame Head probabilities float32 (B, T).

    T may be any length: the LSTMs are causal, so the score at position t
    depends only on positions 0..t. ``inference=True`` builds the same layers
    without recurrent dropout: identical weights and outputs at inference.
    ``fixed_window=True`` fixes T to ``config.window``, one input shape for a
    path compiled once. ``lstm`` is ``models.lstm.LSTM`` (Keras's LSTM with
    the input projection hoisted out of the time loop); ``keras.layers.LSTM``
    takes the same weights, for files that must load with Keras alone.
    ``members`` > 1 builds that many such stacks side by side on the same
    features and averages their scores: a trained bundle's fold heads
    (docs/calibration.md); their layers are named ``NAME_mI``.
    """
    inputs = keras.Input((config.window if fixed_window else None, feature_dim), name="features")
    if members == 1:
        outputs = _head_stack(config, inputs, inference, lstm, "")
    else:
        scores = [_head_stack(config, inputs, inference, lstm, f"_m{i}") for i in range(members)]
        outputs = layers.Average(name="mean_score")(scores)
    outputs = layers.Reshape((-1,), name="scores")(outputs)
    return keras.Model(inputs, outputs, name=name or ("temporal_head_inference" if inference else "temporal_head"))


def _head_stack(config: ModelConfig, inputs, inference: bool, lstm: type[keras.layers.LSTM], suffix: str):
    """The seed's head on ``inputs``: (B, T, F) -> (B, T, 1); layer names end in ``suffix``."""
    recurrent_dropout = 0.0 if inference else config.recurrent_dropout
    first, second = config.lstm_units
    seed = config.seed
    x = lstm(first, return_sequences=True, recurrent_dropout=recurrent_dropout, seed=seed,
             name=f"lstm_1{suffix}")(inputs)
    x = layers.BatchNormalization(name=f"bn_1{suffix}")(x)
    x = layers.Dropout(config.dropout, seed=seed, name=f"dropout_1{suffix}")(x)
    x = lstm(second, return_sequences=True, recurrent_dropout=recurrent_dropout, seed=seed + 1,
             name=f"lstm_2{suffix}")(x)
    x = layers.BatchNormalization(name=f"bn_2{suffix}")(x)
    x = layers.Dropout(config.dropout, seed=seed + 1, name=f"dropout_2{suffix}")(x)
    x = layers.Dense(config.dense_units, activation="relu", name=f"dense{suffix}")(x)
    x = layers.Dropout(config.head_dropout, seed=seed + 2, name=f"dropout_3{suffix}")(x)
    return layers.Dense(1, activation="sigmoid", name=f"score{suffix}")(x)


# The layers of one stack that hold weights, by their name in a single head.
_WEIGHTED = ("lstm_1", "bn_1", "lstm_2", "bn_2", "dense", "score")


def head_members(head: keras.Model) -> int:
    """How many stacks ``head`` (made by ``build_temporal_head``) averages."""
    names = {layer.name for layer in head.layers}
    return 1 if "score" in names else sum(1 for n in names if n.startswith("score_m"))


def ensemble_head(config: ModelConfig, heads: list[keras.Model]) -> keras.Model:
    """One head that averages the scores of ``heads`` (single heads of the same config), their weights copied."""
    feature_dim = int(heads[0].input_shape[-1])
    if len(heads) == 1:
        joined = build_temporal_head(config, feature_dim)
        joined.set_weights(heads[0].get_weights())
        return joined
    joined = build_temporal_head(config, feature_dim, members=len(heads))
    for i, head in enumerate(heads):
        for name in _WEIGHTED:
            joined.get_layer(f"{name}_m{i}").set_weights(head.get_layer(name).get_weights())
    return joined


def inference_head(head: keras.Model, config: ModelConfig) -> keras.Model:
    """A copy of ``head`` without recurrent dropout, sharing no state, same weights."""
    feature_dim = head.input_shape[-1]
    copy = build_temporal_head(config, feature_dim, inference=True, members=head_members(head))
    copy.set_weights(head.get_weights())
    return copy


def build_cnn_lstm(config: ModelConfig, extractor: keras.Model | None = None,
                   head: keras.Model | None = None) -> keras.Model:
    """Frames float32 (B, T, S, S, 3), preprocessed -> scores float32 (B, T).

    The end-to-end model, for export and for the seed's way of training; it
    shares layers (and so weights) with ``extractor`` and ``head`` when given.
    The B x T frames go through the extractor as one batch: Keras 3's
    TimeDistributed would call it once per time step, which for one clip is
    8 single frames, the slowest way through a CPU's convolutions.
    """
    extractor = extractor if extractor is not None else build_feature_extractor(config)
    feature_dim = extractor.output_shape[-1]
    head = head if head is not None else build_temporal_head(config, feature_dim)
    size, window = config.image_size, config.window
    frames = keras.Input((window, size, size, 3), name="frames")
    features = extractor(keras.ops.reshape(frames, (-1, size, size, 3)))
    return keras.Model(frames, head(keras.ops.reshape(features, (-1, window, feature_dim))), name="cnn_lstm")


def parameter_counts(model: keras.Model) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts of ``model``."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    frozen = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return trainable, frozen


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """The CNN-LSTM of a config, layer by layer: ``layers`` rows are (name, output shape, parameters)."""

    layers: list[tuple[str, str, int]]
    feature_dim: int
    trainable: int
    non_trainable: int


def describe(config: ModelConfig) -> ModelSummary:
    """Build the model of ``config`` and list its layers, feature size and parameter counts."""
    extractor = build_feature_extractor(config)
    model = build_cnn_lstm(config, extractor)
    head = model.layers[-1]
    feature_dim = int(extractor.output_shape[-1])
    size = config.image_size
    rows = [("frames", str((None, config.window, size, size, 3)), 0),
            (f"per-frame {extractor.name} (frozen, avg pool)", str((None, config.window, feature_dim)),
             int(extractor.count_params()))]
    rows += [(layer.name, str(layer.output.shape), int(layer.count_params())) for layer in head.layers[1:]]
    trainable, frozen = parameter_counts(model)
    return ModelSummary(rows, feature_dim, int(trainable), int(frozen))
