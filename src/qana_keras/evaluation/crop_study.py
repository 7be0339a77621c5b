"""The crop study: whole image vs saliency crop (+ 2x2 tiling fallback) vs mask crop, on the lesion-level split,
and the overlay figures that show the boxes."""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from qana_keras import CLASSES
from qana_keras.crop.geometry import (MASK_DIR, CropParams, box_iou, centred, crop_images, image_shapes, mask_boxes,
                                      saliency_boxes, salient_box, tile_boxes, upsample_map)
from qana_keras.data.images import read_rgb
from qana_keras.io import atomic_path, display_path


# --------------------------------------------------------------------------------------------------
# Tiling fallback


def combine_views(crop_probs: np.ndarray, tile_probs: np.ndarray) -> np.ndarray:
    """Mean softmax of the crop ``(N, K)`` and the tiles ``(N, T, K)``."""
    return (crop_probs + tile_probs.sum(axis=1)) / (1 + tile_probs.shape[1])


def apply_fallback(crop_probs: np.ndarray, combined_probs: np.ndarray, threshold: float):
    """Predictions ``(N,)`` (combined where the crop's max softmax < threshold) and the trigger mask."""
    triggered = crop_probs.max(axis=1) < threshold
    return np.where(triggered, combined_probs.argmax(1), crop_probs.argmax(1)), triggered


def choose_fallback_threshold(labels: np.ndarray, crop_probs: np.ndarray, combined_probs: np.ndarray,
                              candidates: int = 41) -> dict:
    """The confidence threshold (0 = never, quantiles of the confidence, above 1 = always) with the best macro-F1.

    Ties go to the lower trigger rate (less compute). Chosen on validation, applied to test unchanged.
    """
    from qana_keras.metrics import macro_f1

    confidence = crop_probs.max(axis=1)
    grid = np.unique(np.concatenate([[0.0], np.quantile(confidence, np.linspace(0, 1, candidates)), [1.0 + 1e-6]]))
    best, curve = None, []
    for t in grid:
        predictions, triggered = apply_fallback(crop_probs, combined_probs, float(t))
        key = (macro_f1(labels, predictions), -float(triggered.mean()))
        curve.append({"threshold": float(t), "trigger_rate": -key[1], "macro_f1": key[0]})
        if best is None or key > best[0]:
            best = (key, float(t))
    (f1, neg_rate), threshold = best
    return {"threshold": threshold, "val_macro_f1": f1, "val_trigger_rate": -neg_rate, "val_curve": curve,
            "rule": "crop max-softmax < threshold -> mean softmax of crop + 2x2 tiles; threshold = best validation "
                    "macro-F1 over quantiles of the confidence (ties: fewer triggers)"}



# --------------------------------------------------------------------------------------------------
# Evaluation: whole image vs saliency crop (+ tiling) vs mask crop, on the lesion-level split


VARIANTS = ("whole", "saliency_crop", "saliency_crop_tiling", "mask_crop", "centre_crop")


def _distribution(values: np.ndarray) -> dict:
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return {"n": 0}
    counts, edges = np.histogram(values, bins=10, range=(0.0, 1.0))
    return {"n": int(len(values)), "mean": float(values.mean()), "median": float(np.median(values)),
            **{f"q{q}": float(np.quantile(values, q / 100)) for q in (10, 25, 75, 90)},
            **{f"fraction_ge_{t}": float(np.mean(values >= t)) for t in (0.3, 0.5, 0.7)},
            "histogram": {"edges": [round(float(e), 2) for e in edges], "counts": counts.tolist()}}


def _scores(labels, probabilities, groups, n_boot: int, seed: int) -> dict:
    from qana_keras.metrics import bootstrap_intervals, classification_metrics

    m = classification_metrics(labels, np.log(np.clip(probabilities, 1e-12, 1.0)))
    out = {k: m[k] for k in ("n_images", "top1", "balanced_accuracy", "macro_f1", "macro_auc")}
    out["recall"] = {c: v["recall"] for c, v in m["per_class"].items()}
    out["bootstrap_95"] = bootstrap_intervals(labels, probabilities.argmax(1), groups, n_boot=n_boot, seed=seed)
    return out


