"""The temporal head's LSTM: Keras's LSTM with the input projection of all time steps in one product.

Keras's LSTM multiplies each time step's input by the input kernel inside its
loop over time. With recurrent dropout it even splits that product per gate,
so one window of 8 steps at batch 8 is 32 products of 8 rows each against
slices of the input kernel, and as many again in the gradient. On a CPU such
thin products are bound by reading the weights, not by arithmetic: training
the seed's head ran at about 15 GFLOP/s here against VGG19's 250. Projecting
the whole (B, T, F) sequence at once is one product of B*T rows, and its
gradient is one product too; only the recurrent part stays in the loop.

The cell, its weights (same names, same gate order i, f, c, o), its
initialisers and its recurrent dropout (one mask per gate, drawn once per
sequence) are Keras's own, and so is the class name, which Keras writes into
weights files' paths: weights files move between this layer and
``keras.layers.LSTM`` unchanged, and the outputs agree to float rounding.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="fetalhead")
class LSTM(keras.layers.LSTM):
    """Keras's LSTM that projects every time step's input in one matrix product.

    A sequence whose length is known when traced runs its time loop unrolled
    (the windows are 8 steps); one of unknown length takes Keras's own loop.
    Input dropout and ``go_backwards`` are not supported: the model uses
    neither.
    """

    def __init__(self, units: int, **kwargs) -> None:
        if kwargs.get("dropout") or kwargs.get("go_backwards"):
            raise ValueError("LSTM: input dropout and go_backwards are not supported")
        super().__init__(units, **kwargs)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        steps = sequences.shape[1]
        if steps is None or mask is not None:
            return super().inner_loop(sequences, initial_state, mask, training=training)
        cell = self.cell
        projected = ops.matmul(sequences, cell.kernel) + cell.bias
        if training and 0.0 < cell.recurrent_dropout < 1.0:
            # The masks RNN.call drew for this batch, one per gate, as Keras's cell applies them.
            masks = cell.get_recurrent_dropout_mask(initial_state[0])
            kernels = ops.split(cell.recurrent_kernel, 4, axis=1)

            def recurrent(h):
                return ops.concatenate([ops.matmul(h * m, k) for m, k in zip(masks, kernels)], axis=-1)
        else:
            def recurrent(h):
                return ops.matmul(h, cell.recurrent_kernel)

        h, c = initial_state
        outputs = []
        for t in range(steps):
            i, f, g, o = ops.split(projected[:, t] + recurrent(h), 4, axis=-1)
            c = cell.recurrent_activation(f) * c + cell.recurrent_activation(i) * cell.activation(g)
            h = cell.recurrent_activation(o) * cell.activation(c)
            outputs.append(h)
        return h, ops.stack(outputs, axis=1), [h, c]
