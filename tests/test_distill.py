"""Teacher soft targets: file checks, the mixed target, the pipeline, and training with them."""
import numpy as np
import pytest
from test_train import tiny_config

from qana_keras import CLASSES
from qana_keras.config import TrainConfig
from qana_keras.data.pipeline import make_dataset
from qana_keras.runtime.tta import dihedral_views
from qana_keras.training.distill import mixed_targets, read_soft_targets, write_soft_targets
from qana_keras.io import read_json


def _uniform(n):
    return np.full((n, len(CLASSES)), 1 / len(CLASSES))


def test_targets_round_trip_in_the_asked_order(tmp_path):
    path = tmp_path / "t.npz"
    probabilities = np.eye(len(CLASSES))[[0, 3, 6]]
    write_soft_targets(path, ["a", "b", "c"], probabilities, CLASSES, ["m.h5"])
    np.testing.assert_allclose(read_soft_targets(path, ["c", "a"], CLASSES), probabilities[[2, 0]])


def test_bad_target_files_are_refused_with_the_reason(tmp_path):
    path = tmp_path / "t.npz"
    with pytest.raises(FileNotFoundError, match="scripts/teacher_targets.py"):
        read_soft_targets(path, ["a"], CLASSES)
    write_soft_targets(path, ["a", "b"], _uniform(2), CLASSES, ["m.h5"])
    with pytest.raises(ValueError, match=r"no targets for 1 training images \(first: z\)"):
        read_soft_targets(path, ["a", "z"], CLASSES)
    with pytest.raises(ValueError, match="classes"):
        read_soft_targets(path, ["a"], CLASSES[:5])
    broken = _uniform(2)
    broken[1, 0] = 0.9
    write_soft_targets(path, ["a", "b"], broken, CLASSES, ["m.h5"])
    with pytest.raises(ValueError, match=r"row 1 \(image b\) is not a probability vector"):
        read_soft_targets(path, ["a"], CLASSES)


def test_mixed_targets_and_weight_check():
    teacher = _uniform(2)
    mixed = mixed_targets(np.array([0, 6]), teacher, 0.5)
    np.testing.assert_allclose(mixed.sum(1), 1, rtol=1e-6)
    assert mixed[0, 0] == pytest.approx(0.5 + 0.5 / 7) and mixed[1, 6] == pytest.approx(0.5 + 0.5 / 7)
    with pytest.raises(ValueError, match=r"soft_target_weight=1.5"):
        mixed_targets(np.array([0]), teacher[:1], 1.5)


def test_dihedral_views_are_the_eight_symmetries():
    image = np.arange(2 * 4 * 4 * 1).reshape(2, 4, 4, 1)
    views = dihedral_views(image)
    assert len({v.tobytes() for v in views}) == 8
    assert any(np.array_equal(v, image[:, ::-1]) for v in views)  # an up-down flip is among them


def test_training_batches_carry_the_soft_targets_with_their_images():
    rng = np.random.default_rng(0)
    images = np.repeat(np.arange(20, dtype=np.uint8)[:, None, None, None], 4, 1).repeat(4, 2).repeat(3, 3)
    targets = rng.dirichlet(np.ones(7), 20).astype(np.float32)
    config = TrainConfig(seed=1, augment_color=0, augment_zoom=0)  # flips and rotations keep a constant image
    batches = list(make_dataset(images, np.zeros(20, int), 7, 8, config, training=True, targets=targets))
    for x, y in batches:
        ids = x.numpy()[:, 0, 0, 0]
        np.testing.assert_allclose(y.numpy(), targets[ids])
    with pytest.raises(ValueError, match="do not match"):
        make_dataset(images, np.zeros(20, int), 7, 8, config, training=True, targets=targets[:5])


def test_training_with_soft_targets(tmp_path):
    """Weight 0 trains exactly as the labels do; weight 1 on a uniform teacher learns nothing but the mean."""
    from qana_keras.data.dataset import load_splits
    from qana_keras.training.train import train

    config = tiny_config(tmp_path, epochs=1)
    config.train.class_weighting = "none"  # the unweighted loss has the bound checked below
    ids = np.concatenate([d.frame["image_id"].to_numpy() for d in load_splits(config.data, log=lambda *_: None).values()])
    path = tmp_path / "teacher.npz"
    write_soft_targets(path, ids, _uniform(len(ids)), CLASSES, ["uniform"])

    train(tmp_path / "labels", config, log=lambda *_: None)
    config.train.soft_targets, config.train.soft_target_weight = str(path), 0.0
    train(tmp_path / "weight0", config, log=lambda *_: None)
    config.train.soft_target_weight = 1.0
    train(tmp_path / "weight1", config, log=lambda *_: None)

    loss = {name: read_json(tmp_path / name / "state.json")["history"][0]["loss"]
            for name in ("labels", "weight0", "weight1")}
    assert loss["weight0"] == loss["labels"]
    assert loss["weight1"] >= np.log(len(CLASSES)) - 1e-4  # cross-entropy to a uniform target >= its entropy


def test_model_probabilities_average_the_eight_views():
    import tf_keras as keras

    from qana_keras.metrics import softmax
    from qana_keras.training.distill import model_probabilities

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(7)])
    images = np.random.default_rng(1).integers(0, 256, (5, 4, 4, 3)).astype(np.float32) / 255
    expected = np.mean([softmax(model.predict(v, verbose=0)) for v in dihedral_views(images)], axis=0)
    np.testing.assert_allclose(model_probabilities(model, images), expected, rtol=1e-5)
    np.testing.assert_allclose(model_probabilities(model, images, tta=False), softmax(model.predict(images, verbose=0)),
                               rtol=1e-6)
