"""Training losses (``train.loss``): cross-entropy, or balanced softmax for the long tail.

Balanced softmax (Ren et al., NeurIPS 2020) trains on ``logits + log(prior)``, the training-set class
frequencies, and predicts with the logits alone: the model learns the balanced (label-shift corrected)
posterior, so rare classes are not crowded out, without reweighting the samples. Use it with
``train.class_weighting: none``, since it already corrects for the class frequencies.
"""
from __future__ import annotations

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras as keras

LOSSES = ("cross_entropy", "balanced_softmax")


def log_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """log of the class frequencies in ``labels``; a class with no training image is an error."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if np.any(counts == 0):
        missing = ", ".join(str(c) for c in np.flatnonzero(counts == 0))
        raise ValueError(f"train.loss=balanced_softmax: class index {missing} has no training image; "
                         "use train.loss=cross_entropy or train on data that holds every class")
    return np.log(counts / counts.sum()).astype(np.float32)


class BalancedSoftmax(keras.losses.Loss):
    """Cross-entropy of ``logits + log_prior``; Keras applies sample weights and the reduction."""

    def __init__(self, log_prior: np.ndarray, label_smoothing: float = 0.0):
        super().__init__(name="balanced_softmax")
        self.shift = tf.constant(log_prior, tf.float32)
        self.label_smoothing = label_smoothing

    def call(self, y_true, logits):
        return keras.losses.categorical_crossentropy(y_true, logits + self.shift, from_logits=True,
                                                     label_smoothing=self.label_smoothing)


def build_loss(name: str, labels: np.ndarray, num_classes: int, label_smoothing: float = 0.0) -> keras.losses.Loss:
    """The training loss ``name`` for integer training ``labels`` (the priors of balanced softmax)."""
    if name == "cross_entropy":
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
    if name == "balanced_softmax":
        return BalancedSoftmax(log_prior(labels, num_classes), label_smoothing)
    raise ValueError(f"train.loss={name!r}: use one of {', '.join(LOSSES)}")
