"""Decoded, resized uint8 images cached on disk, so a second run does not decode 10k JPEGs again.

The cache key hashes every source file's name and content (SHA-256 of its bytes) together with the
preprocessing parameters: change any image or parameter and a new cache file is made. A key made of
name, size and mtime would serve stale images for a file replaced by one of the same size and time
(copies with preserved times, restored backups); hashing all 10,015 HAM10000 JPEGs (55 MB) takes
about 0.2 s, so the content is hashed every time instead of memoised.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from qana_keras.data.images import read_rgb
from qana_keras.io import atomic_path, display_path

CACHE_FORMAT = 2  # bump when the preprocessing code changes what it produces (2: content-keyed)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Whole-frame resize to ``size`` x ``size`` (no crop: the lesion is not always centred).

    INTER_AREA averages source pixels, which keeps texture when downscaling 200x150 -> 64x64.
    """
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def cache_key(paths: list[str], size: int, extra: dict | None = None) -> str:
    """``extra``: further parameters the cached arrays depend on (e.g. a crop's saliency-model hash)."""
    params = {"format": CACHE_FORMAT, "size": size}
    if extra:
        params["extra"] = extra  # absent for whole images, so their keys are unchanged
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    digest.update(files_digest(paths).encode())
    return digest.hexdigest()[:20]


def files_digest(paths) -> str:
    """SHA-256 over every file's name and the SHA-256 of its bytes, in order: changes whenever any content does."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            content = hashlib.sha256(f.read()).hexdigest()
        digest.update(f"{os.path.basename(path)}\0{content}\n".encode())
    return digest.hexdigest()


def _load_resized(path: str, size: int) -> np.ndarray:
    return resize_image(read_rgb(path), size)


def decode_images(paths: list[str], size: int, workers: int | None = None) -> np.ndarray:
    """Decode and resize ``paths`` in parallel (PIL and OpenCV release the GIL)."""
    out = np.empty((len(paths), size, size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        for i, image in enumerate(pool.map(lambda p: _load_resized(p, size), paths)):
            out[i] = image
    return out


class CacheError(OSError):
    """A cache file cannot be read, or the cache folder cannot be written."""


def read_cache_file(cache_file: Path) -> np.ndarray:
    """The array in a cache ``.npy``; a truncated or corrupt one is an error naming it (delete it to rebuild)."""
    try:
        return np.load(cache_file, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise CacheError(f"{cache_file}: truncated or corrupt cache file ({error}); delete it, it is rebuilt on the "
                         "next run") from None


def load_cached_images(paths: list[str], size: int, cache_dir: str | Path, name: str = "images",
                       log=print) -> np.ndarray:
    """Return ``(N, size, size, 3)`` uint8 images for ``paths``, from the cache when it is valid."""
    start = time.perf_counter()
    key = cache_key(paths, size)
    cache_file = Path(cache_dir) / f"{name}_{size}px_{key}.npy"
    if cache_file.exists():
        images = read_cache_file(cache_file)
        if images.shape == (len(paths), size, size, 3) and images.dtype == np.uint8:
            log(f"loaded {len(paths)} cached images from {display_path(cache_file)} in {time.perf_counter() - start:.1f}s")
            return images
        log(f"ignoring cache {cache_file}: shape {images.shape} does not match {len(paths)} images")
    images = decode_images(paths, size)
    with atomic_path(cache_file) as tmp:
        np.save(tmp, images)
    log(f"decoded {len(paths)} images to {size}x{size} in {time.perf_counter() - start:.1f}s; cached in {display_path(cache_file)}")
    return images
