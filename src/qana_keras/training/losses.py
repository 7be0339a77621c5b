"""Training losses (``train.loss``): cross-entropy, or balanced softmax or LDAM for the long tail.

Balanced softmax (Ren et al., NeurIPS 2020) trains on ``logits + log(prior)``, the training-set class
frequencies, and predicts with the logits alone: the model learns the balanced (label-shift corrected)
posterior, so rare classes are not crowded out, without reweighting the samples. Use it with
``train.class_weighting: none``, since it already corrects for the class frequencies.

LDAM (Cao et al., NeurIPS 2019) subtracts a class-dependent margin ``m * (n_min / n_j) ** 0.25`` from the
true class's logit: rare classes must win by more, which widens their decision region. The paper applies
it to cosine logits scaled by 30; here it acts on the plain logits (scale 1), because a normalised
classifier would change the dense layer that Akida runs. Its deferred re-weighting is the class weights
of ``train.class_weighting`` from the first epoch.
"""
from __future__ import annotations

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras as keras

LOSSES = ("cross_entropy", "balanced_softmax", "ldam")


def _class_counts(labels: np.ndarray, num_classes: int, loss: str) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if np.any(counts == 0):
        missing = ", ".join(str(c) for c in np.flatnonzero(counts == 0))
        raise ValueError(f"train.loss={loss}: class index {missing} has no training image; "
                         "use train.loss=cross_entropy or train on data that holds every class")
    return counts


def log_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """log of the class frequencies in ``labels``; a class with no training image is an error."""
    counts = _class_counts(labels, num_classes, "balanced_softmax")
    return np.log(counts / counts.sum()).astype(np.float32)


def ldam_margins(labels: np.ndarray, num_classes: int, max_margin: float) -> np.ndarray:
    """LDAM's per-class margins: proportional to n_j ** -1/4, ``max_margin`` for the rarest class."""
    counts = _class_counts(labels, num_classes, "ldam")
    return (max_margin * (counts.min() / counts) ** 0.25).astype(np.float32)


class AdjustedCrossEntropy(keras.losses.Loss):
    """Cross-entropy of logits moved by per-class ``offsets`` (``adjust``); Keras applies sample weights and the
    reduction. Training only: the model predicts with its plain logits."""

    def __init__(self, name: str, offsets: np.ndarray, label_smoothing: float = 0.0):
        super().__init__(name=name)
        self.offsets = tf.constant(offsets, tf.float32)
        self.label_smoothing = label_smoothing

    def adjust(self, y_true, logits):
        raise NotImplementedError

    def call(self, y_true, logits):
        y_true = tf.cast(y_true, logits.dtype)
        return keras.losses.categorical_crossentropy(y_true, self.adjust(y_true, logits), from_logits=True,
                                                     label_smoothing=self.label_smoothing)


class BalancedSoftmax(AdjustedCrossEntropy):
    """Cross-entropy of ``logits + log_prior``."""

    def __init__(self, log_prior: np.ndarray, label_smoothing: float = 0.0):
        super().__init__("balanced_softmax", log_prior, label_smoothing)

    def adjust(self, y_true, logits):
        return logits + self.offsets


class LDAM(AdjustedCrossEntropy):
    """Cross-entropy of the logits with the true class's margin subtracted (soft targets: margin-weighted)."""

    def __init__(self, margins: np.ndarray, label_smoothing: float = 0.0):
        super().__init__("ldam", margins, label_smoothing)

    def adjust(self, y_true, logits):
        return logits - y_true * self.offsets


def build_loss(name: str, labels: np.ndarray, num_classes: int, label_smoothing: float = 0.0,
               ldam_margin: float = 0.5) -> keras.losses.Loss:
    """The training loss ``name`` for integer training ``labels`` (priors and margins come from their counts)."""
    if name == "cross_entropy":
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
    if name == "balanced_softmax":
        return BalancedSoftmax(log_prior(labels, num_classes), label_smoothing)
    if name == "ldam":
        return LDAM(ldam_margins(labels, num_classes, ldam_margin), label_smoothing)
    raise ValueError(f"train.loss={name!r}: use one of {', '.join(LOSSES)}")
