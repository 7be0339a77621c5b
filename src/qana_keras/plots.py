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
    """``per_class_figure`` as a PNG."""
    _save(per_class_figure(metrics, title), path)


def per_class_figure(metrics: dict, title: str = ""):
    """Precision, recall and F1 of each class, with the class support in the labels; recall bars carry their
    95 % lesion-bootstrap interval (``per_class[c]["recall_95"]``) when the metrics have it."""
    classes = metrics["classes"]
    per = metrics["per_class"]
    x = np.arange(len(classes))
    has_ci = all(per[c].get("recall_95", {}).get("low") is not None for c in classes)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k, key in enumerate(("precision", "recall", "f1")):
        values = [per[c][key] for c in classes]
        errors = None
        if key == "recall" and has_ci:
            # matplotlib wants distances below and above the bar, not the interval ends
            errors = [[max(v - per[c]["recall_95"]["low"], 0) for v, c in zip(values, classes)],
                      [max(per[c]["recall_95"]["high"] - v, 0) for v, c in zip(values, classes)]]
        ax.bar(x + (k - 1) * 0.27, values, width=0.27, label=key + (" (95 % interval)" if errors else ""),
               yerr=errors, capsize=2, error_kw={"lw": 0.8})
    ax.set_xticks(x, [f"{c}\n(n={per[c]['support']})" for c in classes])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (0-1)")
    ax.legend(ncol=3, fontsize=8)
    ax.set_title(title)
    return fig


def selected_epoch_of(history: list[dict]) -> int:
    """The epoch training keeps: the first with the best validation macro-F1 (as ``train.train`` selects)."""
    return int(max(history, key=lambda h: h["val_macro_f1"])["epoch"])


def plot_history(history: list[dict], path: str | Path, selected_epoch: int | None = None) -> None:
    """``history_figure`` as a PNG."""
    _save(history_figure(history, selected_epoch), path)


def history_figure(history: list[dict], selected_epoch: int | None = None):
    """Training (and, when recorded, validation) loss and validation macro-F1 / top-1 per epoch, with the
    selected epoch marked (default: the best validation macro-F1)."""
    epochs = [h["epoch"] for h in history]
    selected = selected_epoch if selected_epoch is not None else selected_epoch_of(history)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [h["loss"] for h in history], label="train loss")
    if all(h.get("val_loss") not in (None, "") for h in history):  # histories before val_loss was recorded
        a.plot(epochs, [h["val_loss"] for h in history], label="val loss")
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy")
    b.plot(epochs, [h["val_macro_f1"] for h in history], label="val macro-F1")
    b.plot(epochs, [h["val_top1"] for h in history], label="val top-1")
    b.set_xlabel("epoch")
    b.set_ylabel("validation score")
    for ax in (a, b):
        ax.axvline(selected, color="grey", ls="--", lw=0.8, label=f"selected epoch {selected}")
        ax.legend(fontsize=8)
    return fig


def plot_roc_curves(metrics: dict, path: str | Path, title: str = "") -> None:
    """One-vs-rest ROC curve of each class (from ``metrics["roc_curves"]``), AUC in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, curve in metrics["roc_curves"].items():
        auc = metrics["per_class"][name].get("auc")
        support = metrics["per_class"][name]["support"]
        ax.plot(curve["fpr"], curve["tpr"], lw=1.3, label=f"{name} (AUC {auc:.3f}, n={support})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "ROC, one class vs rest")
    _save(fig, path)


def plot_subgroups(metrics: dict, path: str | Path, title: str = "", keys=("top1", "balanced_accuracy")) -> None:
    """Forest plot: each subgroup's metrics with 95% intervals; grey rows have too few lesions to judge."""
    sub = metrics["subgroups"]
    rows = [(attribute, row) for attribute, group_rows in sub["attributes"].items() for row in group_rows]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 0.28 * len(rows) + 1.2), sharey=True,
                             squeeze=False)
    y = np.arange(len(rows))[::-1]
    labels = [f"{a}: {r['value']} (n={r['n_images']}, {r['n_units']} {sub['unit']})" for a, r in rows]
    for ax, key in zip(axes[0], keys):
        for yi, (_, row) in zip(y, rows):
            ci = row["bootstrap_95"][key]
            color = "lightgrey" if row["too_few"] else "tab:blue"
            if ci["low"] is not None:
                ax.plot([ci["low"], ci["high"]], [yi, yi], color=color, lw=2)
            ax.plot(row[key], yi, "o", color="grey" if row["too_few"] else "black", ms=3.5)
        ax.axvline(metrics[key], color="tab:red", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_xlabel(key.replace("_", " ") + " (red: all images)")
    axes[0][0].set_yticks(y, labels, fontsize=7)
    fig.suptitle(title + f"  (grey: fewer than {sub['min_units']} {sub['unit']}, too few to judge)", fontsize=9)
    _save(fig, path)


def plot_class_counts(counts: dict[str, dict[str, int]], path: str | Path, title: str = "", log_scale: bool = True) -> None:
    """Grouped bars: one group per class, one bar per series (e.g. train/val/test, or real/synthetic)."""
    series = list(counts)
    classes = list(next(iter(counts.values())))
    x = np.arange(len(classes))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k, name in enumerate(series):
        values = [counts[name].get(c, 0) for c in classes]
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width=width, label=name)
        ax.bar_label(bars, fontsize=6)
    ax.set_xticks(x, classes)
    if log_scale:
        ax.set_yscale("log")  # nv outnumbers df about 60 to 1: a linear axis hides the rare classes
    ax.set_ylabel("images" + (" (log scale)" if log_scale else ""))
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(fig, path)


