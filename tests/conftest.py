"""Shared fixtures: small real models and frames, built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_config():
    from models.config import ModelConfig

    return ModelConfig(backbone="tiny", weights="none", image_size=64, window=8,
                       lstm_units=(16, 8), dense_units=8)


@pytest.fixture(scope="session")
def tiny_models(tiny_config):
    from models.cnn_lstm import build_feature_extractor, build_temporal_head

    extractor = build_feature_extractor(tiny_config)
    head = build_temporal_head(tiny_config, extractor.output_shape[-1])
    return extractor, head


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
