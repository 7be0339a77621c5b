"""The HAM10000 splits as arrays: metadata + committed split file + cached images, in one call."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qana_keras import CLASSES
from qana_keras.config import DataConfig, source_folder, source_name
from qana_keras.data import ham10000, isic2019, splits
from qana_keras.data.cache import load_cached_images
from qana_keras.io import sha256_file


@dataclass
class SplitData:
    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int, index into the run's classes (CLASSES unless data.classes is set)
    frame: pd.DataFrame  # metadata rows (image_id, lesion_id, dx, ...), aligned with images

    def __len__(self) -> int:
        return len(self.labels)


def run_classes(config: DataConfig) -> tuple[str, ...]:
    """The output classes of a run: ``data.classes`` (a subset, in output order) or all of CLASSES."""
    classes = tuple(getattr(config, "classes", ()) or CLASSES)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"data.classes={list(classes)}: name at least 2 distinct classes from {', '.join(CLASSES)}"
                         + (f" ({', '.join(unknown)} unknown)" if unknown else ""))
    return classes


def _subset(frame: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """A class-stratified subset of at most ``max_images`` rows that keeps every class present."""
    if max_images <= 0 or len(frame) <= max_images:
        return frame
    fraction = max_images / len(frame)
    parts = [group.sample(n=max(1, int(round(len(group) * fraction))), random_state=seed)
             for _, group in frame.groupby("dx", sort=True)]
    return pd.concat(parts).sort_values("image_id")


def load_splits(config: DataConfig, max_images: int = 0, seed: int = 0, log=print,
                extra_sources: bool = False, load_images=None) -> dict[str, SplitData]:
    """Validate the metadata, check the split file against it, and return train/val/test arrays.

    ``max_images`` > 0 keeps a class-stratified subset of each split (quick runs). With ``config.classes``
    only those classes' images are kept and labels index that list. With ``extra_sources`` (training), the
    sources of ``config.extra_sources`` join the train split and add a ``val_<source>`` split each; other
    stages leave them out, as they evaluate or calibrate on HAM10000.

    ``load_images(meta, config, name=, log=)`` gives the HAM10000 images of the metadata rows; by default the
    whole images, resized. Lesion crops (``config.crop``) need a saliency model, which data loading never
    loads: ``qana_keras.runs.load_splits`` passes the crop cache's loader for them.
    """
    classes = run_classes(config)
    meta = ham10000.load_metadata(config.data_dir)
    split = splits.read_split(config.split_file, meta=meta)
    meta = meta.merge(split[["image_id", "split"]], on="image_id", validate="one_to_one")
    if load_images is not None:  # e.g. lesion crops, made the same way at inference (qana_keras.crop)
        images = load_images(meta, config, name="ham10000", log=log)
    elif getattr(config, "crop", "none") == "none":
        images = load_cached_images(meta["path"].tolist(), config.image_size, config.cache_dir,
                                    name="ham10000", log=log)
    else:
        raise ValueError(f"data.crop={config.crop}: lesion crops are made by a saliency model, which data loading "
                         "never loads; load the splits with qana_keras.runs.load_splits (or RunFolder.splits)")
    class_index = {name: i for i, name in enumerate(classes)}
    out = {}
    for name in splits.SPLITS:
        frame = meta[(meta["split"] == name) & meta["dx"].isin(classes)]
        frame = _subset(frame, max_images, seed)
        rows = frame.index.to_numpy()
        out[name] = SplitData(images[rows], frame["dx"].map(class_index).to_numpy(np.int64),
                              frame.reset_index(drop=True))
    for folder in config.extra_sources if extra_sources else ():
        train, val = load_extra_source(folder, config, meta, class_index, max_images, seed, log)
        out["train"] = concat(out["train"], train)
        out[f"val_{source_name(folder)}"] = val
    return out


def load_extra_source(folder: str, config: DataConfig, ham_meta: pd.DataFrame, class_index: dict[str, int],
                      max_images: int, seed: int, log=print) -> tuple[SplitData, SplitData]:
    """An ISIC 2019-layout source as (train, val) SplitData; HAM10000 copies in it are left out."""
    root = source_folder(folder)
    meta = isic2019.load_metadata(root, set(ham_meta["image_id"]), set(ham_meta["lesion_id"]))
    meta = meta[meta["dx"].isin(class_index)].reset_index(drop=True)
    # A renamed byte-for-byte copy of a HAM10000 image would slip past the id checks: compare contents too.
    ham_digests = {sha256_file(path) for path in ham_meta["path"]}
    copies = meta["path"].map(sha256_file).isin(ham_digests)
    if copies.any():
        log(f"{source_name(folder)}: left out {int(copies.sum())} byte-identical copies of HAM10000 images")
        meta = meta[~copies].reset_index(drop=True)
    meta["split"] = isic2019.assign_split(meta)
    images = load_cached_images(meta["path"].tolist(), config.image_size, config.cache_dir,
                                name=source_name(folder), log=log)
    log(f"{source_name(folder)}: {len(meta)} images ({meta.attrs.get('ham10000_copies', 0)} HAM10000 copies left "
        f"out), {int((meta['split'] == 'train').sum())} train / {int((meta['split'] == 'val').sum())} val by lesion")
    parts = []
    for name in ("train", "val"):
        frame = _subset(meta[meta["split"] == name], max_images, seed)
        rows = frame.index.to_numpy()
        parts.append(SplitData(images[rows], frame["dx"].map(class_index).to_numpy(np.int64),
                               frame.reset_index(drop=True)))
    return parts[0], parts[1]


def concat(a: SplitData, b: SplitData) -> SplitData:
    """Two splits as one (images, labels and metadata rows in order; columns one lacks are left empty)."""
    return SplitData(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]),
                     pd.concat([a.frame, b.frame], ignore_index=True))
