"""Crop geometry: salient and mask boxes, squared crop boxes, tiles, and cutting them out of the full images."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from qana_keras.data.images import read_rgb

MASK_DIR = "HAM10000_segmentations_lesion_tschandl"


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
