"""Classification metrics and lesion-level bootstrap intervals (no TensorFlow here)."""
from __future__ import annotations

import numpy as np
import scipy.special
from sklearn.metrics import (balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score)

from qana_keras import CLASSES

FIDELITY_TARGETS = {"top1_drop": 0.005, "macro_f1_drop": 0.01, "argmax_agreement": 0.99, "class_recall_drop": 0.02}
"""Fidelity targets of the integer model against the float one (issue 4), as fractions: conversion fine-tunes
until validation meets them (``conversion.qat``), deploy checks them on test in points (``deploy.TARGETS``)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the classes (axis 1) of (N, classes) logits."""
    return scipy.special.softmax(logits, axis=1)


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int = len(CLASSES)) -> float:
    return float(f1_score(labels, predictions, labels=list(range(num_classes)), average="macro", zero_division=0))


def classification_metrics(labels: np.ndarray, logits: np.ndarray, classes=CLASSES) -> dict:
    """Top-1, balanced accuracy, macro-F1, per-class precision/recall/F1/support, AUC one-vs-rest, confusion."""
    labels = np.asarray(labels)
    predictions = logits.argmax(axis=1)
    k = len(classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=list(range(k)), zero_division=0)
    probabilities = softmax(logits.astype(np.float64))
    per_class = {}
    for i, name in enumerate(classes):
        positives = labels == i
        auc = None
        if 0 < positives.sum() < len(labels):
            auc = float(roc_auc_score(positives, probabilities[:, i]))
        per_class[name] = {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                           "support": int(support[i]), "auc": auc}
    aucs = [v["auc"] for v in per_class.values() if v["auc"] is not None]
    return {
        "n_images": int(len(labels)),
        "top1": float(np.mean(predictions == labels)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
        "macro_f1": macro_f1(labels, predictions, k),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, predictions, labels=list(range(k))).tolist(),
        "classes": list(classes),
    }


METRIC_FUNCTIONS = {
    "top1": lambda y, p: float(np.mean(y == p)),
    "balanced_accuracy": lambda y, p: float(balanced_accuracy_score(y, p)),
    "macro_f1": macro_f1,
}


def headline_metrics(labels, predictions, digits: int = 4) -> dict:
    """Top-1, balanced accuracy and macro-F1 of predicted labels, rounded for printing and JSON."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return {name: round(fn(labels, predictions), digits) for name, fn in METRIC_FUNCTIONS.items()}


def _lesion_resamples(groups: np.ndarray, n_boot: int, seed: int):
    """Yield image-index arrays, each a bootstrap resample of whole lesions (groups)."""
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        picked = rng.integers(0, len(unique), len(unique))
        yield np.concatenate([members[g] for g in picked])


def bootstrap_intervals(labels, predictions, groups, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                        num_classes: int = len(CLASSES)) -> dict:
    """95% intervals of top-1, balanced accuracy and macro-F1, resampling lesions (not images)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    functions = {**METRIC_FUNCTIONS, "macro_f1": lambda y, p: macro_f1(y, p, num_classes)}
    samples = {name: [] for name in functions}
    for idx in _lesion_resamples(np.asarray(groups), n_boot, seed):
        for name, fn in functions.items():
            samples[name].append(fn(labels[idx], predictions[idx]))
    return {name: {"low": float(np.quantile(v, alpha / 2)), "high": float(np.quantile(v, 1 - alpha / 2))}
            for name, v in samples.items()}


def format_difference(d: dict, mark: str = " *") -> str:
    """One paired difference in points, e.g. ``+0.6 [-1.1, +2.6]``, with ``mark`` when it is real."""
    return (f"{100 * d['difference']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
            f"{mark if d['real'] else ''}")


