import keras
import numpy as np
import pytest

from models.backbones import load_weights_strict
from models.lstm import LSTM

UNITS, FEATURES = 16, 12


def pair(recurrent_dropout: float = 0.0, seed: int = 3) -> tuple[keras.Model, keras.Model]:
    """The same one-layer model with Keras's LSTM and with ours, same weights."""
    models = []
    for layer_type in (keras.layers.LSTM, LSTM):
        inputs = keras.Input((None, FEATURES))
        outputs = layer_type(UNITS, return_sequences=True, recurrent_dropout=recurrent_dropout, seed=seed,
                             name="lstm")(inputs)
        models.append(keras.Model(inputs, outputs))
    stock, projected = models
    projected.set_weights(stock.get_weights())
    return stock, projected


def test_our_lstm_gives_keras_lstm_outputs(rng):
    stock, projected = pair()
    # Non-trivial recurrent weights and biases, so every gate matters.
    projected.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in stock.get_weights()])
    stock.set_weights(projected.get_weights())
    for steps in (1, 5, 8):
        x = rng.normal(size=(4, steps, FEATURES)).astype(np.float32)
        np.testing.assert_allclose(projected(x), stock(x), atol=2e-6)
    last = LSTM(UNITS, name="last")
    x = rng.normal(size=(2, 8, FEATURES)).astype(np.float32)
    last(x)
    last.set_weights(projected.get_weights())
    np.testing.assert_allclose(last(x), projected(x)[:, -1], atol=1e-6)


def test_our_lstm_applies_keras_recurrent_dropout_masks(rng):
    """In training, the same seed draws the same four per-gate masks as Keras's cell."""
    stock, projected = pair(recurrent_dropout=0.4)
    x = rng.normal(size=(8, 8, FEATURES)).astype(np.float32)
    trained = projected(x, training=True)
    np.testing.assert_allclose(trained, stock(x, training=True), atol=2e-6)
    assert np.abs(np.asarray(trained) - np.asarray(projected(x))).max() > 1e-3


def test_one_training_step_moves_the_weights_as_keras_lstm_does(rng):
    stock, projected = pair(recurrent_dropout=0.4)
    x = rng.normal(size=(8, 8, FEATURES)).astype(np.float32)
    y = rng.uniform(size=(8, 8, UNITS)).astype(np.float32)
    before = projected.get_weights()
    for model in (stock, projected):
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        model.train_on_batch(x, y)
    for a, b in zip(projected.get_weights(), stock.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Every weight moved: the step reached the input kernel, the recurrent kernel and the bias.
    for a, b in zip(projected.get_weights(), before):
        assert np.abs(a - b).max() > 1e-4


def test_unknown_length_takes_keras_loop_with_the_same_outputs(rng):
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("unknown traced lengths are a TensorFlow graph matter")
    stock, projected = pair()
    layer = projected.get_layer("lstm")
    traced = tf.function(lambda s: layer(s), input_signature=[tf.TensorSpec((None, None, FEATURES))])
    x = rng.normal(size=(3, 6, FEATURES)).astype(np.float32)
    np.testing.assert_allclose(traced(x), stock(x), atol=2e-6)


def test_weights_written_by_keras_lstm_load_strictly(tmp_path, rng):
    stock, projected = pair()
    stock.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in stock.get_weights()])
    stock.save_weights(tmp_path / "stock.weights.h5")
    load_weights_strict(projected, tmp_path / "stock.weights.h5")
    for a, b in zip(projected.get_weights(), stock.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unsupported_options_are_refused():
    for option in ({"dropout": 0.2}, {"go_backwards": True}):
        with pytest.raises(ValueError, match="not supported"):
            LSTM(4, **option)
