"""models.runtime: the compiled single-frame path gives the batched features, and warm-up traces once."""

import keras
import numpy as np
import pytest

from models.cnn_lstm import build_feature_extractor, build_temporal_head
from models.runtime import Runtime


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
