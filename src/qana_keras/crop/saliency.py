"""Class-activation maps from a first pass of a model on the whole (downscaled) image.

Two kinds, both returning one low-resolution map per image for its predicted class, plus the logits:

* ``head`` (forward only, no gradient). QANA ends with Flatten -> Dense on its last feature map A, so
  the logit of class k is exactly ``b_k + sum_{h,w} sum_c A[h,w,c] * W[(h,w,c), k]``; the inner sum
  is the contribution of location (h, w). It needs only A and the dense kernel, so it runs next to
  the chip: the Akida model without its dense layer outputs A (integers) and the Akida dense layer
  holds W (int8); the host does one small product. :class:`AkidaHeadCAM` does that,
  :class:`KerasHeadCAM` the same on a float model.
* ``gradcam`` (Selvaraju et al., 2017) on a float Keras model: the feature map of a layer weighted by
  the spatially averaged gradient of the predicted logit, then a ReLU. With a linear head read at
  the head's own input, that gradient is W itself, so Grad-CAM there is the head map with the
  kernel averaged over locations; at the last stage's pre-pool ReLU it has twice the resolution.

Maps are not normalised here; :mod:`qana_keras.crop.geometry` thresholds them relative to their peak.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

METHODS = ("head", "gradcam")
FLATTEN, DENSE = "head/flatten", "head/dense"


def _predict(model, images: np.ndarray, batch_size: int):
    return model.predict(images, batch_size=batch_size, verbose=0)


def head_contributions(features: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Per-location logit contributions ``(N, h, w, K)`` of features ``(N, h, w, c)`` via ``kernel (h, w, c, K)``."""
    return np.einsum("nhwc,hwck->nhwk", features.astype(np.float64), kernel.astype(np.float64))