def plot_image_grid(images: np.ndarray, labels: list[str], path: str | Path, columns: int = 7, title: str = "") -> None:
    """uint8 images in a grid, each titled with its label."""
    rows = int(np.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.55 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels):
        ax.imshow(image)
        ax.set_title(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_np_mapping(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Neural processors used (by type) against those available on each device of a mapping report
    (``deploy.virtual_device_report``); devices the model does not fit are marked."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [row["device"] for row in rows]
    y = np.arange(len(rows))[::-1]
    types = sorted({t for row in rows if row.get("ok") for t in row["components"] if t not in ("HRC",)
                    and not t.startswith("SKIP")})
    left = np.zeros(len(rows))
    for t in types:
        used = np.array([row["components"].get(t, 0) if row.get("ok") else 0 for row in rows], float)
        ax.barh(y, used, left=left, label=t, height=0.5)
        left += used
    for yi, row in zip(y, rows):
        available = row.get("nps_available")
        if available:
            ax.plot([available, available], [yi - 0.35, yi + 0.35], color="black", lw=1.5)
        # Several passes: the NPs are summed over them (and may exceed the device's), as the tables say.
        text = ("does not map" if not row.get("ok") else f"{row['nps']} NPs, 1 pass" if row["passes"] == 1
                else f"{row['nps']} NPs summed over {row['passes']} passes")
        ax.text(max(left.max(), max(r.get("nps_available") or 0 for r in rows)) * 1.02, yi, text, va="center",
                fontsize=8, color="black" if row.get("ok") else "tab:red")
    ax.set_yticks(y, names)
    ax.set_xlabel("neural processors used (bars) / available (black tick)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    _save(fig, path)


ONE_PASS_24_NPS = ("two-nodes-v2", "four-nodes-v2", "six-nodes-v2", "akd1500")
"""Standard devices of 24 NPs or fewer (and AKD1500, 32): a model mapping in one pass on one of them fits the chips
people can reach."""


def plot_accuracy_vs_cost(models: list[dict], path: str | Path) -> None:
    _save(accuracy_vs_cost_figure(models), path)


def accuracy_vs_cost_figure(models: list[dict]):
    """Test balanced accuracy and top-1 of every evaluated published model against its Akida MACs
    (circles Akida 2.0, squares Akida 1.0).

    ``models``: the ``models`` rows of ``hardware_table.json``. Filled markers: one hardware pass on a standard
    device of <= 24 NPs (or AKD1500); hollow: needs the 48-NP configuration, several passes, or maps nowhere.
    Hybrids are left out: their MACs count only the part on Akida.
    """
    rows = [m for m in models if m["accuracy"].get("top1") is not None and m.get("macs")
            and not m.get("hybrid_cut_after")]
    folders = [Path(m["model"]).parent for m in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, key, label in ((axes[0], "balanced_accuracy", "balanced accuracy"), (axes[1], "top1", "top-1")):
        # Models at the same point (a model and its readout refits, say) get one marker and one label, not a smear.
        points: dict[tuple, list] = {}
        for m, folder in zip(rows, folders):
            value = m["accuracy"].get(key)
            if value is not None:
                name = folder.name if folders.count(folder) == 1 else f"{folder.name}/{Path(m['model']).stem}"
                small = any(m["devices"][d]["status"] == "one-pass" for d in ONE_PASS_24_NPS if d in m["devices"])
                # The marker (IP version, small device) is part of the key: models that differ there stay apart.
                point = (round(m["macs"] / 1e6, 1), round(100 * value, 2), m["ip"], small)
                points.setdefault(point, []).append((m, name))
        for (macs, value, ip, small), same in points.items():
            m, name = same[0]
            ax.scatter(macs, value, s=40, marker="o" if ip == "v2" else "s",
                       facecolors="tab:blue" if small else "none", edgecolors="tab:blue")
            label_text = name if len(same) == 1 else f"{name} (+{len(same) - 1} more)"
            ax.annotate(label_text, (macs, value), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("Akida MACs per image (millions, log scale)")
        ax.set_ylabel(f"test {label} (%)")
        ax.grid(alpha=0.3)
    axes[0].scatter([], [], facecolors="tab:blue", edgecolors="tab:blue", label="one pass on <= 24 NPs (or AKD1500)")
    axes[0].scatter([], [], facecolors="none", edgecolors="tab:blue", label="needs 48 NPs or several passes")
    axes[0].scatter([], [], marker="o", facecolors="none", edgecolors="gray", label="Akida 2.0 (8 bit)")
    axes[0].scatter([], [], marker="s", facecolors="none", edgecolors="gray", label="Akida 1.0 (4 bit)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Published models: HAM10000 test accuracy of the integer model against chip cost")
    fig.tight_layout()
    return fig
