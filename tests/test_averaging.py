"""Weight averaging: the running average the callback keeps, the swap in and out, and its use in training."""
import numpy as np
import pytest

import qana_keras  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from qana_keras.io import read_json
from qana_keras.training.averaging import WeightAverage


def small_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(5)(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


class Recorder(keras.callbacks.Callback):
    """Every float weight after every batch, in the order the averager keeps them."""

    def __init__(self, weights):
        super().__init__()
        self.weights, self.seen = weights, []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append([w.numpy().copy() for w in self.weights])


def test_average_follows_the_warmed_up_decay_and_includes_bn_statistics():
    model = small_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    averager = WeightAverage(model, decay=0.3)
    initial = [w.numpy().copy() for w in averager.weights]
    recorder = Recorder(averager.weights)
    x = np.random.default_rng(0).normal(size=(24, 4)).astype("float32")
    model.fit(x, x[:, :2] * 3, batch_size=8, epochs=2, verbose=0, callbacks=[recorder, averager])

    assert any("moving_mean" in w.name for w in averager.weights)  # BN statistics are averaged too
    expected = initial
    for n, weights in enumerate(recorder.seen, start=1):
        decay = min(0.3, (1 + n) / (10 + n))  # warm-up for updates 1-3 (0.18, 0.25, 0.31 -> 0.3), then 0.3
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights)]
    assert int(averager.state.updates.numpy()) == 6
    for got, want in zip(averager.state.averages, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_applied_swaps_the_average_in_and_the_trained_weights_back():
    model = small_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    averager = WeightAverage(model, decay=0.9)
    x = np.random.default_rng(1).normal(size=(16, 4)).astype("float32")
    model.fit(x, x[:, :2], batch_size=4, epochs=1, verbose=0, callbacks=[averager])
    trained = model.predict(x, verbose=0)
    with averager.applied():
        averaged = model.predict(x, verbose=0)
        for w, a in zip(averager.weights, averager.state.averages):
            np.testing.assert_array_equal(w.numpy(), a.numpy())
    assert not np.allclose(trained, averaged)
    np.testing.assert_array_equal(model.predict(x, verbose=0), trained)


def test_a_decay_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"train.ema_decay=1.0: use a value in \(0, 1\)"):
        WeightAverage(small_model(), decay=1.0)


def test_training_with_averaging_resumes_exactly_and_saves_the_average(tmp_path):
    """The average is checkpointed: a run stopped after epoch 1 and resumed matches a straight run."""
    from test_train import tiny_config

    from qana_keras.runtime.load import load_keras_model
    from qana_keras.training.train import train

    config = tiny_config(tmp_path, epochs=2)
    config.train.ema_decay = 0.9
    straight = train(tmp_path / "straight", config, log=lambda *_: None)
    assert train(tmp_path / "killed", config, stop_after=1, log=lambda *_: None) is None
    resumed = train(tmp_path / "killed", resume=True, log=lambda *_: None)
    a = read_json(tmp_path / "straight" / "state.json")["history"]
    b = read_json(tmp_path / "killed" / "state.json")["history"]
    assert [(r["loss"], r["val_macro_f1"]) for r in a] == [(r["loss"], r["val_macro_f1"]) for r in b]
    assert straight["test"]["confusion_matrix"] == resumed["test"]["confusion_matrix"]

    # The saved model is the average, not the last trained weights: a run without averaging differs.
    config.train.ema_decay = 0.0
    plain = train(tmp_path / "plain", config, log=lambda *_: None)
    assert [r["loss"] for r in read_json(tmp_path / "plain" / "state.json")["history"]] == [r["loss"] for r in a]
    saved = load_keras_model(tmp_path / "straight" / "qana_float.h5").get_weights()
    unaveraged = load_keras_model(tmp_path / "plain" / "qana_float.h5").get_weights()
    assert any(not np.allclose(x, y) for x, y in zip(saved, unaveraged))
    assert plain["selected_epoch"] in (1, 2)
