"""The readout of an Akida 2.0 model: its integer features, a host logistic-regression refit, and the refitted
readout quantized the way the Akida Dense1D computes and written back into the model (see ``qana_keras.onchip.learn``)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


class LearnError(RuntimeError):
    """The Akida model has no readout this module can refit, or the protocol cannot run honestly."""


# --------------------------------------------------------------------------------------------------
# The Akida readout: features, integer weights, write-back


def split_readout(model):
    """(backbone akida.Model, Dense1D layer, Dequantizer layer) of an Akida model ending in Dense1D -> Dequantizer."""
    import akida

    layers = model.layers
    kinds = [str(layer.parameters.layer_type).split(".")[-1] for layer in layers[-2:]]
    if len(layers) < 3 or kinds != ["Dense1D", "Dequantizer"]:
        last = ", ".join(f"'{l.name}' ({k})" for l, k in zip(layers[-2:], kinds))
        raise LearnError(f"the Akida model ends with {last}, not Dense1D -> Dequantizer; the readout update needs "
                         "the Flatten -> Dense head of qana_keras.models.blocks converted fully to Akida 2.0")
    return akida.Model(layers=layers[:-2]), layers[-2], layers[-1]


def backbone_features(backbone, images: np.ndarray, batch_size: int = 100, label: str = "features",
                      every_seconds: float = 20.0, log=print) -> np.ndarray:
    """Integer features (N, D) that the readout reads: ``forward`` of the backbone, flattened (H, W, C order)."""
    out, began, last = [], time.perf_counter(), time.perf_counter()
    for start in range(0, len(images), batch_size):
        chunk = np.ascontiguousarray(images[start:start + batch_size], dtype=np.uint8)
        out.append(backbone.forward(chunk).reshape(len(chunk), -1))
        now = time.perf_counter()
        done = min(start + batch_size, len(images))
        if now - last >= every_seconds or done == len(images):
            log(f"  Akida backbone ({label}): {done}/{len(images)} images, {done / (now - began):.0f} images/s")
            last = now
    return np.concatenate(out) if out else np.zeros((0, int(np.prod(backbone.output_shape))), np.int8)


@dataclass
class IntegerReadout:
    """What a Dense1D + Dequantizer computes: ``scales * (x @ weights + (bias << bias_shift))``."""
    weights: np.ndarray  # (D, K) int8
    bias: np.ndarray  # (K,) int8
    bias_shift: np.ndarray  # (K,) uint8
    scales: np.ndarray  # (K,) float32, the Dequantizer's

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Exact host emulation of the chip's readout (int64 accumulator, then the float scale)."""
        acc = features.reshape(len(features), -1).astype(np.int64) @ self.weights.astype(np.int64)
        acc += self.bias.astype(np.int64) << self.bias_shift.astype(np.int64)
        return acc * self.scales.astype(np.float64)


