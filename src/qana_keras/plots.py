"""PNG figures from metrics dictionaries (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qana_keras.io import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_confusion_matrix(metrics: dict, path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix with raw counts in each cell."""
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    classes = metrics["classes"]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"top-1 {metrics['top1']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
    fig.colorbar(im, ax=ax, label="recall (row-normalised)")
    _save(fig, path)


def plot_per_class(metrics: dict, path: str | Path, title: str = "") -> None:
    """Precision, recall and F1 of each class, with the class support in the labels."""
    classes = metrics["classes"]
    per = metrics["per_class"]
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, [per[c][key] for c in classes], width=0.27, label=key)
    ax.set_xticks(x, [f"{c}\n(n={per[c]['support']})" for c in classes])
    ax.set_ylim(0, 1)
    ax.legend(ncol=3, fontsize=8)
    ax.set_title(title)
    _save(fig, path)


def plot_history(history: list[dict], path: str | Path) -> None:
    """Training loss and validation macro-F1 / top-1 per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [h["loss"] for h in history], label="train loss")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(epochs, [h["val_macro_f1"] for h in history], label="val macro-F1")
    b.plot(epochs, [h["val_top1"] for h in history], label="val top-1")
    b.set_xlabel("epoch")
    b.legend()
    _save(fig, path)
