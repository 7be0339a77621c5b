"""tf.data pipeline, class weights and the on-disk image cache."""
import numpy as np
import pytest
from fixtures import write_ham10000_fixture

from qana_keras.config import TrainConfig
from qana_keras.data import ham10000
from qana_keras.data.checks import DatasetError
from qana_keras.data.cache import load_cached_images
from qana_keras.data.pipeline import augment, class_weights, make_dataset, mix_batch


def test_class_weights():
    labels = np.array([0] * 8 + [1] * 2)
    np.testing.assert_allclose(class_weights(labels, 2, "balanced"), [10 / 16, 10 / 4])
    np.testing.assert_allclose(class_weights(labels, 2, "sqrt"), np.sqrt([10 / 16, 10 / 4]))
    np.testing.assert_allclose(class_weights(labels, 2, "none"), [1, 1])
    with pytest.raises(ValueError, match=r"classes \[2\] have no training image"):
        class_weights(labels, 3, "balanced")
    with pytest.raises(ValueError, match="unknown class_weighting"):
        class_weights(labels, 2, "inverse")


def _batches(ds):
    return [tuple(t.numpy() for t in batch) for batch in ds]


def test_training_batches_are_uint8_augmented_and_keyed_by_epoch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, 20)
    config = TrainConfig(seed=3)
    a = _batches(make_dataset(images, labels, 7, 8, config, training=True, epoch=1))
    b = _batches(make_dataset(images, labels, 7, 8, config, training=True, epoch=1))
    c = _batches(make_dataset(images, labels, 7, 8, config, training=True, epoch=2))
    assert a[0][0].dtype == np.uint8 and a[0][0].shape == (8, 16, 16, 3) and a[0][1].shape == (8, 7)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))  # same seed and epoch: same data
    assert not np.array_equal(a[0][0], c[0][0])  # another epoch: another order and augmentation
    plain = _batches(make_dataset(images, labels, 7, 8))
    np.testing.assert_array_equal(np.concatenate([p[0] for p in plain]), images)  # evaluation: untouched


def test_balanced_sampling_evens_out_classes():
    labels = np.array([0] * 950 + [1] * 50)
    images = np.zeros((1000, 4, 4, 3), np.uint8)
    config = TrainConfig(balanced_sampling=True, augment_zoom=0, augment_color=0)
    ds = make_dataset(images, labels, 2, 1000, config, training=True)
    onehot = next(iter(ds))[1].numpy()
    assert 0.4 < onehot[:, 1].mean() < 0.6


def _two_class_batch():
    """Four black images of class 0 (weight 1) and four white images of class 1 (weight 3)."""
    images = np.concatenate([np.zeros((4, 8, 8, 3), np.uint8), np.full((4, 8, 8, 3), 255, np.uint8)])
    targets = np.eye(2, dtype=np.float32)[[0] * 4 + [1] * 4]
    weights = np.array([1.0] * 4 + [3.0] * 4, np.float32)
    return images, targets, weights


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_targets_and_weights_follow_the_pixels(kind):
    import tensorflow as tf

    images, targets, weights = _two_class_batch()
    mixed, mixed_targets, mixed_weights = (t.numpy() for t in mix_batch(
        tf.constant(images), tf.constant(targets), tf.constant(weights), tf.constant([5, 1], tf.int64), kind, 1.0))
    assert mixed.dtype == np.uint8 and mixed.shape == images.shape
    # The share of class 1 in each target is the share of white in its image; weights blend the same way.
    white = mixed.astype(np.float64).mean(axis=(1, 2, 3)) / 255
    np.testing.assert_allclose(mixed_targets[:, 1], white, atol=0.01)
    np.testing.assert_allclose(mixed_targets.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(mixed_weights, 1.0 + 2.0 * mixed_targets[:, 1], atol=1e-5)
    assert np.any((white > 0.02) & (white < 0.98))  # something was actually mixed
    if kind == "cutmix":  # pixels are pasted, not blended
        assert set(np.unique(mixed)) <= {0, 255}


def test_mixing_is_seeded_and_only_for_training():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, 16)
    config = TrainConfig(seed=1, mix="mixup", mix_alpha=0.4, augment_zoom=0, augment_color=0)
    a = _batches(make_dataset(images, labels, 7, 8, config, training=True, epoch=0))
    b = _batches(make_dataset(images, labels, 7, 8, config, training=True, epoch=0))
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert np.any(a[0][1].max(1) < 0.999)
    plain = _batches(make_dataset(images, labels, 7, 8, config))  # evaluation is never mixed
    np.testing.assert_array_equal(np.concatenate([p[0] for p in plain]), images)


def test_cache_is_reused_and_invalidated(tmp_path):
    root = write_ham10000_fixture(tmp_path / "ham", n_lesions_per_class=2)
    paths = ham10000.load_metadata(root)["path"].tolist()
    messages = []
    first = load_cached_images(paths, 24, tmp_path / "cache", log=messages.append)
    second = load_cached_images(paths, 24, tmp_path / "cache", log=messages.append)
    assert first.shape == (len(paths), 24, 24, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)
    assert messages[0].startswith("decoded") and messages[1].startswith("loaded")
    load_cached_images(paths, 32, tmp_path / "cache", log=messages.append)  # other size: new cache
    assert messages[2].startswith("decoded")
    # Replacing an image (new size/mtime) invalidates the cache.
    from PIL import Image
    Image.new("RGB", (30, 20), (255, 0, 0)).save(paths[0])
    third = load_cached_images(paths, 24, tmp_path / "cache", log=messages.append)
    assert messages[3].startswith("decoded")
    assert third[0].mean(axis=(0, 1))[0] > 250


def test_cache_names_a_corrupt_image(tmp_path):
    root = write_ham10000_fixture(tmp_path / "ham", n_lesions_per_class=2)
    paths = ham10000.load_metadata(root)["path"].tolist()
    with open(paths[3], "r+b") as f:
        f.truncate(200)
    with pytest.raises(DatasetError, match=paths[3].rsplit("/", 1)[1]):
        load_cached_images(paths, 24, tmp_path / "cache", log=lambda *_: None)


def test_channel_gain_scales_each_channel_within_its_range_and_leaves_other_runs_alone():
    import tensorflow as tf

    image = tf.constant(np.full((8, 8, 3), 100, np.uint8))
    seed = tf.constant([4, 2], tf.int64)
    off = TrainConfig(augment_flips=False, augment_rot90=False, augment_zoom=0, augment_color=0)
    on = TrainConfig(augment_flips=False, augment_rot90=False, augment_zoom=0, augment_color=0,
                     augment_channel_gain=0.2)
    np.testing.assert_array_equal(augment(image, seed, off).numpy(), image.numpy())
    gained = augment(image, seed, on).numpy().astype(np.float64)
    gains = gained[0, 0] / 100
    assert np.all(gained == gained[0, 0]) and np.all((gains >= 0.8 - 0.01) & (gains <= 1.2 + 0.01))
    assert len(set(np.round(gains, 3))) == 3  # a white-balance shift: each channel its own gain
    # The other augmentations draw the same values with or without it (published runs keep their trajectory).
    varied = tf.constant(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    plain, with_gain = TrainConfig(augment_zoom=0.2), TrainConfig(augment_zoom=0.2, augment_channel_gain=1e-9)
    np.testing.assert_array_equal(augment(varied, seed, plain).numpy(), augment(varied, seed, with_gain).numpy())
    assert not np.array_equal(augment(varied, seed, plain).numpy(), varied.numpy())
