"""The embedding-space SMOTE head as numbers: PCA whitening, safe anchors, oversampling with a local
perturbation, a logistic-regression head, and its folding into one Dense layer (``qana_keras.refit.head`` has the
formula and the run). NumPy, scikit-learn and imbalanced-learn only: no TensorFlow.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from qana_keras import CLASSES
from qana_keras.io import atomic_path, read_json, write_json

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
    # Not sklearn's PCA(whiten=True): it has no eps floor, its default solver is randomized (approximate) at this
    # size, and its exact "covariance_eigh" solver gives these numbers (tests/test_head.py) in twice the time.
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