def _pick(per_class: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``per_class[n, :, :, classes[n]]`` for every n."""
    return np.take_along_axis(per_class, classes[:, None, None, None], axis=3)[..., 0]


class KerasHeadCAM:
    """Forward-only map of a float Keras QANA: its ``head/flatten`` input times the ``head/dense`` kernel."""

    method = "head"

    def __init__(self, model, flatten: str = FLATTEN, dense: str = DENSE):
        import tf_keras as keras

        try:
            flat, dense_layer = model.get_layer(flatten), model.get_layer(dense)
        except ValueError:
            raise ValueError(f"model {model.name!r} has no '{flatten}' -> '{dense}' head; the forward-only map "
                             "needs QANA's Flatten -> Dense readout (use --saliency gradcam otherwise)") from None
        weights = dense_layer.get_weights()
        if len(weights) != 2 or not hasattr(weights[0], "ndim") or weights[0].ndim != 2:
            raise ValueError(f"'{dense}' of {model.name!r} is not a plain float Dense layer (a quantized Keras "
                             "model?); pass the float .h5 or the Akida .fbz")
        self.features = keras.Model(model.inputs, [flat.input, model.output], name="head_cam")
        h, w, c = flat.input.shape[1:]
        self.kernel = weights[0].reshape(h, w, c, -1)
        self.bias = weights[1]
        self.input_size = int(model.input_shape[1])

    def contributions(self, images: np.ndarray, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """All classes' contribution maps ``(N, h, w, K)`` and the logits ``(N, K)``."""
        features, logits = _predict(self.features, images, batch_size)
        return head_contributions(features, self.kernel), logits

    def __call__(self, images: np.ndarray, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        per_class, logits = self.contributions(images, batch_size)
        return _pick(per_class, logits.argmax(1)), logits


class AkidaHeadCAM:
    """Forward-only map from an Akida model: the model without its dense layer gives the integer feature map.

    The Akida ``head/dense`` (Dense1D) computes ``acc_k = sum_i (x_i << input_shift_i) * W_ik + (b_k << bias_shift_k)``
    and the final Dequantizer multiplies by a per-class scale, so ``logit_k = scale_k * acc_k`` exactly when
    the dense layer's output scale is 1 and its shift 0 (what cnn2snn makes of a logits layer). That is
    checked when the model is loaded, against the full Akida model on two random images.
    """

    method = "head"

    def __init__(self, path: str | Path, dense: str = DENSE, check: bool = True):
        from qana_keras.runtime.load import load_akida_model

        path = Path(path)
        full = load_akida_model(path)
        names = [layer.name for layer in full.layers]
        if dense not in names:
            raise ValueError(f"{path}: no layer '{dense}' (last layers: {names[-3:]}); the forward-only map needs "
                             "QANA's dense readout as an Akida layer")
        i = names.index(dense)
        tail = [full.layers[j] for j in range(i + 1, len(names))]
        if any(str(t.parameters.layer_type) != "LayerType.Dequantizer" for t in tail):
            raise ValueError(f"{path}: layers after '{dense}' other than a Dequantizer: {names[i + 1:]}")
        layer = full.layers[i]
        v = {name: np.asarray(layer.variables[name]) for name in layer.variables.names}
        if np.any(v.get("output_scales", 1) != 1) or np.any(v.get("output_shift", 0) != 0):
            raise ValueError(f"{path}: '{dense}' rescales its output (output_scales/output_shift); the exact "
                             "per-location decomposition is not implemented for that")
        trunk = load_akida_model(path)  # cached check: no second child process
        while trunk.layers[-1].name != names[i - 1]:
            trunk.pop_layer()
        self.trunk, self.full, self.path = trunk, full, path
        h, w, c = (int(d) for d in trunk.output_shape)
        self.input_shift = v.get("input_shift", np.zeros(h * w * c, np.uint8)).astype(np.int64).reshape(h, w, c)
        self.kernel = v["weights"].astype(np.int64).reshape(h, w, c, -1)
        self.bias = v["bias"].astype(np.int64) << v.get("bias_shift", np.zeros_like(v["bias"])).astype(np.int64)
        self.scale = (np.asarray(tail[0].variables["scales"], np.float64) if tail
                      else np.ones(self.kernel.shape[-1]))
        self.input_size = int(full.input_shape[0])
        if check:
            self.check(np.random.default_rng(0).integers(0, 256, (2, self.input_size, self.input_size, 3), np.uint8))

    def contributions(self, images: np.ndarray, batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
        features = self.trunk.forward(np.ascontiguousarray(images, dtype=np.uint8), batch_size=batch_size)
        shifted = features.astype(np.int64) << self.input_shift
        acc = np.einsum("nhwc,hwck->nhwk", shifted, self.kernel)  # exact integers
        logits = (acc.sum(axis=(1, 2)) + self.bias) * self.scale
        return acc * self.scale, logits.astype(np.float32)

    def __call__(self, images: np.ndarray, batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
        per_class, logits = self.contributions(images, batch_size)
        return _pick(per_class, logits.argmax(1)), logits

    def check(self, images: np.ndarray) -> float:
        """Largest relative difference between the decomposed logits and the full Akida model's; raises if > 1e-4."""
        _, logits = self.contributions(images)
        reference = self.full.predict(np.ascontiguousarray(images, dtype=np.uint8)).reshape(len(images), -1)
        error = float(np.max(np.abs(logits - reference)) / (np.max(np.abs(reference)) + 1e-12))
        if error > 1e-4:
            raise ValueError(f"{self.path}: the forward-only decomposition of '{DENSE}' does not reproduce the "
                             f"Akida logits (relative error {error:.2e}); the dense layer's arithmetic is not the "
                             "assumed one")
        return error


def default_gradcam_layer(model) -> str:
    """The last ``stageN/relu`` (the last stage before its pool: twice the head's resolution)."""
    names = [layer.name for layer in model.layers if re.fullmatch(r"stage\d+/relu", layer.name)]
    if not names:
        raise ValueError(f"model {model.name!r} has no stageN/relu layer; pass the Grad-CAM layer by name")
    return names[-1]


class GradCAM:
    """Grad-CAM of the predicted class on a float Keras model (a GradientTape, no extra dependency)."""

    method = "gradcam"

    def __init__(self, model, layer: str | None = None):
        import tf_keras as keras

        self.layer = layer or default_gradcam_layer(model)
        self.grad_model = keras.Model(model.inputs, [model.get_layer(self.layer).output, model.output])
        self.input_size = int(model.input_shape[1])

    def __call__(self, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        maps, all_logits = [], []
        for start in range(0, len(images), batch_size):
            x = tf.convert_to_tensor(images[start:start + batch_size])
            with tf.GradientTape() as tape:
                features, logits = self.grad_model(x, training=False)
                top = tf.gather(logits, tf.argmax(logits, axis=1), batch_dims=1)
            grads = tape.gradient(top, features)  # d(top logit) / d(feature map)
            weights = tf.reduce_mean(grads, axis=(1, 2))  # one weight per channel
            cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", features, weights))
            maps.append(cam.numpy())
            all_logits.append(logits.numpy())
        return np.concatenate(maps), np.concatenate(all_logits)


def load_saliency(path: str | Path, method: str = "head", layer: str | None = None):
    """A saliency model from a float Keras ``.h5`` (``head`` or ``gradcam``) or an Akida ``.fbz`` (``head``)."""
    path = Path(path)
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; use one of {', '.join(METHODS)}")
    if not path.is_file():
        raise FileNotFoundError(f"saliency model {path} not found (data.crop_model / --saliency-model)")
    if path.suffix == ".fbz":
        if method != "head":
            raise ValueError(f"{path}: an Akida model gives no gradients; use the forward-only 'head' map")
        return AkidaHeadCAM(path)
    if path.suffix != ".h5":
        raise ValueError(f"{path}: saliency model must be a float Keras .h5 or an Akida .fbz")
    from qana_keras.runtime.load import load_keras_model

    model = load_keras_model(path)  # also loads quantized models
    return KerasHeadCAM(model) if method == "head" else GradCAM(model, layer)
