"""Frozen per-frame backbones: (S, S, 3) preprocessed image -> feature vector.

``imagenet`` weights come through Keras's own download cache
(``$KERAS_HOME/models``, default ``~/.keras/models``); a path loads a local
weights file; ``none`` leaves random weights (for tests, the demo and
``--train-backbone``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import keras
from keras import layers

from models.config import ModelConfig
from models.errors import WeightsError

# The files Keras fetches for include_top=False; named in the offline error.
IMAGENET_FILES = {
    "vgg19": "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "efficientnetb0": "efficientnetb0_notop.h5",
}

FEATURE_SIZES = {"vgg19": 512, "mobilenetv2": 1280, "efficientnetb0": 1280, "tiny": 64}

# Backbones whose single frames run faster compiled with XLA than through
# TensorFlow's oneDNN kernels on a CPU. For plain 3x3 convolution stacks XLA
# wins one frame at a time (VGG19: 187 against 238 ms on 2 cores) though
# oneDNN wins batches (154 ms a frame at 8); for depthwise convolutions XLA
# loses several-fold (MobileNetV2: 141 against 21 ms, EfficientNetB0: 217
# against 31 ms).
XLA_FRAME_BACKBONES = frozenset({"vgg19"})


def keras_cache_dir() -> Path:
    """Where Keras looks for downloaded weights (honours KERAS_HOME)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def load_weights_strict(model: keras.Model, path: str | Path) -> None:
    """``model.load_weights`` that fails instead of keeping some random weights.

    Keras only warns when a saved file lacks some of the model's layers and
    leaves those layers freshly initialised; a model that silently mixes
    trained and random weights must never reach a patient, so any such
    warning is an error here.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    for warning in caught:
        text = str(warning.message)
        if "Skipping" in text or "freshly-initialized" in text or "mismatch" in text.lower():
            raise ValueError(text.splitlines()[0])


def _tiny(config: ModelConfig) -> keras.Model:
    # No BatchNorm here: trained from a few hundred frames it overfits badly,
    # and frozen with random weights it adds nothing. Strided convolutions keep
    # it cheap at any image size.
    seed = config.seed
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = inputs
    for i, filters in enumerate((16, 32, 64)):
        x = layers.Conv2D(filters, 5 if i == 0 else 3, strides=2, padding="same", activation="relu",
                          kernel_initializer=keras.initializers.HeNormal(seed=seed + i),
                          name=f"tiny_conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"tiny_pool{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="tiny_gap")(x)
    return keras.Model(inputs, x, name="tiny")


def _application(config: ModelConfig, weights: str | None) -> keras.Model:
    shape = (config.image_size, config.image_size, 3)
    kwargs = dict(include_top=False, weights=weights, input_shape=shape, pooling="avg")
    if config.backbone == "vgg19":
        return keras.applications.VGG19(**kwargs)
    if config.backbone == "mobilenetv2":
        return keras.applications.MobileNetV2(**kwargs)
    if config.backbone == "efficientnetb0":
        return keras.applications.EfficientNetB0(**kwargs)
    raise ValueError(f"unknown backbone {config.backbone!r}")


def imagenet_file(config: ModelConfig) -> str:
    """The file name Keras caches the backbone's ImageNet weights under."""
    if config.backbone == "mobilenetv2":
        # MobileNetV2 has weights for five input sizes; Keras falls back to 224.
        rows = config.image_size if config.image_size in (96, 128, 160, 192, 224) else 224
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    return IMAGENET_FILES[config.backbone]


def _offline_message(config: ModelConfig) -> str:
    name = imagenet_file(config)
    return (f"ImageNet weights for {config.backbone} are not cached and cannot be downloaded: "
            f"put {name} in {keras_cache_dir()}/, or pass --weights PATH to a weights file, "
            f"or --weights none for random weights")


def build_backbone(config: ModelConfig, *, weights: str | None = None) -> keras.Model:
    """The frozen backbone with global average pooling: (S, S, 3) -> (F,).

    ``weights`` overrides ``config.weights`` ('imagenet', 'none' or a path).
    Raises WeightsError with one line saying what to do when weights are
    missing, unreadable or do not fit the architecture.
    """
    weights = config.weights if weights is None else weights
    if config.backbone == "tiny" and weights == "imagenet":
        raise WeightsError("backbone tiny has no ImageNet weights: use --weights none or a weights file")
    local = weights not in ("imagenet", "none")
    if local and not Path(weights).is_file():
        raise WeightsError(f"weights file {weights}: not found")
    try:
        if config.backbone == "tiny":
            model = _tiny(config)
        else:
            model = _application(config, "imagenet" if weights == "imagenet" else None)
        if local:
            load_weights_strict(model, weights)
    except WeightsError:
        raise
    except Exception as exc:  # Keras raises bare Exception/ValueError/OSError here
        text = str(exc)
        if weights == "imagenet" and ("URL fetch failure" in text or "Name or service" in text
                                      or "urlopen" in text.lower()):
            raise WeightsError(_offline_message(config)) from None
        if local:
            first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            raise WeightsError(f"weights file {weights}: cannot load into {config.backbone} "
                               f"at image size {config.image_size} ({first})") from None
        raise
    model.trainable = False
    return model
