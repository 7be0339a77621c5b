"""Weight averaging (``train.ema_decay``): an exponential moving average of every model weight.

Fine-tuning on a few thousand images leaves consecutive weights noisy; their running average usually
generalises a little better and moves less between epochs, so selection on a small validation split is
steadier. BN statistics are averaged too, so the averaged model is consistent with itself.
Keras' own ``use_ema`` averages trainable variables only and writes the average into the model at the end of
every ``fit`` call (once per epoch here), which would change training itself; this callback leaves it alone.
The decay warms up as in ``tf.train.ExponentialMovingAverage``: ``min(decay, (1 + n) / (10 + n))`` after n
updates, so the random head of the first steps does not linger in the average.
"""
from __future__ import annotations

import contextlib

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras as keras


class AverageState(tf.Module):
    """The averaged weights and the update count: a trackable object, saved in the run's checkpoints."""

    def __init__(self, weights):
        super().__init__(name="weight_average")
        self.averages = [tf.Variable(w, trainable=False, name=f"average_{i}") for i, w in enumerate(weights)]
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")


class WeightAverage(keras.callbacks.Callback):
    """Updates the average after every training batch; ``applied()`` swaps it into the model for a while."""

    def __init__(self, model, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay={decay}: use a value in (0, 1), or 0 to train without averaging")
        self.decay = decay
        # float weights only: the dropout layers' random-generator state is an integer variable of its own
        self.weights = [w for w in model.weights if w.dtype.is_floating]
        self.state = AverageState(self.weights)

    @tf.function
    def _update(self):
        n = tf.cast(self.state.updates.assign_add(1), tf.float32)
        decay = tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + n) / (10.0 + n))
        for average, weight in zip(self.state.averages, self.weights):
            average.assign(decay * average + (1.0 - decay) * weight)

    def on_train_batch_end(self, batch, logs=None):
        self._update()

    @contextlib.contextmanager
    def applied(self):
        """The averaged weights in the model inside the block (evaluate, save), the trained ones after it."""
        trained = [w.numpy() for w in self.weights]
        for weight, average in zip(self.weights, self.state.averages):
            weight.assign(average)
        try:
            yield
        finally:
            for weight, value in zip(self.weights, trained):
                weight.assign(value)
