"""models.backbones: local weights files, and one-line errors for weights that cannot be had."""

import numpy as np
import pytest

from models.backbones import build_backbone, keras_cache_dir
from models.config import ModelConfig
from models.errors import WeightsError


# A seed other than the target config's: the weights must come from the file, not the initialisation.
@pytest.mark.parametrize(("backbone", "size", "atol"), [("tiny", 64, 1e-6), ("mobilenetv2", 96, 1e-5)])
def test_local_weights_file_loads(tmp_path, rng, backbone, size, atol):
    source = build_backbone(ModelConfig(backbone=backbone, weights="none", image_size=size, seed=7))
    path = tmp_path / f"{backbone}.weights.h5"
    source.save_weights(path)
    loaded = build_backbone(ModelConfig(backbone=backbone, weights="none", image_size=size), weights=str(path))
    images = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(images), source.predict_on_batch(images), atol=atol)

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