def load_classifier(path):
    """A .h5 or .fbz classifier and its input size."""
    from qana_keras.runtime.load import input_shape, load_model_any

    model = load_model_any(path)
    return model, int(input_shape(model)[0])


def _predict_probs(model, images: np.ndarray) -> np.ndarray:
    from qana_keras.runtime.load import predict_logits
    from qana_keras.metrics import softmax

    return softmax(np.asarray(predict_logits(model, images, 100), np.float64))


def split_table(data_dir, split: str, split_file, max_images: int = 0, seed: int = 0):
    """Metadata rows of one split of the lesion-level split file (optionally a class-stratified subset)."""
    from qana_keras.data.dataset import _subset
    from qana_keras.evaluation.evaluate import load_dataset

    meta = load_dataset(data_dir, "ham10000", split, split_file)
    return _subset(meta, max_images, seed).reset_index(drop=True)


def crop_views(meta, saliency, size: int, params: CropParams, mask_dir, cache_dir, overlap: float = 0.25,
               log=print) -> dict:
    """Everything the evaluation needs for ``meta``'s images: maps, boxes, and the crops/tiles at ``size``.

    ``cache_dir`` None decodes the whole images without caching them (a handful of overlay images).
    """
    from qana_keras.data.cache import decode_images, load_cached_images

    paths = meta["path"].tolist()

    def load_whole(n):
        if cache_dir is None:
            return decode_images(paths, n)
        return load_cached_images(paths, n, cache_dir, name="ham10000", log=log)
    shapes = image_shapes(paths)
    whole_saliency = load_whole(saliency.input_size)
    maps, saliency_logits = saliency(whole_saliency)
    raw_s, box_s = saliency_boxes(maps, shapes, params)
    raw_m, box_m, empty = mask_boxes(meta["image_id"].tolist(), mask_dir, shapes, params)
    # Controls with no saliency at all: the same boxes moved to the centre of the frame.
    raw_c = np.array([centred(b, h, w) for b, (h, w) in zip(raw_s, shapes)], np.int64).reshape(-1, 4)
    box_c = np.array([centred(b, h, w) for b, (h, w) in zip(box_s, shapes)], np.int64).reshape(-1, 4)
    tiles = [np.array([tile_boxes(h, w, overlap)[t] for h, w in shapes]) for t in range(4)]
    crops = crop_images(paths, [box_s, box_m, box_c, *tiles], size)
    whole = load_whole(size)
    return {"shapes": shapes, "maps": maps, "saliency_logits": saliency_logits, "salient_box": raw_s,
            "saliency_crop_box": box_s, "mask_box": raw_m, "mask_crop_box": box_m, "mask_empty": empty,
            "centred_box": raw_c, "whole": whole, "saliency_crop": crops[0], "mask_crop": crops[1],
            "centre_crop": crops[2], "tiles": np.stack(crops[3:], axis=1)}


