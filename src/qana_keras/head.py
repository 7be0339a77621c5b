"""Embedding-space SMOTE head: refit a trained QANA's last Dense layer on rebalanced embeddings.

The backbone stays frozen. Its penultimate representation (the output of ``head/flatten``, the
input of ``head/dense``) is PCA-whitened, minority classes are oversampled in that space with
imbalanced-learn from *safe anchors* plus a small locally aligned perturbation, and a linear head is
fitted on real + synthetic embeddings. Whitening and head are then folded into one Dense layer,

    logits = W P (x - mu) + b  =  x @ K + c,   K = (W P)^T,   c = b - mu @ K,

where ``P`` (components x D) whitens, ``W`` (classes x components) and ``b`` are the fitted head. The
new model is the original float model with ``head/dense`` replaced by (K, c): same architecture, so
it quantizes and converts exactly like the original, to one Akida dense layer.

Embeddings: ``embedding="quantized"`` (default) fits on the embeddings of the model quantized as
``qana convert`` quantizes it (same calibration draw), i.e. the 8-bit values the Akida dense layer
actually reads, so the head is fitted on the inputs it will see on the chip; the backbone quantizes
identically whatever the head (its calibration never looks at head/dense). quantizeml's calibration
rescales the channels feeding the head (cross-layer equalization) and compensates in the dense
kernel; ``extract_embeddings`` undoes that scaling, so both kinds live in the float model's basis
and one folded kernel serves both. ``embedding="float"`` fits on the float model's embeddings (no
quantization needed; what the saved float .h5 sees).

Run folder artifacts (next to ``<variant>_float.h5``):
  head.npz                    PCA (mean, components, eigenvalues, scale), head (W, b), folded (K, c)
  head.json                   settings, anchors and synthetic counts, val/test metrics vs the original
  <variant>_head_float.h5     the original float model with the folded head
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from qana_keras import CLASSES
from qana_keras.io import RunFolderError, atomic_path, read_json, sha256_file, write_json

if TYPE_CHECKING:  # TensorFlow is imported only where a model is touched: `qana --help` stays fast
    import tf_keras as keras

EMBEDDING_LAYER = "head/flatten"  # its output is exactly what head/dense reads (dropout is identity at inference)
DENSE_LAYER = "head/dense"
EMBEDDINGS = ("quantized", "float")
SAMPLERS = ("none", "smote", "borderline", "svm", "adasyn")

SAFE_ANCHOR_RULE = (
    "In the whitened space of the real training embeddings (Euclidean distance), for each sample i of a "
    "minority class c: same_fraction(i) = share of its safe_k nearest neighbours (all classes, itself "
    "excluded) labelled c; spread(i) = mean distance to its safe_k nearest neighbours within class c. "
    "i is a safe anchor iff same_fraction(i) >= 0.5 AND spread(i) <= median of spread over class c. If a "
    "class has fewer than k_neighbors + 1 safe anchors, the k_neighbors + 1 samples ranked best by "
    "(same_fraction descending, spread ascending) are used instead (recorded as a fallback).")


class HeadError(RuntimeError):
    """The model has no head this module can refit, or a sampler cannot run on the given data."""


@dataclass
class HeadConfig:
    """Settings of one embedding-space head fit.

    The defaults were picked on validation macro-F1 of runs/qana-ref (scripts/head_ablation.py --sweep,
    head_sweep.json): a greedy search over sampler, safe anchors, ratio, noise, C, components and
    embedding. Neighbouring settings differ by less than the validation noise.
    """
    embedding: str = "quantized"  # quantized | float: which backbone's embeddings the head is fitted on
    bits: int = 8  # quantization of the backbone for embedding="quantized" (as `qana convert --bits`)
    calibration: int = 1024  # training images calibrating that quantization (as `qana convert`)
    components: int = 256  # PCA-whitened dimensions
    whiten_eps: float = 1e-5  # added to every eigenvalue, relative to the largest one
    sampler: str = "svm"  # none | smote | borderline | svm (SVMSMOTE) | adasyn (imbalanced-learn)
    ratio: float = 0.5  # every class with fewer samples is oversampled up to ratio x the majority count
    k_neighbors: int = 5  # interpolation neighbours of the sampler
    safe_anchors: bool = True
    safe_k: int = 5  # neighbourhood of the safe-anchor rule and of the local perturbation PCA
    noise: float = 0.1  # perturbation std, as a fraction of the local std along each local principal direction
    class_weight: str = "none"  # none | balanced: loss weights of the linear head (after oversampling)
    C: float = 0.1  # inverse L2 strength of the logistic-regression head (whitened inputs, so one scale fits all)
    seed: int = 0

    def validate(self) -> "HeadConfig":
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"head embedding must be one of {EMBEDDINGS}, not {self.embedding!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"head sampler must be one of {SAMPLERS}, not {self.sampler!r}")
        if self.class_weight not in ("none", "balanced"):
            raise ValueError(f"head class_weight must be 'none' or 'balanced', not {self.class_weight!r}")
        if self.components < 1:
            raise ValueError(f"head components must be >= 1, not {self.components}")
        if self.ratio <= 0 or self.ratio > 1:
            raise ValueError(f"head ratio must be in (0, 1] (a fraction of the majority count), not {self.ratio}")
        if self.noise < 0:
            raise ValueError(f"head noise must be >= 0, not {self.noise}")
        if self.k_neighbors < 1 or self.safe_k < 1:
            raise ValueError(f"head k_neighbors and safe_k must be >= 1, not {self.k_neighbors}, {self.safe_k}")
        if self.bits not in (8, 4):
            raise ValueError(f"head bits must be 8 or 4 (as `qana convert --bits`), not {self.bits}")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "HeadConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown head setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values).validate()


# --------------------------------------------------------------------------------------------------
# Embeddings


def _embedding_layer(model: keras.Model):
    try:
        return model.get_layer(EMBEDDING_LAYER)
    except ValueError:
        raise HeadError(f"model '{model.name}' has no layer '{EMBEDDING_LAYER}': the embedding head needs the "
                        "Flatten -> Dense classifier of qana_keras.models.blocks.classifier_head") from None


def embedding_model(model: keras.Model) -> keras.Model:
    """Sub-model from the image input to the ``head/flatten`` output.

    For a quantizeml model that output is a FixedPoint tensor; a Dequantizer turns it into the float
    values it stands for (a power-of-two scale, exact), so ``predict`` can batch it. Those values are
    still in quantizeml's equalized basis: see ``equalization_rates``.
    """
    import tf_keras as keras

    embedding = keras.Model(model.input, _embedding_layer(model).output, name=f"{model.name}_embedding")
    if not _is_quantized(model):
        return embedding
    from quantizeml.layers import Dequantizer

    # The Dequantizer goes on a new input, not on the model's own tensor: a layer called on that tensor would
    # become a second consumer of head/flatten, and cnn2snn then refuses to convert the model.
    image = keras.Input(model.input.shape[1:], dtype=model.input.dtype)
    out = Dequantizer(name="embedding_dequantizer")(embedding(image))
    return keras.Model(image, out, name=f"{model.name}_embedding_float")


def _is_quantized(model: keras.Model) -> bool:
    """A quantizeml model (its layers come from quantizeml), checked without importing quantizeml."""
    return any(type(layer).__module__.startswith("quantizeml") for layer in model.layers)


def equalization_rates(qmodel: keras.Model) -> np.ndarray:
    """(D,) factors by which quantizeml's calibration scaled each embedding value (1 where it did not).

    Calibration applies cross-layer equalization: the output quantizer of the layer feeding
    ``head/flatten`` (``se/relu``) multiplies channel c by ``rescaling_rate[c]`` (its range snapped
    to a power of two) and ``head/dense``'s kernel rows are divided by the same rate. Dividing the
    dequantized embedding by these rates gives the quantized embedding in the float model's basis,
    the one a folded float ``head/dense`` multiplies; re-quantizing the folded model re-applies the
    same rates (they depend on the backbone and calibration images only).
    """
    flatten = _embedding_layer(qmodel)
    dim = int(np.prod(flatten.output_shape[1:]))
    source = flatten.inbound_nodes[0].inbound_layers
    rate = getattr(getattr(source, "out_quantizer", None), "rescaling_rate", None)
    if rate is None:
        return np.ones(dim)
    rate = np.asarray(rate.numpy(), np.float64).reshape(-1)
    channels = int(flatten.input_shape[-1])
    if rate.size == 1:
        return np.full(dim, rate[0])
    if rate.size != channels or dim % channels:
        raise HeadError(f"'{source.name}' has {rate.size} equalization rates for {channels} channels feeding "
                        f"'{EMBEDDING_LAYER}' ({dim} values); cannot map them onto the embedding")
    # Flatten of (H, W, C) is channel-fastest: value i belongs to channel i % C.
    return np.tile(rate, dim // channels)


def extract_embeddings(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, D) float64 embeddings of uint8 ``images``, in the float model's basis.

    Float model: the ``head/flatten`` output. Quantized model: the dequantized 8-bit values the
    quantized ``head/dense`` reads, divided by quantizeml's equalization rates, i.e. exactly what a
    float kernel row multiplies once the folded model is quantized.
    """
    sub = embedding_model(model)
    if len(images) <= batch_size:
        # One batch: tracing predict's graph (tens of seconds for a quantized model) costs more than running it.
        values = sub(images, training=False).numpy()
    else:
        values = sub.predict(images, batch_size=batch_size, verbose=0)
    values = np.asarray(values, dtype=np.float64).reshape(len(images), -1)
    if _is_quantized(model):
        values = values / equalization_rates(model)
    return values