def _float_readout(readout: IntegerReadout) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) in float logits units of an integer readout."""
    scales = readout.scales.astype(np.float64)
    bias = (readout.bias.astype(np.int64) << readout.bias_shift.astype(np.int64)) * scales
    return readout.weights.astype(np.float64) * scales, bias


def read_readout(model) -> IntegerReadout:
    """The integer readout of an Akida model (its last Dense1D and Dequantizer)."""
    _, dense, dequantizer = split_readout(model)
    return IntegerReadout(dense.get_variable("weights"), dense.get_variable("bias"),
                          dense.get_variable("bias_shift"), dequantizer.get_variable("scales"))


def quantize_readout(kernel: np.ndarray, bias: np.ndarray, weight_bits: int = 8, buffer_bits: int = 28,
                     max_feature: int = 127) -> IntegerReadout:
    """Integer weights, shifted int8 bias and per-class scales for float ``logits = x @ kernel + bias``.

    Per-class (per-axis) weight scale, as quantizeml does for the original head: each class uses the
    full int range. Raises LearnError if the accumulator could overflow ``buffer_bits``.
    """
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    top = 2 ** (weight_bits - 1) - 1
    scales = np.abs(kernel).max(axis=0) / top
    scales = np.where(scales > 0, scales, 1.0)  # an all-zero column keeps zero weights
    weights = np.clip(np.round(kernel / scales), -top, top).astype(np.int8)
    acc_bias = bias / scales
    shift = np.maximum(0, np.ceil(np.log2(np.maximum(np.abs(acc_bias), 1e-12) / 127))).astype(np.int64)
    bias_int = np.round(acc_bias / 2.0 ** shift)
    shift = np.where(np.abs(bias_int) > 127, shift + 1, shift)  # rounding up to 128 needs one more bit
    bias_int = np.clip(np.round(acc_bias / 2.0 ** shift), -127, 127)
    bound = np.abs(weights.astype(np.int64)).sum(axis=0) * max_feature + np.abs(bias_int) * 2.0 ** shift
    if bound.max() >= 2 ** (buffer_bits - 1):
        raise LearnError(f"the readout could overflow the {buffer_bits}-bit accumulator ({bound.max():.3g}); "
                         "use a stronger regularization (smaller --C)")
    return IntegerReadout(weights, bias_int.astype(np.int8), shift.astype(np.uint8), scales.astype(np.float32))


def write_readout(model, readout: IntegerReadout):
    """A new Akida model: ``model``'s backbone layers, then a Dense1D + Dequantizer holding ``readout``.

    The Dense1D takes the bit widths of the old one; its number of units is the readout's (it may
    grow, e.g. 7 -> 8 classes). ``model`` itself is not changed.
    """
    import akida

    backbone, dense, dequantizer = split_readout(model)
    d, k = readout.weights.shape
    if d != int(np.prod(backbone.output_shape)):
        raise LearnError(f"the readout reads {d} features, but '{backbone.layers[-1].name}' outputs "
                         f"{backbone.output_shape}")
    p = dense.parameters
    new = akida.Model(layers=backbone.layers)
    new.add(akida.Dense1D(units=k, output_bits=p.output_bits, buffer_bits=p.buffer_bits,
                          post_op_buffer_bits=p.post_op_buffer_bits, weights_bits=p.weights_bits, name=dense.name))
    new.add(akida.Dequantizer(name=dequantizer.name))
    layer = new.get_layer(dense.name)
    layer.set_variable("weights", np.ascontiguousarray(readout.weights, np.int8))
    layer.set_variable("bias", np.ascontiguousarray(readout.bias, np.int8))
    layer.set_variable("bias_shift", np.ascontiguousarray(readout.bias_shift, np.uint8))
    new.get_layer(dequantizer.name).set_variable("scales", np.ascontiguousarray(readout.scales, np.float32))
    return new


# --------------------------------------------------------------------------------------------------
# Host refit


def class_sample_weights(labels: np.ndarray, n_classes: int, weighting: str = "sqrt") -> np.ndarray:
    """Per-sample loss weights: none, balanced (N / (K n_c)) or sqrt of balanced (the training default)."""
    if weighting == "none":
        return np.ones(len(labels))
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    balanced = np.zeros(n_classes)
    balanced[present] = len(labels) / (present.sum() * counts[present])
    if weighting == "balanced":
        return balanced[labels]
    if weighting == "sqrt":
        return np.sqrt(balanced)[labels]
    raise ValueError(f"class weighting must be none, balanced or sqrt, not {weighting!r}")


def fit_readout(features: np.ndarray, labels: np.ndarray, n_classes: int, C: float = 0.01,
                sample_weight: np.ndarray | None = None, max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardized integer features; returns (kernel (D, K), bias (K,))
    in integer-feature units, i.e. ``logits = features @ kernel + bias``.

    Classes absent from ``labels`` get a zero column and a bias far below the others (never predicted).
    """
    from sklearn.linear_model import LogisticRegression

    x = features.reshape(len(features), -1).astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)  # dead features: their weight stays 0 after folding
    z = (x - mean) / std
    present = np.unique(labels)
    if len(present) < 2:
        raise LearnError(f"the readout needs at least two classes in the training labels, got {present.tolist()}")
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit(z, labels, sample_weight=sample_weight)
    coef, intercept = clf.coef_, clf.intercept_
    if len(present) == 2:  # sklearn's binary form: one row for the positive class
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    kernel = np.zeros((x.shape[1], n_classes))
    bias = np.full(n_classes, -1e3)
    kernel[:, present] = (coef / std).T
    bias[present] = intercept - (coef / std) @ mean
    if len(present) < n_classes:
        bias[np.setdiff1d(np.arange(n_classes), present)] = bias[present].min() - 50.0
    return kernel, bias
