"""The CNN-LSTM, its one preprocessing function, and model bundles.

``models.load``, ``models.save`` and ``models.preprocess`` are imported lazily so
that light commands (``fetalhead --help``, the protocol) do not import Keras.
"""

import os

# TensorFlow's C++ start-up chatter buries the tool's own messages.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_LAZY = {
    "load": ("models.bundle", "load"),
    "save": ("models.bundle", "save"),
    "Bundle": ("models.bundle", "Bundle"),
    "preprocess": ("models.preprocess", "preprocess"),
    "preprocess_batch": ("models.preprocess", "preprocess_batch"),
    "ModelConfig": ("models.config", "ModelConfig"),
    "Runtime": ("models.runtime", "Runtime"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