def evaluate_crops(model_path, saliency_path, method: str = "head", params: CropParams = CropParams(),
                   data_dir=None, split_file=None, cache_dir=None, mask_dir=None, baseline_path=None,
                   gradcam_layer: str | None = None, overlap: float = 0.25, n_boot: int = 1000, seed: int = 0,
                   max_images: int = 0, log=print) -> dict:
    """Whole image, saliency crop, saliency crop + tiling fallback and mask crop, on validation and test.

    ``model_path`` classifies the crops (and the tiles); ``baseline_path`` (default: the same model) classifies
    the whole images, the reference of the paired lesion-bootstrap differences. The fallback threshold is
    chosen on validation and applied unchanged to test. IoU compares the salient box (before margin and
    squaring) with the mask's bounding box, and the two crop boxes with each other.
    """
    from qana_keras.data.cache import load_cached_images
    from qana_keras.crop.saliency import load_saliency

    began = time.perf_counter()
    classifier, size = load_classifier(model_path)
    baseline, baseline_size = (classifier, size) if baseline_path in (None, model_path) else load_classifier(
        baseline_path)
    saliency = load_saliency(saliency_path, method, gradcam_layer)
    report = {"classifier": str(model_path), "baseline": str(baseline_path or model_path),
              "saliency_model": str(saliency_path), "saliency": method,
              "saliency_layer": getattr(saliency, "layer", "head/flatten input"),
              "params": asdict(params), "tile_overlap": overlap, "split_file": str(split_file),
              "mask_dir": str(mask_dir), "max_images": max_images, "n_boot": n_boot}
    per_split = {}
    for split in ("val", "test"):
        start = time.perf_counter()
        meta = split_table(data_dir, split, split_file, max_images, seed)
        labels = meta["dx"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
        views = crop_views(meta, saliency, size, params, mask_dir, cache_dir, overlap, log=log)
        whole = views["whole"] if baseline_size == size else load_cached_images(
            meta["path"].tolist(), baseline_size, cache_dir, name="ham10000", log=log)
        probs = {"whole": _predict_probs(baseline, whole),
                 "saliency_crop": _predict_probs(classifier, views["saliency_crop"]),
                 "mask_crop": _predict_probs(classifier, views["mask_crop"]),
                 "centre_crop": _predict_probs(classifier, views["centre_crop"])}
        tiles = views["tiles"]
        tile_probs = _predict_probs(classifier, tiles.reshape(-1, *tiles.shape[2:])).reshape(len(meta), 4, -1)
        per_split[split] = {"meta": meta, "labels": labels, "views": views, "probs": probs,
                            "combined": combine_views(probs["saliency_crop"], tile_probs),
                            "seconds": time.perf_counter() - start}
        log(f"{split}: {len(meta)} images, saliency + crops + 8 classifier views in "
            f"{per_split[split]['seconds']:.0f}s")

    with warnings.catch_warnings():  # bootstrap resamples without some class make sklearn warn on every draw
        warnings.simplefilter("ignore", UserWarning)
        return _score_splits(report, per_split, n_boot, seed, began)


def _score_splits(report: dict, per_split: dict, n_boot: int, seed: int, began: float) -> dict:
    from qana_keras.metrics import paired_bootstrap_difference

    val = per_split["val"]
    fallback = choose_fallback_threshold(val["labels"], val["probs"]["saliency_crop"], val["combined"])
    report["fallback"] = fallback
    for split, s in per_split.items():
        predictions, triggered = apply_fallback(s["probs"]["saliency_crop"], s["combined"], fallback["threshold"])
        tiled = np.where(triggered[:, None], s["combined"], s["probs"]["saliency_crop"])
        s["probs"]["saliency_crop_tiling"] = tiled
        groups = s["meta"]["lesion_id"].to_numpy()
        labels = s["labels"]
        views = s["views"]
        ok = ~views["mask_empty"]
        out = {"n_images": int(len(labels)), "n_lesions": int(len(np.unique(groups))),
               "mask_empty": int((~ok).sum()), "seconds": round(s["seconds"], 1)}
        iou_raw = np.array([box_iou(a, b) for a, b in zip(views["salient_box"][ok], views["mask_box"][ok])])
        iou_crop = np.array([box_iou(a, b) for a, b in zip(views["saliency_crop_box"][ok], views["mask_crop_box"][ok])])
        iou_centre = np.array([box_iou(a, b) for a, b in zip(views["centred_box"][ok], views["mask_box"][ok])])
        out["iou"] = {"salient_box_vs_mask_box": _distribution(iou_raw),
                      "crop_box_vs_mask_crop_box": _distribution(iou_crop),
                      "centred_salient_box_vs_mask_box": _distribution(iou_centre),
                      "per_class_mean_salient_vs_mask": {
                          c: float(iou_raw[labels[ok] == i].mean()) if np.any(labels[ok] == i) else None
                          for i, c in enumerate(CLASSES)}}
        shapes = views["shapes"]
        def area(name, rows=slice(None)):
            b = views[name][rows]
            return float(np.mean((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / shapes[rows].prod(1)))
        out["box_area_fraction"] = {"salient_box": area("salient_box"), "saliency_crop_box": area("saliency_crop_box"),
                                    "mask_box": area("mask_box", ok)}
        out["variants"] = {v: _scores(labels, s["probs"][v], groups, n_boot, seed) for v in VARIANTS}
        whole_pred = s["probs"]["whole"].argmax(1)
        out["paired_vs_whole"] = {v: paired_bootstrap_difference(labels, whole_pred, s["probs"][v].argmax(1), groups,
                                                                 n_boot=n_boot, seed=seed)
                                  for v in VARIANTS[1:]}
        out["tiling"] = {"threshold": fallback["threshold"], "triggered": int(triggered.sum()),
                         "trigger_rate": float(triggered.mean()),
                         "trigger_rate_per_class": {c: float(triggered[labels == i].mean()) if np.any(labels == i)
                                                    else None for i, c in enumerate(CLASSES)},
                         "changed_predictions": int(np.sum(predictions != s["probs"]["saliency_crop"].argmax(1)))}
        if split == "val":
            out["note"] = "the fallback threshold was chosen on this split: its tiling scores are optimistic"
            out["threshold_sweep"] = threshold_sweep(views["maps"][ok], shapes[ok], views["mask_box"][ok])
        report[split] = out
    report["seconds"] = round(time.perf_counter() - began, 1)
    return report


def crop_setup(model_path, saliency_model=None, saliency=None, baseline=None, threshold=None, margin=None,
               data_dir=None, split_file=None, cache_dir=None, mask_dir=None) -> dict:
    """Arguments of :func:`evaluate_crops`: explicit values, else the ``config.yaml`` beside the classifier.

    For a classifier trained on saliency crops, the saliency model (and the whole-image baseline) default to
    its ``data.crop_model``; for a whole-image classifier, to the classifier itself.
    """
    from qana_keras.config import Config, load_config
    from qana_keras.evaluation.evaluate import cache_dir_for

    model_path = Path(model_path)
    config_path = model_path.parent / "config.yaml"
    data = (load_config(config_path) if config_path.exists() else Config()).data
    crop_trained = data.crop == "saliency"
    saliency_model = saliency_model or (data.crop_model if crop_trained else str(model_path))
    data_dir = data_dir or data.data_dir
    return {"model_path": str(model_path), "saliency_path": str(saliency_model),
            "method": saliency or data.crop_saliency,
            "baseline_path": str(baseline or (saliency_model if crop_trained else model_path)),
            "params": CropParams(threshold=data.crop_threshold if threshold is None else threshold,
                                 margin=data.crop_margin if margin is None else margin),
            "data_dir": str(data_dir), "split_file": str(split_file or data.split_file),
            "cache_dir": cache_dir_for(cache_dir, data),
            "mask_dir": str(mask_dir or data.mask_dir or Path(data_dir) / MASK_DIR),
            "classifier_trained_on": data.crop}


def saliency_agreement(meta, first, second, params: CropParams, cache_dir, log=print) -> dict:
    """How far two saliency models agree (e.g. a float .h5 and its Akida .fbz): crop-box IoU, map correlation."""
    from qana_keras.data.cache import load_cached_images

    paths = meta["path"].tolist()
    shapes = image_shapes(paths)
    out = []
    for saliency in (first, second):
        whole = load_cached_images(paths, saliency.input_size, cache_dir, name="ham10000", log=log)
        maps, logits = saliency(whole)
        out.append((maps, logits, saliency_boxes(maps, shapes, params)[1]))
    (maps_a, logits_a, boxes_a), (maps_b, logits_b, boxes_b) = out
    iou = np.array([box_iou(a, b) for a, b in zip(boxes_a, boxes_b)])
    result = {"n_images": len(paths), "same_predicted_class": float(np.mean(logits_a.argmax(1) == logits_b.argmax(1))),
              "crop_box_iou": _distribution(iou)}
    if maps_a.shape == maps_b.shape:
        flat_a, flat_b = maps_a.reshape(len(paths), -1), maps_b.reshape(len(paths), -1)
        corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(flat_a, flat_b) if a.std() > 0 and b.std() > 0]
        result["map_correlation_mean"] = float(np.mean(corr)) if corr else None
    return result


def threshold_sweep(maps: np.ndarray, shapes: np.ndarray, mask_boxes_: np.ndarray,
                    thresholds=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)) -> list[dict]:
    """Mean IoU of the salient box with the mask box, and mean box area, for each map threshold (pick on validation)."""
    rows = []
    for t in thresholds:
        boxes = [salient_box(upsample_map(m, h, w), t) for m, (h, w) in zip(maps, shapes)]
        iou = [box_iou(b, m) for b, m in zip(boxes, mask_boxes_)]
        area = [(b[2] - b[0]) * (b[3] - b[1]) / (h * w) for b, (h, w) in zip(boxes, shapes)]
        rows.append({"threshold": t, "mean_iou": float(np.mean(iou)), "mean_area_fraction": float(np.mean(area))})
    return rows


