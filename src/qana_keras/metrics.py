"""Classification metrics and lesion-level bootstrap intervals (no TensorFlow here)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score)

from qana_keras import CLASSES


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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


def _lesion_resamples(groups: np.ndarray, n_boot: int, seed: int):
    """Yield image-index arrays, each a bootstrap resample of whole lesions (groups)."""
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        picked = rng.integers(0, len(unique), len(unique))
        yield np.concatenate([members[g] for g in picked])


def bootstrap_intervals(labels, predictions, groups, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """95% intervals of top-1, balanced accuracy and macro-F1, resampling lesions (not images)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    samples = {name: [] for name in METRIC_FUNCTIONS}
    for idx in _lesion_resamples(np.asarray(groups), n_boot, seed):
        for name, fn in METRIC_FUNCTIONS.items():
            samples[name].append(fn(labels[idx], predictions[idx]))
    return {name: {"low": float(np.quantile(v, alpha / 2)), "high": float(np.quantile(v, 1 - alpha / 2))}
            for name, v in samples.items()}


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
