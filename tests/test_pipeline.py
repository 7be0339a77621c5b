"""tf.data pipeline, class weights and the on-disk image cache."""
import numpy as np
import pytest
from fixtures import write_ham10000_fixture

from qana_keras.config import TrainConfig
from qana_keras.data import ham10000
from qana_keras.data.checks import DatasetError
from qana_keras.data.cache import load_cached_images
from qana_keras.data.pipeline import class_weights, make_dataset


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
