"""Cached training/evaluation crops (``data.crop = saliency | mask``): made once, keyed by what they depend on."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from qana_keras.crop.geometry import (MASK_DIR, crop_images, crop_params, image_shapes, mask_boxes, mask_path,
                                      saliency_boxes)
from qana_keras.data.cache import files_digest
from qana_keras.io import atomic_path, sha256_file

CROP_FORMAT = 1  # bump when the crop code changes what it produces (part of the cache key)
CROP_MODES = ("none", "saliency", "mask")


def default_mask_dir(data_config) -> str:
    return data_config.mask_dir or str(Path(data_config.data_dir) / MASK_DIR)


def crop_cache_params(meta, data_config) -> dict:
    """What the crops depend on besides the images and the size: mode, parameters, saliency model or masks."""
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
        return {"crop": mode, "saliency": data_config.crop_saliency, "model_sha256": sha256_file(model), **params}
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
        from qana_keras.crop.saliency import load_saliency

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
