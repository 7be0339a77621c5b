"""Lesion crops: a saliency-guided (or mask-guided) square crop of the full-resolution image, and a 2x2
tiling fallback for low-confidence images.

Deployment needs only the Akida model and the host CPU:
  1. the whole image, downscaled to the model size, goes through a saliency model (its class-activation
     map, :mod:`qana_keras.saliency`; the forward-only ``head`` map runs from the Akida feature map);
  2. the map is upsampled to the full image, thresholded at ``threshold`` of its range, and the
     connected region holding its peak gives the salient box; a ``margin`` is added on each side, the
     box is squared and clamped to the image (:func:`crop_box`);
  3. that box is cut from the highest-resolution image available (the 200x150 originals here, not
     the 64x64 copy) and resized to the model size;
  4. when the classifier's confidence on the crop is below a threshold chosen on validation, it also
     classifies four overlapping tiles (2x2) of the whole image and averages the five softmaxes.

Training uses the same crops (``data.crop = saliency | mask``), cached on disk like the whole images
with a key that covers the source files, the crop parameters and the saliency model's SHA-256.
Boxes are ``(x0, y0, x1, y1)`` in pixels of the original image, half-open.
"""
from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from qana_keras import CLASSES
from qana_keras.data.cache import files_digest
from qana_keras.data.images import read_rgb
from qana_keras.io import atomic_path

MASK_DIR = "HAM10000_segmentations_lesion_tschandl"
CROP_FORMAT = 1  # bump when the crop code changes what it produces (part of the cache key)
CROP_MODES = ("none", "saliency", "mask")


@dataclass
class CropParams:
    threshold: float = 0.5  # a map value counts as salient above this fraction of the map's range (min..max)
    margin: float = 0.15  # added on each side of the salient box, as a fraction of its longer side
    min_side: float = 0.25  # smallest crop side, as a fraction of the image's shorter side (a 4x4 map is coarse)

    def __post_init__(self):
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"crop threshold must be in [0, 1), got {self.threshold}")
        if self.margin < 0 or not 0 < self.min_side <= 1:
            raise ValueError(f"crop margin must be >= 0 and min_side in (0, 1], got {self.margin}, {self.min_side}")


def crop_params(data_config) -> CropParams:
    """The crop parameters of a :class:`~qana_keras.config.DataConfig`."""
    return CropParams(threshold=data_config.crop_threshold, margin=data_config.crop_margin)


# --------------------------------------------------------------------------------------------------
# Geometry


def full_box(height: int, width: int) -> tuple[int, int, int, int]:
    return (0, 0, int(width), int(height))


def upsample_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a low-resolution map to the image (each cell covers its share of the frame)."""
    return cv2.resize(cam.astype(np.float32), (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def salient_box(cam: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int]:
    """Bounding box of the connected region around the map's peak where ``(cam - min) / (max - min) >= threshold``.

    A flat map (no information) gives the whole frame.
    """
    h, w = cam.shape
    low, high = float(np.min(cam)), float(np.max(cam))
    if not np.isfinite(high) or high - low <= 1e-12 * max(1.0, abs(high)):
        return full_box(h, w)
    binary = ((cam - low) >= threshold * (high - low)).astype(np.uint8)
    _, labels = cv2.connectedComponents(binary, connectivity=8)
    py, px = np.unravel_index(int(np.argmax(cam)), cam.shape)
    ys, xs = np.nonzero(labels == labels[py, px])
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def crop_box(box, height: int, width: int, params: CropParams = CropParams()) -> tuple[int, int, int, int]:
    """``box`` grown by the margin, made square, at least ``min_side``, and shifted to lie inside the image.

    The side is capped at the image's shorter side, so a box wider than that is cut around its centre.
    """
    x0, y0, x1, y1 = box
    shorter = min(height, width)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * params.margin)
    side = int(round(min(max(side, params.min_side * shorter), shorter)))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = int(min(max(round(cx - side / 2.0), 0), width - side))
    top = int(min(max(round(cy - side / 2.0), 0), height - side))
    return (left, top, left + side, top + side)


def box_iou(a, b) -> float:
    """Intersection over union of two boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def mask_bbox(mask: np.ndarray):
    """Bounding box of a binary mask's foreground, or None when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def centred(box, height: int, width: int) -> tuple[int, int, int, int]:
    """A box of the same size as ``box``, centred in the frame (the no-saliency control)."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    left, top = (width - bw) // 2, (height - bh) // 2
    return (int(left), int(top), int(left + bw), int(top + bh))