def format_report(report: dict, split: str = "test") -> str:
    """The figures of :func:`evaluate_crops` as a short text table."""
    from qana_keras.metrics import format_difference

    r = report[split]
    lines = [f"{split}: {r['n_images']} images, {r['n_lesions']} lesions; saliency {report['saliency']} "
             f"({report['saliency_layer']}) of {display_path(report['saliency_model'])}; "
             f"classifier {display_path(report['classifier'])}"]
    for name, d in r["iou"].items():
        if name.startswith("per_class"):
            lines.append("  mean IoU per class: " + ", ".join(f"{c} {v:.3f}" for c, v in d.items() if v is not None))
        elif d.get("n"):
            lines.append(f"  IoU {name}: mean {d['mean']:.3f}, median {d['median']:.3f}, q25-q75 {d['q25']:.3f}-"
                         f"{d['q75']:.3f}, >=0.5 in {100 * d['fraction_ge_0.5']:.1f}% (n={d['n']})")
    lines.append(f"  {'variant':22s} {'top-1':>7s} {'macro-F1':>9s} {'bal.acc':>8s}   paired difference vs whole "
                 "[95% lesion bootstrap]")
    for v in VARIANTS:
        s = r["variants"][v]
        diff = ""
        if v != "whole":
            p = r["paired_vs_whole"][v]
            diff = "  ".join(f"{k.replace('balanced_accuracy', 'bal').replace('macro_f1', 'F1')} "
                             f"{format_difference(p[k], mark='*')}" for k in ("top1", "macro_f1", "balanced_accuracy"))
        lines.append(f"  {v:22s} {s['top1']:7.4f} {s['macro_f1']:9.4f} {s['balanced_accuracy']:8.4f}   {diff}")
    if "threshold_sweep" in r:
        lines.append("  map threshold -> mean IoU (area): " + ", ".join(
            f"{row['threshold']:.1f} -> {row['mean_iou']:.3f} ({row['mean_area_fraction']:.2f})"
            for row in r["threshold_sweep"]))
    t = r["tiling"]
    lines.append(f"  tiling fallback: max softmax < {t['threshold']:.3f} (chosen on validation) triggers on "
                 f"{t['triggered']} images ({100 * t['trigger_rate']:.1f}%), changes {t['changed_predictions']} "
                 "predictions")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Overlays