def paired_bootstrap_difference(labels, predictions_a, predictions_b, groups, n_boot: int = 1000, seed: int = 0,
                                alpha: float = 0.05) -> dict:
    """Interval of metric(b) - metric(a) on the same lesion resamples; ``real`` when it excludes zero."""
    labels, a, b = np.asarray(labels), np.asarray(predictions_a), np.asarray(predictions_b)
    out = {}
    diffs = {name: [] for name in METRIC_FUNCTIONS}
    for idx in _lesion_resamples(np.asarray(groups), n_boot, seed):
        for name, fn in METRIC_FUNCTIONS.items():
            diffs[name].append(fn(labels[idx], b[idx]) - fn(labels[idx], a[idx]))
    for name, v in diffs.items():
        low, high = float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))
        out[name] = {"difference": METRIC_FUNCTIONS[name](labels, b) - METRIC_FUNCTIONS[name](labels, a),
                     "low": low, "high": high, "real": bool(low > 0 or high < 0)}
    return out


# ---------------------------------------------------------------------------------------------------
# Fast lesion bootstrap from confusion matrices (evaluate, subgroups, report).
#
# A resample of whole lesions is a vector of counts (how often each lesion was drawn); its confusion
# matrix is that count vector times the per-lesion confusion matrices. The draws are the same as
# ``_lesion_resamples`` (same generator calls), so the intervals equal ``bootstrap_intervals``'s.


def resample_counts(n_units: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_units) counts of each unit (lesion, patient) in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    counts = np.empty((n_boot, n_units), np.int32)
    for b in range(n_boot):
        counts[b] = np.bincount(rng.integers(0, n_units, n_units), minlength=n_units)
    return counts


def group_index(groups) -> tuple[np.ndarray, np.ndarray]:
    """(unique group ids, index of each image's group), groups sorted as ``np.unique`` sorts them."""
    return np.unique(np.asarray(groups), return_inverse=True)


def metrics_from_confusion(cm: np.ndarray, present) -> dict[str, np.ndarray]:
    """Top-1, balanced accuracy, macro-F1 and per-class recall of one or a stack of confusion matrices.

    ``cm`` is (k, k) or (B, k, k), rows true, columns predicted. Macro-F1 averages the F1 of the
    classes in ``present`` (the classes that occur in the evaluated set; an absent class has no F1 to
    speak of); balanced accuracy averages recall over the classes with support in each matrix, as
    sklearn does. Recall of a class without support is NaN.
    """
    cm = np.asarray(cm, dtype=np.float64)
    single = cm.ndim == 2
    if single:
        cm = cm[None]
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    total = cm.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        denominator = support + predicted
        f1 = np.where(denominator > 0, 2 * tp / denominator, 0.0)
        out = {"top1": tp.sum(axis=1) / total,
               "balanced_accuracy": np.nanmean(np.where(support > 0, recall, np.nan), axis=1),
               "macro_f1": f1[:, list(present)].mean(axis=1),
               "recall": recall}
    return {k: v[0] for k, v in out.items()} if single else out


def _interval(values: np.ndarray, alpha: float) -> dict:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"low": None, "high": None}
    return {"low": float(np.quantile(values, alpha / 2)), "high": float(np.quantile(values, 1 - alpha / 2))}


def confusion_bootstrap(labels, predictions, groups, present=None, num_classes: int = len(CLASSES),
                        n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, classes=CLASSES) -> dict:
    """95% intervals (resampling whole groups) of top-1, balanced accuracy, macro-F1 and per-class recall.

    ``present`` defaults to the classes that occur in ``labels``. A class's recall interval is None
    when it has fewer than 1 image in the set.
    """
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    if present is None:
        present = sorted(set(labels.tolist()))
    _, inverse = group_index(groups)
    n_units, k = int(inverse.max()) + 1 if len(inverse) else 0, num_classes
    per_unit = np.bincount(inverse * k * k + labels * k + predictions, minlength=n_units * k * k)
    per_unit = per_unit.reshape(n_units, k * k).astype(np.float64)
    counts = resample_counts(n_units, n_boot, seed)
    cms = (counts @ per_unit).reshape(n_boot, k, k)
    values = metrics_from_confusion(cms, present)
    out = {name: _interval(values[name], alpha) for name in ("top1", "balanced_accuracy", "macro_f1")}
    out["recall"] = {classes[c]: _interval(values["recall"][:, c], alpha) for c in range(k)}
    out.update(n_boot=int(n_boot), seed=int(seed), n_units=n_units)
    return out