def calibration_indices(n: int, count: int, seed: int = 0) -> np.ndarray:
    """Training images that calibrate the quantization: the same seeded draw as ``qana convert``."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(count, n), replace=False))


def quantized_backbone(model: keras.Model, train_images: np.ndarray, variant: str, config: HeadConfig,
                       log=print) -> keras.Model:
    """The model quantized as ``qana convert`` would (same calibration draw), for its embeddings.

    The backbone's calibrated ranges do not depend on the head weights, so the folded model quantizes
    to the same integer backbone and its Akida dense layer reads exactly these values.
    """
    from qana_keras.conversion.quantize import quantize_for_akida

    picked = calibration_indices(len(train_images), config.calibration, config.seed)
    qmodel, _ = quantize_for_akida(model, train_images[picked], variant, bits=config.bits, log=log)
    return qmodel


# --------------------------------------------------------------------------------------------------
# PCA whitening


@dataclass
class Whitening:
    """z = (x - mean) @ projection.T with projection = scale[:, None] * components (fitted on train only)."""
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), orthonormal rows, by decreasing eigenvalue
    eigenvalues: np.ndarray  # (k,)
    scale: np.ndarray  # (k,) = 1 / sqrt(eigenvalue + eps * largest eigenvalue)
    total_variance: float

    @property
    def projection(self) -> np.ndarray:
        return self.scale[:, None] * self.components

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) @ self.projection.T

    @property
    def explained_variance(self) -> float:
        return float(self.eigenvalues.sum() / self.total_variance) if self.total_variance > 0 else 0.0


def fit_whitening(x: np.ndarray, components: int, eps: float = 1e-5) -> Whitening:
    """PCA whitening to ``components`` dimensions from an eigendecomposition of the covariance.

    ``eps`` (relative to the largest eigenvalue) bounds the gain of nearly empty directions, whose
    whitened values would otherwise be noise blown up, and whose large folded weights would cost the
    8-bit quantization of the dense layer its resolution.
    """
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if components > min(n - 1, d):
        raise ValueError(f"cannot whiten to {components} dimensions from {n} embeddings of {d} values; "
                         f"use --components <= {min(n - 1, d)}")
    from scipy.linalg import eigh

    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    # Only the top eigenpairs: several times faster than a full decomposition at D = 2048.
    eigenvalues, vectors = eigh(cov, subset_by_index=[d - components, d - 1])
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = np.clip(eigenvalues[order], 0.0, None), vectors[:, order].T
    # eigh's signs are arbitrary: make each component's largest loading positive (reproducible files).
    signs = np.sign(vectors[np.arange(components), np.abs(vectors).argmax(axis=1)])
    vectors *= signs[:, None]
    scale = 1.0 / np.sqrt(eigenvalues + eps * max(eigenvalues[0], 1e-12))
    return Whitening(mean, vectors, eigenvalues, scale, float(np.trace(cov)))


# --------------------------------------------------------------------------------------------------
# Safe anchors, oversampling, local perturbation


def minority_targets(labels: np.ndarray, ratio: float, num_classes: int = len(CLASSES)) -> dict[int, int]:
    """Class -> target count for every class below ``ratio`` x the majority count."""
    counts = np.bincount(labels, minlength=num_classes)
    target = int(round(ratio * counts.max()))
    return {c: target for c in range(num_classes) if 0 < counts[c] < target}


def neighbourhood_stats(z: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(same_fraction, spread) of every sample, as defined in ``SAFE_ANCHOR_RULE``."""
    from sklearn.neighbors import NearestNeighbors

    n = len(z)
    if n <= k:
        raise ValueError(f"safe anchors need more than safe_k={k} training embeddings, got {n}")
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    # Column 0 is the point itself (distance 0) unless duplicates tie; drop self explicitly.
    neighbours = np.array([[j for j in row if j != i][:k] for i, row in enumerate(idx)])
    same_fraction = (labels[neighbours] == labels[:, None]).mean(axis=1)
    spread = np.full(n, np.inf)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        kc = min(k, len(members) - 1)
        if kc < 1:
            continue
        dist, _ = NearestNeighbors(n_neighbors=kc + 1).fit(z[members]).kneighbors(z[members])
        spread[members] = dist[:, 1:].mean(axis=1)
    return same_fraction, spread