def tile_boxes(height: int, width: int, overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """Four overlapping tiles (2x2) of the frame, each ``(1 + overlap) / 2`` of its width and height.

    Tiles keep the frame's aspect ratio, so they are squashed to the model size the same way as the whole image.
    """
    tw, th = int(round(width * (1 + overlap) / 2)), int(round(height * (1 + overlap) / 2))
    return [(x, y, x + tw, y + th) for y in (0, height - th) for x in (0, width - tw)]


def crop_resize(image: np.ndarray, box, size: int) -> np.ndarray:
    """Cut ``box`` out of ``image`` and resize it to ``size`` x ``size`` (area averaging down, cubic up)."""
    x0, y0, x1, y1 = box
    patch = image[y0:y1, x0:x1]
    if patch.size == 0:
        raise ValueError(f"empty crop box {box} for an image of {image.shape[1]}x{image.shape[0]}")
    down = patch.shape[0] >= size and patch.shape[1] >= size
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if down else cv2.INTER_CUBIC)


# --------------------------------------------------------------------------------------------------
# Boxes and crops for many images


def _workers() -> int:
    return min(8, (os.cpu_count() or 2) * 2)


def image_shapes(paths: list[str]) -> np.ndarray:
    """``(N, 2)`` (height, width) of each image, from the file headers."""
    from PIL import Image

    def shape(p):
        with Image.open(p) as img:
            return img.height, img.width
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        return np.array(list(pool.map(shape, paths)), dtype=np.int64).reshape(-1, 2)


def saliency_boxes(maps: np.ndarray, shapes: np.ndarray, params: CropParams) -> tuple[np.ndarray, np.ndarray]:
    """Salient boxes and crop boxes ``(N, 4)`` in original-image pixels, from low-resolution maps ``(N, h, w)``."""
    raw, crops = np.empty((len(maps), 4), np.int64), np.empty((len(maps), 4), np.int64)
    for i, (cam, (h, w)) in enumerate(zip(maps, shapes)):
        raw[i] = salient_box(upsample_map(cam, h, w), params.threshold)
        crops[i] = crop_box(raw[i], h, w, params)
    return raw, crops


def mask_path(mask_dir: str | Path, image_id: str) -> Path:
    return Path(mask_dir) / f"{image_id}_segmentation.png"


def load_mask(path: str | Path, height: int, width: int) -> np.ndarray:
    """A binary lesion mask scaled to ``height`` x ``width`` (the official masks are 600x450 for 200x150 images)."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"lesion mask {path} is missing or unreadable; the official HAM10000 masks "
                                f"({MASK_DIR}) have one ISIC_xxxxxxx_segmentation.png per image")
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (int(width), int(height)), interpolation=cv2.INTER_AREA)
    return mask >= 128


def mask_boxes(image_ids, mask_dir: str | Path, shapes: np.ndarray,
               params: CropParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask bounding boxes, crop boxes (same margin/square rule as saliency) and an ``empty`` flag per image.

    An empty mask gives the whole frame as its box (and ``empty`` True).
    """
    def one(args):
        image_id, (h, w) = args
        return mask_bbox(load_mask(mask_path(mask_dir, image_id), h, w))
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        found = list(pool.map(one, zip(image_ids, shapes)))
    empty = np.array([b is None for b in found])
    raw = np.array([full_box(h, w) if b is None else b for b, (h, w) in zip(found, shapes)], np.int64).reshape(-1, 4)
    crops = np.array([crop_box(b, h, w, params) for b, (h, w) in zip(raw, shapes)], np.int64).reshape(-1, 4)
    return raw, crops, empty


def crop_images(paths: list[str], boxes: list[np.ndarray], size: int) -> list[np.ndarray]:
    """For each ``(N, 4)`` array in ``boxes``, the ``(N, size, size, 3)`` uint8 crops; each image is decoded once."""
    out = [np.empty((len(paths), size, size, 3), np.uint8) for _ in boxes]

    def one(i):
        image = read_rgb(paths[i])
        for k, b in enumerate(boxes):
            out[k][i] = crop_resize(image, b[i], size)
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        list(pool.map(one, range(len(paths))))
    return out


def tile_crops(paths: list[str], shapes: np.ndarray, size: int, overlap: float = 0.25) -> np.ndarray:
    """``(N, 4, size, size, 3)``: the four 2x2 tiles of every image."""
    boxes = [np.array([tile_boxes(h, w, overlap)[t] for h, w in shapes]) for t in range(4)]
    return np.stack(crop_images(paths, boxes, size), axis=1)


# --------------------------------------------------------------------------------------------------
# Cached training/evaluation crops (data.crop)


def default_mask_dir(data_config) -> str:
    return data_config.mask_dir or str(Path(data_config.data_dir) / MASK_DIR)


