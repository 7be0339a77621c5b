"""tf.data input pipeline: uint8 images in, augmented uint8 images and one-hot labels out.

Augmentation is stateless and seeded by (run seed, epoch, example index), so an epoch's batches do
not depend on what ran before: a resumed run sees the same data as an uninterrupted one. Images
stay uint8 end to end because the Akida model reads raw 0..255 pixels.
"""
from __future__ import annotations

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from qana_keras.config import TrainConfig


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> np.ndarray:
    """Per-class loss weights: ``none`` (all 1), ``balanced`` (N / (K * n_k)) or ``sqrt`` of balanced."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if mode == "none":
        return np.ones(num_classes)
    if np.any(counts == 0):
        missing = [i for i in range(num_classes) if counts[i] == 0]
        raise ValueError(f"class weighting {mode!r}: classes {missing} have no training image")
    balanced = counts.sum() / (num_classes * counts)
    if mode == "balanced":
        return balanced
    if mode == "sqrt":
        return np.sqrt(balanced)
    raise ValueError(f"unknown class_weighting {mode!r}: use none, balanced or sqrt")


def augment(image: tf.Tensor, seed: tf.Tensor, config: TrainConfig) -> tf.Tensor:
    """Flips, 90-degree rotations, zoom, colour jitter and channel gain, all stateless (``seed`` is shape [2])."""
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    x = tf.cast(image, tf.float32)
    size = tf.shape(x)[0]
    if config.augment_flips:
        x = tf.image.stateless_random_flip_left_right(x, seeds[0])
        x = tf.image.stateless_random_flip_up_down(x, seeds[1])
    if config.augment_rot90:
        # Dermoscopy has no canonical orientation, so all four rotations are equally valid.
        k = tf.random.stateless_uniform([], seeds[2], 0, 4, dtype=tf.int32)
        x = tf.image.rot90(x, k)
    if config.augment_zoom > 0:
        scale = tf.random.stateless_uniform([], seeds[3], 1.0 - config.augment_zoom, 1.0)
        crop = tf.cast(tf.round(scale * tf.cast(size, tf.float32)), tf.int32)
        x = tf.image.stateless_random_crop(x, tf.stack([crop, crop, 3]), seeds[4])
        x = tf.image.resize(x, tf.stack([size, size]), method="area")
    if config.augment_color > 0:
        a = config.augment_color
        jitter = tf.random.stateless_uniform([3], seeds[5], -a, a)
        mean = tf.reduce_mean(x, axis=[0, 1], keepdims=True)
        x = (x - mean) * (1.0 + jitter[0]) + mean  # contrast
        gray = tf.reduce_mean(x, axis=-1, keepdims=True)
        x = (x - gray) * (1.0 + jitter[1]) + gray  # saturation
        x = x * (1.0 + jitter[2])  # brightness
    if config.augment_channel_gain > 0:
        # Its own seed (folded in, not a seventh split) so that runs without it keep their exact trajectory.
        a = config.augment_channel_gain
        x = x * (1.0 + tf.random.stateless_uniform([3], tf.random.experimental.stateless_fold_in(seed, 6), -a, a))
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def _beta(seed: tf.Tensor, alpha: float) -> tf.Tensor:
    """One draw of Beta(alpha, alpha), stateless: G1 / (G1 + G2) with G ~ Gamma(alpha)."""
    g = tf.random.stateless_gamma([2], seed, alpha=alpha)
    return g[0] / (g[0] + g[1])


def mix_batch(images: tf.Tensor, targets: tf.Tensor, weights: tf.Tensor | None, seed: tf.Tensor, kind: str,
              alpha: float):
    """Mix each example of a batch with another of the same batch (``kind`` mixup or cutmix), stateless.

    mixup blends the pixels with a share ``lam`` ~ Beta(alpha, alpha); cutmix pastes a box covering
    ``1 - lam`` of the partner into the image and recomputes ``lam`` from the box actually pasted. Targets
    and sample weights (class weights) are blended with the same share, so a rare class keeps its weight
    in proportion to how much of it the mixed image shows. Images stay uint8.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    n = tf.shape(images)[0]
    partner = tf.random.experimental.stateless_shuffle(tf.range(n), seeds[0])
    lam = _beta(seeds[1], alpha)
    x = tf.cast(images, tf.float32)
    x2 = tf.gather(x, partner)
    if kind == "mixup":
        mixed = lam * x + (1.0 - lam) * x2
    elif kind == "cutmix":
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        side = tf.sqrt(1.0 - lam)
        cut_h = tf.cast(tf.round(side * tf.cast(h, tf.float32)), tf.int32)
        cut_w = tf.cast(tf.round(side * tf.cast(w, tf.float32)), tf.int32)
        cy = tf.random.stateless_uniform([], seeds[2], 0, h, dtype=tf.int32)
        cx = tf.random.stateless_uniform([], seeds[3], 0, w, dtype=tf.int32)
        y0, y1 = tf.maximum(cy - cut_h // 2, 0), tf.minimum(cy + cut_h // 2, h)
        x0, x1 = tf.maximum(cx - cut_w // 2, 0), tf.minimum(cx + cut_w // 2, w)
        rows = tf.logical_and(tf.range(h) >= y0, tf.range(h) < y1)
        cols = tf.logical_and(tf.range(w) >= x0, tf.range(w) < x1)
        box = tf.cast(tf.logical_and(rows[:, None], cols[None, :]), tf.float32)[None, :, :, None]
        mixed = x * (1.0 - box) + x2 * box
        lam = 1.0 - tf.reduce_mean(box)
    else:
        raise ValueError(f"unknown train.mix {kind!r}: use none, mixup or cutmix")
    mixed = tf.cast(tf.clip_by_value(tf.round(mixed), 0, 255), tf.uint8)
    out_targets = lam * targets + (1.0 - lam) * tf.gather(targets, partner)
    if weights is None:
        return mixed, out_targets
    return mixed, out_targets, lam * weights + (1.0 - lam) * tf.gather(weights, partner)


def make_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                 config: TrainConfig | None = None, training: bool = False, epoch: int = 0,
                 sample_weights: np.ndarray | None = None, targets: np.ndarray | None = None) -> tf.data.Dataset:
    """Batches of (uint8 images, one-hot labels[, sample weights]) for one epoch.

    With ``training``, the order is shuffled and images augmented from (config.seed, epoch); with
    ``config.balanced_sampling`` the epoch draws images with probability inversely proportional to
    their class frequency (same epoch length), also seeded. ``targets`` (N, K) replaces the one-hot labels
    (soft targets of a teacher, qana_keras.training.distill). ``config.mix`` mixes each training batch
    (``mix_batch``), seeded by (config.seed, epoch, batch index).
    """
    n = len(images)
    if training:
        if config is None:
            raise ValueError("training datasets need a TrainConfig")
        rng = np.random.default_rng([config.seed, epoch])
        if config.balanced_sampling:
            counts = np.bincount(labels, minlength=num_classes)
            p = 1.0 / counts[labels]
            order = rng.choice(n, size=n, replace=True, p=p / p.sum())
        else:
            order = rng.permutation(n)
    else:
        order = np.arange(n)
    if targets is None:
        targets = np.eye(num_classes, dtype=np.float32)[labels]
    elif targets.shape != (n, num_classes):
        raise ValueError(f"targets {targets.shape} do not match {n} images x {num_classes} classes")
    tensors = [images[order], targets[order].astype(np.float32)]
    if sample_weights is not None:
        tensors.append(sample_weights[order].astype(np.float32))
    ds = tf.data.Dataset.from_tensor_slices(tuple(tensors))
    if training:
        ds = ds.enumerate().map(
            lambda i, item: (augment(item[0], tf.stack([tf.cast(config.seed * 100003 + epoch, tf.int64), i]), config),
                             *item[1:]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size)
    if training and config.mix != "none":
        mix_seed = config.seed * 100003 + epoch + 7919  # distinct from the per-image augmentation seeds
        ds = ds.enumerate().map(
            lambda b, batch: mix_batch(batch[0], batch[1], batch[2] if len(batch) > 2 else None,
                                       tf.stack([tf.cast(mix_seed, tf.int64), b]), config.mix, config.mix_alpha),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