def weighted_auc(scores: np.ndarray, positives: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` for ``positives`` under each row of ``weights`` (B, N): ties count half.

    Equal to sklearn's ``roc_auc_score(positives, scores, sample_weight=w)`` for each row w; NaN where a
    row has no positive or no negative weight. Vectorised over rows, so 1000 resamples cost one sort.
    """
    scores, positives = np.asarray(scores), np.asarray(positives, bool)
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    order = np.argsort(scores, kind="mergesort")
    s, pos, w = scores[order], positives[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # blocks of tied scores
    w_pos = np.add.reduceat(w * pos, starts, axis=1)
    w_neg = np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg
    numerator = (w_pos * (below + 0.5 * w_neg)).sum(axis=1)
    denominator = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def auc_bootstrap(labels, probabilities, groups, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                  classes=CLASSES) -> dict:
    """95% intervals of each class's one-vs-rest AUC and of their mean (classes with positives and
    negatives), resampling whole groups with the same draws as ``confusion_bootstrap``."""
    labels = np.asarray(labels)
    _, inverse = group_index(groups)
    weights = resample_counts(int(inverse.max()) + 1, n_boot, seed)[:, inverse]
    per_class, defined = {}, []
    for c, name in enumerate(classes):
        positives = labels == c
        if 0 < positives.sum() < len(labels):
            values = weighted_auc(probabilities[:, c], positives, weights)
            per_class[name] = _interval(values, alpha)
            defined.append(values)
        else:
            per_class[name] = {"low": None, "high": None}
    macro = _interval(np.nanmean(np.stack(defined), axis=0), alpha) if defined else {"low": None, "high": None}
    return {"per_class": per_class, "macro_auc": macro}


def roc_curves(labels, probabilities, classes=CLASSES, decimals: int = 4) -> dict:
    """One-vs-rest ROC curve of each class with positives and negatives: {"fpr": [...], "tpr": [...]}."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels)
    out = {}
    for c, name in enumerate(classes):
        positives = labels == c
        if 0 < positives.sum() < len(labels):
            fpr, tpr, _ = roc_curve(positives, probabilities[:, c])
            out[name] = {"fpr": np.round(fpr, decimals).tolist(), "tpr": np.round(tpr, decimals).tolist()}
    return out


def paired_confusion_bootstrap(labels, predictions_a, predictions_b, groups, present=None,
                               num_classes: int = len(CLASSES), n_boot: int = 1000, seed: int = 0,
                               alpha: float = 0.05) -> dict:
    """``paired_bootstrap_difference`` (metric(b) - metric(a), same lesion resamples, same draws) computed
    from confusion matrices: fast enough for many rows. Macro-F1 averages ``present`` (default: the
    classes in ``labels``)."""
    labels = np.asarray(labels, np.int64)
    if present is None:
        present = sorted(set(labels.tolist()))
    _, inverse = group_index(groups)
    n_units, k = int(inverse.max()) + 1, num_classes
    counts = resample_counts(n_units, n_boot, seed)
    values, points = [], []
    for predictions in (predictions_a, predictions_b):
        predictions = np.asarray(predictions, np.int64)
        per_unit = np.bincount(inverse * k * k + labels * k + predictions, minlength=n_units * k * k)
        per_unit = per_unit.reshape(n_units, k * k).astype(np.float64)
        values.append(metrics_from_confusion((counts @ per_unit).reshape(n_boot, k, k), present))
        points.append(metrics_from_confusion(per_unit.sum(axis=0).reshape(k, k), present))
    out = {}
    for name in ("top1", "balanced_accuracy", "macro_f1"):
        ci = _interval(values[1][name] - values[0][name], alpha)
        out[name] = {"difference": float(points[1][name] - points[0][name]), **ci,
                     "real": bool(ci["low"] > 0 or ci["high"] < 0)}
    return out
