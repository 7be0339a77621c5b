"""Test-time augmentation: a model's prediction averaged over flips and rotations of each image.

Dermoscopy has no canonical orientation, so the 8 symmetries of the square are equally valid views. On a chip
each view is one more inference: N views cost N times the latency and energy of one.
"""
from __future__ import annotations

import numpy as np

# Views in the order they are added: identity, mirror, then the rotations with and without the mirror, so that
# 2 views = identity + mirror and 4 = those rotated by 90 degrees.
VIEW_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
VIEW_COUNTS = (1, 2, 4, 8)


def dihedral_views(images: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of a batch of square images (N, S, S, C): rotations 0-3, then mirrored rotations."""
    views = []
    for flipped in (images, images[:, :, ::-1]):
        for k in range(4):
            views.append(np.ascontiguousarray(np.rot90(flipped, k, axes=(1, 2))))
    return views


def check_views(views: int) -> None:
    """Refuse a view count other than VIEW_COUNTS (before any model is loaded)."""
    if views not in VIEW_COUNTS:
        raise ValueError(f"--tta {views}: use one of {', '.join(map(str, VIEW_COUNTS))} views per image")


def tta_logits(predict, images: np.ndarray, views: int) -> np.ndarray:
    """log of the softmax averaged over the first ``views`` of VIEW_ORDER; ``predict(images) -> logits``."""
    from qana_keras.metrics import softmax  # here, so that the CLI reads VIEW_COUNTS without scikit-learn

    check_views(views)
    if views == 1:
        return predict(images)
    all_views = dihedral_views(images)
    probabilities = np.mean([softmax(predict(all_views[i])) for i in VIEW_ORDER[:views]], axis=0)
    return np.log(np.clip(probabilities, 1e-12, None))
