"""Soft training targets from a teacher ensemble (knowledge distillation, offline).

The teachers are float Keras models of the same classes; each image's target is the teachers' mean
softmax, averaged over the 8 flips/rotations (the symmetries training augments with, so the target
does not depend on which view a batch draws). The file is made once (``scripts/teacher_targets.py``)
and read by ``qana train`` when ``train.soft_targets`` names it: the training target becomes
``(1 - w) * one_hot + w * teacher`` with ``w = train.soft_target_weight``. Class weights still apply,
by the true label. Validation selection and the test evaluation use the true labels only.

File (``.npz``): ``image_id`` (N,), ``probabilities`` (N, K) over ``classes`` (K,), ``teachers`` (paths).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from qana_keras.io import atomic_path
from qana_keras.metrics import softmax
from qana_keras.runtime.tta import tta_logits


def model_probabilities(model, images: np.ndarray, tta: bool = True, batch_size: int = 256) -> np.ndarray:
    """Softmax of a Keras model, averaged over the 8 dihedral views with ``tta``."""
    return softmax(tta_logits(lambda views: model.predict(views, batch_size=batch_size, verbose=0), images,
                              8 if tta else 1))


def write_soft_targets(path: str | Path, image_ids, probabilities: np.ndarray, classes, teachers) -> None:
    """Write the teacher targets atomically (refuses rows that are not probability vectors)."""
    probabilities = np.asarray(probabilities, np.float32)
    if probabilities.shape != (len(image_ids), len(classes)):
        raise ValueError(f"{path}: probabilities {probabilities.shape} do not match {len(image_ids)} images x "
                         f"{len(classes)} classes")
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, image_id=np.asarray(image_ids, dtype=str), probabilities=probabilities,
                 classes=np.asarray(classes, dtype=str), teachers=np.asarray([str(t) for t in teachers]))


def read_soft_targets(path: str | Path, image_ids, classes) -> np.ndarray:
    """Teacher probabilities for ``image_ids`` in that order, over ``classes``; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train.soft_targets: {path} does not exist; make it with "
                                f"`python scripts/teacher_targets.py TEACHER.h5 ... --out {path}`")
    with np.load(path, allow_pickle=False) as f:
        stored_ids, probabilities, stored_classes = f["image_id"], f["probabilities"], f["classes"]
    if list(stored_classes) != list(classes):
        raise ValueError(f"{path}: targets are over classes {list(stored_classes)}, the run trains {list(classes)}")
    sums = probabilities.sum(axis=1)
    bad = np.flatnonzero(~np.isfinite(sums) | (np.abs(sums - 1) > 1e-3) | (probabilities < 0).any(axis=1))
    if len(bad):
        raise ValueError(f"{path}: row {bad[0]} (image {stored_ids[bad[0]]}) is not a probability vector "
                         f"({len(bad)} such rows); regenerate the file")
    row_of = {image_id: i for i, image_id in enumerate(stored_ids)}
    missing = [i for i in image_ids if i not in row_of]
    if missing:
        raise ValueError(f"{path}: no targets for {len(missing)} training images (first: {missing[0]}); it was made "
                         f"for another split or class subset, regenerate it")
    return probabilities[[row_of[i] for i in image_ids]].astype(np.float32)


def mixed_targets(labels: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * one_hot(labels) + weight * teacher``."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"train.soft_target_weight={weight}: use a value in [0, 1]")
    one_hot = np.eye(teacher.shape[1], dtype=np.float32)[labels]
    return ((1.0 - weight) * one_hot + weight * teacher).astype(np.float32)