def pick_per_class(meta, per_class: int, seed: int = 0):
    """Up to ``per_class`` rows of each class, drawn with a fixed seed, in class order."""
    parts = [group.sample(n=min(per_class, len(group)), random_state=seed)
             for _, group in meta.groupby("dx", sort=True)]
    return meta.loc[[i for p in parts for i in p.index]].reset_index(drop=True) if parts else meta.iloc[:0]


def _box_legend(fig, threshold: float) -> None:
    """One legend above the figure naming the three box colours of ``write_overlays``."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="lime", lw=1.8, label="lesion mask bounding box (ground truth)"),
               Line2D([], [], color="yellow", lw=1.8, label="saliency crop box (salient box + margin)"),
               Line2D([], [], color="red", lw=1.8, ls="--", label=f"salient region (map >= {threshold} of its range)")]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=9, frameon=False)


def write_overlays(out_dir, meta, saliency, params: CropParams, mask_dir, size: int = 64, classifier=None,
                   per_class: int = 3, seed: int = 0, log=print) -> list[Path]:
    """One PNG per class: each row an image with its crop boxes, the heat map with the salient box, and the crop.

    Green: mask bounding box; yellow: saliency crop box; red (on the heat map): salient region's box.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    chosen = pick_per_class(meta, per_class, seed)
    if chosen.empty:
        raise ValueError("no images to draw overlays for")
    views = crop_views(chosen, saliency, size, params, mask_dir, None, log=log)
    predictions = {}
    if classifier is not None:
        predictions["whole"] = _predict_probs(classifier, views["whole"])
        predictions["crop"] = _predict_probs(classifier, views["saliency_crop"])
    out_dir = Path(out_dir)
    written = []
    for dx, rows in chosen.groupby("dx", sort=True):
        fig, axes = plt.subplots(len(rows), 3, figsize=(11, 2.9 * len(rows)), squeeze=False)
        for r, i in enumerate(rows.index):
            image = read_rgb(chosen.at[i, "path"])
            h, w = image.shape[:2]
            heat = upsample_map(views["maps"][i], h, w)
            heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)

            def box(ax, b, color, style="-"):
                ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor=color,
                                       linewidth=1.8, linestyle=style))
            ax = axes[r, 0]
            ax.imshow(image)
            if not views["mask_empty"][i]:
                box(ax, views["mask_box"][i], "lime")
            box(ax, views["saliency_crop_box"][i], "yellow")
            iou = box_iou(views["salient_box"][i], views["mask_box"][i])
            ax.set_title(f"{chosen.at[i, 'image_id']}  true {dx}  IoU {iou:.2f}", fontsize=9)
            ax = axes[r, 1]
            ax.imshow(image)
            heat_image = ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            fig.colorbar(heat_image, ax=ax, fraction=0.046, pad=0.02, label="saliency (min-max scaled)")
            box(ax, views["salient_box"][i], "red", "--")
            pred = CLASSES[int(views["saliency_logits"][i].argmax())]
            ax.set_title(f"{saliency.method} map of '{pred}' (threshold {params.threshold})", fontsize=9)
            ax = axes[r, 2]
            ax.imshow(views["saliency_crop"][i])
            title = f"crop {size}x{size}"
            if predictions:
                pw, pc = predictions["whole"][i], predictions["crop"][i]
                title += (f"  whole: {CLASSES[pw.argmax()]} {pw.max():.2f}  crop: {CLASSES[pc.argmax()]} "
                          f"{pc.max():.2f}")
            ax.set_title(title, fontsize=9)
            for ax in axes[r]:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.tight_layout()
        _box_legend(fig, params.threshold)
        path = out_dir / f"crop_overlays_{dx}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")  # "tight" keeps the legend above
        plt.close(fig)
        written.append(path)
    log(f"wrote {len(written)} overlay PNGs into {display_path(out_dir)}")
    return written
