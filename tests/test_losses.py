"""Balanced softmax: the shifted cross-entropy, its priors, sample weights, and a class with no image."""
import numpy as np
import pytest
from scipy.special import log_softmax

import qana_keras  # noqa: F401
import tf_keras as keras

from qana_keras.training.losses import build_loss, ldam_margins, log_prior


def test_balanced_softmax_is_cross_entropy_of_logits_plus_log_prior():
    labels = np.array([0, 0, 0, 1, 2, 2])  # priors 1/2, 1/6, 1/3
    np.testing.assert_allclose(log_prior(labels, 3), np.log([0.5, 1 / 6, 1 / 3]), rtol=1e-6)
    logits = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[[0, 1, 2, 1]]
    weights = np.array([1.0, 2.0, 0.5, 1.0], dtype="float32")
    per_sample = -(y * log_softmax(logits + np.log([0.5, 1 / 6, 1 / 3]), axis=1)).sum(1)
    loss = build_loss("balanced_softmax", labels, 3)
    assert float(loss(y, logits)) == pytest.approx(per_sample.mean(), rel=1e-5)
    assert float(loss(y, logits, sample_weight=weights)) == pytest.approx((per_sample * weights).mean(), rel=1e-5)
    # The rare class gains most: its target logit is pushed up by log(3) more than the common class's.
    plain = build_loss("cross_entropy", labels, 3)
    assert float(plain(y, logits)) == pytest.approx(-(y * log_softmax(logits, axis=1)).sum(1).mean(), rel=1e-5)


def test_ldam_subtracts_the_true_class_margin_largest_for_the_rarest_class():
    labels = np.array([0] * 16 + [1] * 1 + [2] * 4)
    margins = ldam_margins(labels, 3, 0.5)
    np.testing.assert_allclose(margins, [0.5 * (1 / 16) ** 0.25, 0.5, 0.5 * (1 / 4) ** 0.25], rtol=1e-6)
    logits = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[[0, 1, 2, 1]]
    per_sample = -(y * log_softmax(logits - y * margins, axis=1)).sum(1)
    loss = build_loss("ldam", labels, 3, ldam_margin=0.5)
    assert float(loss(y, logits)) == pytest.approx(per_sample.mean(), rel=1e-5)
    # Same logits, larger loss than plain cross-entropy: the true class must win by its margin.
    assert float(loss(y, logits)) > float(build_loss("cross_entropy", labels, 3)(y, logits))


def test_balanced_softmax_trains_a_model():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(30, 4)).astype("float32")
    labels = (x[:, 0] > 0.8).astype(int)  # a rare class
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=build_loss("balanced_softmax", labels, 2))
    history = model.fit(x, np.eye(2)[labels], epochs=20, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_a_class_without_training_images_and_an_unknown_loss_are_named():
    with pytest.raises(ValueError, match="class index 2 has no training image"):
        log_prior(np.array([0, 1, 1]), 3)
    with pytest.raises(ValueError, match="class index 1 has no training image"):
        build_loss("ldam", np.array([0, 0, 2]), 3)
    with pytest.raises(ValueError, match="train.loss='focal': use one of cross_entropy, balanced_softmax, ldam"):
        build_loss("focal", np.array([0, 1]), 2)


@pytest.mark.parametrize("loss", ["balanced_softmax", "ldam"])
def test_a_run_trained_with_a_long_tail_loss_records_it(tmp_path, loss):
    from test_train import tiny_config

    from qana_keras.config import load_config
    from qana_keras.training.train import train

    config = tiny_config(tmp_path, epochs=1)
    config.train.loss, config.train.class_weighting = loss, "none"
    metrics = train(tmp_path / "run", config, log=lambda *_: None)
    assert load_config(tmp_path / "run" / "config.yaml").train.loss == loss
    assert 0.0 <= metrics["test"]["balanced_accuracy"] <= 1.0 and metrics["selected_epoch"] == 1
