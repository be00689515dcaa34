"""The bottom of the library: the CNN-LSTM, its one preprocessing function, bundles, and what every package shares.

``errors`` (the one-line error types) and ``settings`` (typed dataclass
settings read from TOML and flags) import neither Keras nor TensorFlow, and
neither do ``config``, ``classes``, ``windows`` and ``progress``; they are what
``stream`` and ``train`` build on. ``cnn_lstm`` is the one model definition,
``preprocess`` the one preprocessing function, ``runtime`` and ``scoring`` the
compiled inference paths shared by evaluation and the worker, and ``bundle``
the single file a trained model travels in. Importing this package imports
nothing else.
"""