def safe_anchor_mask(z: np.ndarray, labels: np.ndarray, classes, k: int = 5, min_anchors: int = 6) -> tuple[
        np.ndarray, dict]:
    """Boolean mask of the anchors of ``classes`` (others False) and per-class counts; see ``SAFE_ANCHOR_RULE``."""
    same_fraction, spread = neighbourhood_stats(z, labels, k)
    mask = np.zeros(len(labels), bool)
    report = {}
    for c in classes:
        members = np.flatnonzero(labels == c)
        median = float(np.median(spread[members]))
        safe = members[(same_fraction[members] >= 0.5) & (spread[members] <= median)]
        fallback = len(safe) < min_anchors
        if fallback:
            ranked = members[np.lexsort((spread[members], -same_fraction[members]))]
            safe = ranked[:min(min_anchors, len(members))]
        mask[safe] = True
        report[CLASSES[c]] = {"samples": int(len(members)), "anchors": int(len(safe)), "fallback": bool(fallback),
                              "median_spread": median,
                              "mostly_own_class": int(np.sum(same_fraction[members] >= 0.5))}
    return mask, report


def _sampler(name: str, k: int, strategy: dict, seed: int):
    from imblearn.over_sampling import ADASYN, SMOTE, SVMSMOTE, BorderlineSMOTE

    if name == "smote":
        return SMOTE(sampling_strategy=strategy, k_neighbors=k, random_state=seed)
    if name == "borderline":
        return BorderlineSMOTE(sampling_strategy=strategy, k_neighbors=k, m_neighbors=2 * k, random_state=seed)
    if name == "svm":
        return SVMSMOTE(sampling_strategy=strategy, k_neighbors=k, m_neighbors=2 * k, random_state=seed)
    if name == "adasyn":
        return ADASYN(sampling_strategy=strategy, n_neighbors=k, random_state=seed)
    raise ValueError(f"unknown sampler {name!r}; known: {SAMPLERS}")


