"""Compiled inference paths shared by evaluation, the worker and the benchmark.

``model.predict`` costs 70-100 ms of set-up per call here, which a per-frame
path cannot afford. ``predict_on_batch`` runs the backend's compiled function
(a traced tf.function, a jitted JAX function) with a few milliseconds of
overhead, so every call goes through it. The head used for inference is the
copy without recurrent dropout (see ``inference_head``). A bundle's
calibration, when it has one, is applied to every score here, so the worker,
evaluation, ``run`` and ``record`` all see the same calibrated scores.
"""

from __future__ import annotations

import functools
import logging
from typing import Iterable, Sequence

import keras
import numpy as np

from models.backbones import XLA_FRAME_BACKBONES
from models.calibration import Calibration
from models.cnn_lstm import build_temporal_head, head_members, inference_head
from models.config import ModelConfig
from models.preprocess import preprocess, preprocess_batch
from models.scoring import newest_scores, streaming_scores


class Runtime:
    """A feature extractor and a temporal head ready to score frames.

    extractor: (S, S, 3) -> (F,) model; head: (T, F) -> (T,) model (either the
    training head or its inference copy; the copy is made here). ``frame_xla``
    runs single frames through the extractor compiled with XLA; None decides
    by backbone (``models.backbones.XLA_FRAME_BACKBONES``). ``calibration``
    maps the head's scores to calibrated ones (None: the head's own scores).
    """

    def __init__(self, config: ModelConfig, extractor: keras.Model, head: keras.Model, *,
                 frame_xla: bool | None = None, calibration: Calibration | None = None) -> None:
        self.config = config
        self.calibration = calibration
        self.extractor = extractor
        self.training_head = head
        self.head = inference_head(head, config)
        self.feature_dim = int(extractor.output_shape[-1])
        self.frame_xla = config.backbone in XLA_FRAME_BACKBONES if frame_xla is None else frame_xla

    @functools.cached_property
    def frame_extractor(self) -> keras.Model:
        """The extractor for one frame at a time, a live stream's hot path.

        With ``frame_xla`` on TensorFlow, a model sharing the extractor's
        layers, compiled with XLA; otherwise the extractor itself.
        """
        if not self.frame_xla or keras.backend.backend() != "tensorflow":
            return self.extractor
        model = keras.Model(self.extractor.inputs, self.extractor.outputs, name=f"{self.extractor.name}_frame")
        model.compile(jit_compile=True)
        return model

    @functools.cached_property
    def step_head(self) -> keras.Model:
        """The head for one window, the worker's hot path: one input shape (1, W, F), so
        it is compiled once, under XLA. Built on first use: training's runtimes never need it.
        """
        head = build_temporal_head(self.config, self.feature_dim, inference=True, fixed_window=True,
                                   name="temporal_head_step", members=head_members(self.training_head))
        head.set_weights(self.training_head.get_weights())
        if keras.backend.backend() == "tensorflow":
            head.compile(jit_compile=True)
        return head

    def preprocess(self, frame: np.ndarray) -> np.ndarray:
        """uint8 raw frame -> float32 (S, S, 3), the one shared preprocessing."""
        return preprocess(frame, self.config)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed float32 (N, S, S, 3) -> float32 (N, F)."""
        if len(images) == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        extractor = self.frame_extractor if len(images) == 1 else self.extractor
        return np.asarray(extractor.predict_on_batch(images), np.float32)

    def frame_features(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """Raw uint8 frames -> float32 (N, F)."""
        return self.features(preprocess_batch(frames, self.config))

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """Feature windows float32 (B, T, F) -> per-position scores float32 (B, T)."""
        return self.calibrate(np.asarray(self.head.predict_on_batch(windows), np.float32))

    def score_newest(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """The score of the newest frame of each window (``models.scoring.newest_scores``).

        float32 (k_i, F), 1 <= k_i <= W -> float32 (B,); a single window takes the step head.
        """
        head = self.step_head if len(windows) == 1 else self.head
        return self.calibrate(newest_scores(windows, head.predict_on_batch, self.config.window))

    def scan_scores(self, features: np.ndarray) -> np.ndarray:
        """Streaming-equivalent per-frame scores of one scan: float32 (N, F) -> (N,)."""
        # score_windows already calibrates.
        return streaming_scores(features, self.score_windows, self.config.window)

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        """The head's own scores -> the bundle's calibrated scores (unchanged without a calibration)."""
        return scores if self.calibration is None else self.calibration.apply(scores)

    def warm_up(self) -> None:
        """Trace (and compile) the paths a stream takes: one frame and one window, and batches of them.

        Keras traces a new function for the second batch size it meets, one
        that takes any batch size; tracing both now keeps that out of a stream.
        TensorFlow counts these intended traces across all models and warns of
        "excessive retracing" at the fifth; its log shows only errors meanwhile.
        """
        tensorflow_log = logging.getLogger("tensorflow")
        level = tensorflow_log.level
        tensorflow_log.setLevel(logging.ERROR)
        try:
            size = self.config.image_size
            images = np.zeros((2, size, size, 3), np.float32)
            # The batched extractor at two sizes, even where single frames take their own path.
            self.extractor.predict_on_batch(images[:1])
            features = self.features(images)
            self.features(images[:1])
            one, two = features[:1], features
            self.score_newest([one])
            self.score_newest([one, two])
            self.score_newest([one, two, one])
        finally:
            tensorflow_log.setLevel(level)