def crop_cache_params(meta, data_config) -> dict:
    """What the crops depend on besides the images and the size: mode, parameters, saliency model or masks."""
    from qana_keras.saliency import file_sha256

    mode = data_config.crop
    params = {"crop_format": CROP_FORMAT, **asdict(crop_params(data_config))}
    if mode == "saliency":
        if not data_config.crop_model:
            raise ValueError("data.crop=saliency needs data.crop_model: the whole-image model (.h5 float or .fbz "
                             "Akida) whose class-activation map picks the crop, e.g. "
                             "--set data.crop_model=runs/qana-e60/qana_float.h5")
        model = Path(data_config.crop_model)
        if not model.is_file():
            raise FileNotFoundError(f"data.crop_model {model} not found")
        return {"crop": mode, "saliency": data_config.crop_saliency, "model_sha256": file_sha256(model), **params}
    if mode == "mask":
        mask_dir = default_mask_dir(data_config)
        paths = [mask_path(mask_dir, i) for i in meta["image_id"]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"data.crop=mask: {len(missing)} lesion masks missing, e.g. {missing[0]}; set "
                                    f"data.mask_dir to the folder of the official masks ({MASK_DIR})")
        return {"crop": mode, "masks": files_digest(paths), **params}  # content, not size and mtime
    raise ValueError(f"unknown data.crop {mode!r}; use one of {', '.join(CROP_MODES)}")


def compute_crops(meta, data_config, log=print) -> dict:
    """Crops (and their boxes) of every image in ``meta`` for ``data_config.crop`` = saliency or mask."""
    from qana_keras.data.cache import load_cached_images

    paths = meta["path"].tolist()
    params = crop_params(data_config)
    shapes = image_shapes(paths)
    out = {"shapes": shapes}
    if data_config.crop == "saliency":
        from qana_keras.saliency import load_saliency

        saliency = load_saliency(data_config.crop_model, data_config.crop_saliency)
        whole = load_cached_images(paths, saliency.input_size, data_config.cache_dir, name="ham10000", log=log)
        maps, logits = saliency(whole)
        out.update(maps=maps, saliency_logits=logits)
        out["raw"], out["boxes"] = saliency_boxes(maps, shapes, params)
    elif data_config.crop == "mask":
        out["raw"], out["boxes"], out["empty"] = mask_boxes(meta["image_id"].tolist(), default_mask_dir(data_config),
                                                            shapes, params)
    else:
        raise ValueError(f"unknown data.crop {data_config.crop!r}; use one of {', '.join(CROP_MODES)}")
    out["crops"] = crop_images(paths, [out["boxes"]], data_config.image_size)[0]
    return out


def load_cached_crops(meta, data_config, name: str = "ham10000", log=print) -> np.ndarray:
    """``(N, size, size, 3)`` uint8 crops of ``meta``'s images, from the cache when its key matches."""
    from qana_keras.data.cache import cache_key, read_cache_file

    start = time.perf_counter()
    size, paths = data_config.image_size, meta["path"].tolist()
    key = cache_key(paths, size, extra=crop_cache_params(meta, data_config))
    cache_file = Path(data_config.cache_dir) / f"{name}_{data_config.crop}crop_{size}px_{key}.npy"
    if cache_file.exists():
        crops = read_cache_file(cache_file)
        if crops.shape == (len(paths), size, size, 3) and crops.dtype == np.uint8:
            log(f"loaded {len(paths)} cached {data_config.crop} crops from {cache_file} "
                f"in {time.perf_counter() - start:.1f}s")
            return crops
        log(f"ignoring cache {cache_file}: shape {crops.shape} does not match {len(paths)} images")
    crops = compute_crops(meta, data_config, log=log)["crops"]
    with atomic_path(cache_file) as tmp:
        np.save(tmp, crops)
    log(f"made {len(paths)} {data_config.crop} crops of {size}x{size} in {time.perf_counter() - start:.1f}s; "
        f"cached in {cache_file}")
    return crops


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
    from qana_keras.evaluate import _input_shape, load_model_any

    model = load_model_any(path)
    return model, int(_input_shape(model)[0])


def _predict_probs(model, images: np.ndarray) -> np.ndarray:
    from qana_keras.convert import predict_logits
    from qana_keras.metrics import softmax

    return softmax(np.asarray(predict_logits(model, images, 100), np.float64))


def split_table(data_dir, split: str, split_file, max_images: int = 0, seed: int = 0):
    """Metadata rows of one split of the lesion-level split file (optionally a class-stratified subset)."""
    from qana_keras.data.dataset import _subset
    from qana_keras.evaluate import load_dataset

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
    from qana_keras.saliency import load_saliency

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
    from qana_keras.evaluate import cache_dir_for

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
             f"({report['saliency_layer']}) of {report['saliency_model']}; classifier {report['classifier']}"]
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
    log(f"wrote {len(written)} overlay PNGs into {out_dir}")
    return written