def local_frames(z: np.ndarray, anchors: np.ndarray, k: int) -> np.ndarray:
    """(len(anchors), r, dim): each anchor's local principal directions scaled by their local std.

    The local PCA is that of the anchor and its k nearest anchors of the same class (all ``anchors``
    are one class), so a perturbation along these rows follows the class's local shape.
    """
    from sklearn.neighbors import NearestNeighbors

    points = z[anchors]
    kk = min(k, len(anchors) - 1)
    r = max(kk, 1)
    frames = np.zeros((len(anchors), r, z.shape[1]))
    if kk < 1:
        return frames
    _, idx = NearestNeighbors(n_neighbors=kk + 1).fit(points).kneighbors(points)
    for i, row in enumerate(idx):
        local = points[row] - points[row].mean(axis=0)
        _, s, vt = np.linalg.svd(local, full_matrices=False)
        std = s / np.sqrt(max(len(row) - 1, 1))
        frames[i, :len(std[:r])] = (std[:r, None] * vt[:r])
    return frames


def oversample(z: np.ndarray, labels: np.ndarray, config: HeadConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Synthetic whitened embeddings for the minority classes: (z_new, labels_new, report).

    Per minority class c the sampler is fitted on c's anchors (safe anchors, or all of c) plus every
    real sample of the other classes (borderline/SVM/ADASYN use those to find c's border), asked
    for (target - real count of c) new samples, and each new sample is moved by
    ``noise`` x N(0, I) along the local frame of its nearest anchor (``local_frames``).
    """
    config.validate()
    targets = minority_targets(labels, config.ratio)
    report = {"targets": {CLASSES[c]: t for c, t in targets.items()}, "anchors": None, "generated": {}}
    if config.sampler == "none" or not targets:
        return np.zeros((0, z.shape[1])), np.zeros(0, np.int64), report
    if config.safe_anchors:
        anchor_mask, report["anchors"] = safe_anchor_mask(z, labels, list(targets), config.safe_k,
                                                          min_anchors=config.k_neighbors + 1)
    else:
        anchor_mask = np.isin(labels, list(targets))
    rng = np.random.default_rng(config.seed)
    new_z, new_y = [], []
    for c, target in targets.items():
        anchors = np.flatnonzero(anchor_mask & (labels == c))
        need = target - int(np.sum(labels == c))
        others = np.flatnonzero(labels != c)
        fit_idx = np.concatenate([anchors, others])
        k = min(config.k_neighbors, len(anchors) - 1)
        if k < 1:
            raise HeadError(f"class {CLASSES[c]}: {len(anchors)} anchor(s), too few to interpolate; "
                            "lower k_neighbors or disable safe anchors")
        sampler = _sampler(config.sampler, k, {c: len(anchors) + need}, config.seed)
        try:
            z_res, y_res = sampler.fit_resample(z[fit_idx], labels[fit_idx])
        except (RuntimeError, ValueError) as error:
            # ADASYN refuses a class none of whose anchors has another class nearby; record, don't hide.
            report["generated"][CLASSES[c]] = {"need": need, "made": 0, "error": str(error).splitlines()[0]}
            continue
        made = z_res[len(fit_idx):]
        if np.any(y_res[len(fit_idx):] != c):
            raise HeadError(f"sampler {config.sampler} returned samples of other classes for {CLASSES[c]}")
        if config.noise > 0 and len(made):
            from sklearn.neighbors import NearestNeighbors

            frames = local_frames(z, anchors, config.safe_k)
            nearest = NearestNeighbors(n_neighbors=1).fit(z[anchors]).kneighbors(made, return_distance=False)[:, 0]
            eps = rng.standard_normal((len(made), frames.shape[1]))
            made = made + config.noise * np.einsum("nr,nrd->nd", eps, frames[nearest])
        new_z.append(made)
        new_y.append(np.full(len(made), c, np.int64))
        report["generated"][CLASSES[c]] = {"need": need, "made": int(len(made)), "anchors": int(len(anchors))}
    if not new_z:
        return np.zeros((0, z.shape[1])), np.zeros(0, np.int64), report
    return np.concatenate(new_z), np.concatenate(new_y), report


# --------------------------------------------------------------------------------------------------
# Linear head, folding


def fit_linear_head(z: np.ndarray, labels: np.ndarray, config: HeadConfig,
                    num_classes: int = len(CLASSES)) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (L2, lbfgs) on whitened embeddings: (W (classes x k), b (classes,)).

    Chosen over a Keras Dense trained with Adam because the problem is convex: one deterministic
    optimum per (data, C), no epochs, learning rate or early stopping to tune on validation.
    """
    from sklearn.linear_model import LogisticRegression

    present = np.unique(labels)
    if len(present) != num_classes:
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        raise HeadError(f"classes {[CLASSES[m] for m in missing]} have no training embedding; cannot fit a "
                        f"{num_classes}-class head")
    clf = LogisticRegression(C=config.C, max_iter=5000, tol=1e-4,
                             class_weight="balanced" if config.class_weight == "balanced" else None)
    clf.fit(z, labels)
    return clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)


def fold_head(whitening: Whitening, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keras Dense (kernel (D, classes), bias) computing ``weight @ whiten(x) + bias``."""
    kernel = whitening.projection.T @ weight.T
    return kernel, bias - whitening.mean @ kernel


def with_dense(model: keras.Model, kernel: np.ndarray, bias: np.ndarray) -> keras.Model:
    """A copy of ``model`` (same layers and names) whose ``head/dense`` holds (kernel, bias)."""
    try:
        dense = model.get_layer(DENSE_LAYER)
    except ValueError:
        raise HeadError(f"model '{model.name}' has no layer '{DENSE_LAYER}' to replace") from None
    old_kernel, old_bias = dense.get_weights()
    if old_kernel.shape != kernel.shape or old_bias.shape != bias.shape:
        raise HeadError(f"'{DENSE_LAYER}' of '{model.name}' is {old_kernel.shape} + {old_bias.shape}; the folded "
                        f"head is {kernel.shape} + {bias.shape} (was the head fitted on another model?)")
    import tf_keras as keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.get_layer(DENSE_LAYER).set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return clone


# --------------------------------------------------------------------------------------------------
# One fit, artifacts


@dataclass
class FittedHead:
    config: HeadConfig
    whitening: Whitening
    weight: np.ndarray
    bias: np.ndarray
    kernel: np.ndarray
    folded_bias: np.ndarray
    report: dict

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """head(whiten(x)): the logits the folded Dense layer computes."""
        return self.whitening.transform(embeddings) @ self.weight.T + self.bias


def fit_head(train_embeddings: np.ndarray, train_labels: np.ndarray, config: HeadConfig,
             whitening: Whitening | None = None, synthetic: tuple | None = None) -> FittedHead:
    """Whiten (train only), oversample, fit the linear head and fold it; ``report`` says what was made.

    Several heads compared on one backbone can share ``whitening`` (fitted on these training
    embeddings with these settings) and ``synthetic`` (an ``oversample`` result in that whitened
    space, e.g. while only C varies).
    """
    config.validate()
    if whitening is None:
        whitening = fit_whitening(train_embeddings, config.components, config.whiten_eps)
    elif len(whitening.scale) != config.components:
        raise ValueError(f"the given whitening has {len(whitening.scale)} components, the config asks {config.components}")
    z = whitening.transform(train_embeddings)
    z_new, y_new, report = synthetic if synthetic is not None else oversample(z, train_labels, config)
    z_all, y_all = np.concatenate([z, z_new]), np.concatenate([train_labels, y_new])
    weight, bias = fit_linear_head(z_all, y_all, config)
    kernel, folded_bias = fold_head(whitening, weight, bias)
    report = {**report, "real": np.bincount(train_labels, minlength=len(CLASSES)).tolist(),
              "synthetic": np.bincount(y_new, minlength=len(CLASSES)).tolist(),
              "explained_variance": whitening.explained_variance}
    return FittedHead(config, whitening, weight, bias, kernel, folded_bias, report)


def save_head(head: FittedHead, npz_path: str | Path, json_path: str | Path, extra: dict | None = None) -> None:
    """Plain arrays in ``npz_path`` (no pickle) and settings + report in ``json_path``, both atomic."""
    arrays = {"mean": head.whitening.mean, "components": head.whitening.components,
              "eigenvalues": head.whitening.eigenvalues, "scale": head.whitening.scale,
              "total_variance": np.array(head.whitening.total_variance),
              "weight": head.weight, "bias": head.bias, "kernel": head.kernel, "folded_bias": head.folded_bias}
    with atomic_path(npz_path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    meta = {"config": asdict(head.config), "classes": list(CLASSES), "arrays": {k: list(v.shape) for k, v in
                                                                                  arrays.items()},
            "folding": "logits = embedding @ kernel + folded_bias = weight @ (scale * components @ (embedding - mean))"
                       " + bias", "safe_anchor_rule": SAFE_ANCHOR_RULE, "report": head.report, **(extra or {})}
    write_json(json_path, meta)


def load_head(npz_path: str | Path, json_path: str | Path) -> FittedHead:
    """Inverse of ``save_head`` (``allow_pickle=False``: the file holds numbers only)."""
    meta = read_json(json_path)
    with np.load(npz_path, allow_pickle=False) as a:
        arrays = {k: a[k] for k in a.files}
    whitening = Whitening(arrays["mean"], arrays["components"], arrays["eigenvalues"], arrays["scale"],
                          float(arrays["total_variance"]))
    return FittedHead(HeadConfig.from_dict(meta["config"]), whitening, arrays["weight"], arrays["bias"],
                      arrays["kernel"], arrays["folded_bias"], meta.get("report", {}))


def head_paths(run_dir: str | Path, variant: str) -> dict[str, Path]:
    run_dir = Path(run_dir)
    return {"float": run_dir / f"{variant}_float.h5", "npz": run_dir / "head.npz", "json": run_dir / "head.json",
            "model": run_dir / f"{variant}_head_float.h5"}


def run_embeddings(model: keras.Model, data: dict, variant: str, kinds, config: HeadConfig, log=print) -> dict:
    """{kind: {split: (N, D) embeddings}} for the float and/or quantized backbone, all splits."""
    out = {}
    for kind in kinds:
        began = time.perf_counter()
        source = model if kind == "float" else quantized_backbone(model, data["train"].images, variant, config, log)
        out[kind] = {split: extract_embeddings(source, d.images) for split, d in data.items()}
        log(f"{kind} embeddings of {', '.join(f'{s} {len(d)}' for s, d in data.items())} "
            f"in {time.perf_counter() - began:.0f}s")
    return out


def split_report(labels, logits, groups, baseline_logits, seed: int = 0, n_boot: int = 1000) -> dict:
    """classification_metrics + lesion bootstrap intervals + paired difference against the baseline."""
    from qana_keras.metrics import bootstrap_intervals, classification_metrics, paired_bootstrap_difference

    metrics = classification_metrics(labels, logits)
    pred = logits.argmax(1)
    metrics["bootstrap_95"] = bootstrap_intervals(labels, pred, groups, n_boot=n_boot, seed=seed)
    metrics["vs_original_95"] = paired_bootstrap_difference(labels, baseline_logits.argmax(1), pred, groups,
                                                            n_boot=n_boot, seed=seed)
    return metrics


def head_run(run_dir: str | Path, config: HeadConfig | None = None, overwrite: bool = False, data=None,
             n_boot: int = 1000, log=print) -> dict:
    """Fit the embedding-space head of ``run_dir``'s float model; write head.npz/json and the new model.

    Metrics (validation and the lesion-level test split, lesion bootstrap, paired against the
    original model): ``float`` is the saved float model; ``quantized_embedding`` applies the folded
    head to the quantized backbone's embeddings (what the Akida dense layer reads) in float, i.e.
    before the dense weights are themselves quantized. ``data`` overrides loading the run's splits.
    """
    from qana_keras.config import load_config
    from qana_keras.runs import load_splits

    began = time.perf_counter()
    config = (config or HeadConfig()).validate()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise RunFolderError(f"{run_dir}: no config.yaml; train a model there first (`qana train --run {run_dir}`)")
    run_config = load_config(run_dir / "config.yaml")
    variant = run_config.model.variant
    paths = head_paths(run_dir, variant)
    if not paths["float"].exists():
        raise FileNotFoundError(f"{paths['float']} not found; the run has not saved a float model yet")
    existing = [str(p) for key, p in paths.items() if key != "float" and p.exists()]
    if existing and not overwrite:
        raise RunFolderError(f"head artifacts already exist ({', '.join(existing)}); pass --overwrite to replace them")

    from qana_keras.safe_load import load_keras_model

    model = load_keras_model(paths["float"])
    data = data if data is not None else load_splits(run_config.data, log=log)
    kinds = ["float"] + (["quantized"] if config.embedding == "quantized" else [])
    embeddings = run_embeddings(model, data, variant, kinds, config, log)
    head = fit_head(embeddings[config.embedding]["train"], data["train"].labels, config)
    new_model = with_dense(model, head.kernel, head.folded_bias)

    metrics = {}
    for split in ("val", "test"):
        d = data[split]
        groups = d.frame["lesion_id"].to_numpy()
        baseline = model.predict(d.images, batch_size=256, verbose=0)
        new_logits = new_model.predict(d.images, batch_size=256, verbose=0)
        metrics[split] = {name: split_report(d.labels, logits, groups, baseline, config.seed, n_boot)
                          for name, logits in (("float", new_logits), ("original_float", baseline))}
        if "quantized" in embeddings:
            metrics[split]["quantized_embedding"] = split_report(
                d.labels, head.logits(embeddings["quantized"][split]), groups, baseline, config.seed, n_boot)
        m, o = metrics[split]["float"], metrics[split]["original_float"]
        diff = m["vs_original_95"]["macro_f1"]
        log(f"{split}: macro-F1 {m['macro_f1']:.4f} (original {o['macro_f1']:.4f}, difference {diff['difference']:+.4f} "
            f"[{diff['low']:+.4f}, {diff['high']:+.4f}])  balanced acc {m['balanced_accuracy']:.4f}  "
            f"top-1 {m['top1']:.4f}")

    with atomic_path(paths["model"]) as tmp:
        new_model.save(tmp, include_optimizer=False, save_format="h5")
    save_head(head, paths["npz"], paths["json"], extra={
        "variant": variant, "source_model": paths["float"].name, "source_sha256": sha256_file(paths["float"]),
        "model": paths["model"].name, "embedding_layer": EMBEDDING_LAYER, "dense_layer": DENSE_LAYER,
        "metrics": metrics, "bootstrap": f"{n_boot} resamples of lesions (lesion_id), paired with the original model",
        "seconds": round(time.perf_counter() - began, 1)})
    log(f"wrote {paths['npz'].name}, {paths['json'].name}, {paths['model'].name} in {run_dir} "
        f"({time.perf_counter() - began:.0f}s)")
    return read_json(paths["json"])
