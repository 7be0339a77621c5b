"""Training on a synthetic HAM10000 fixture: artifacts, selection, refusal to overwrite, exact resume."""
import csv

import numpy as np
import pytest
from fixtures import write_ham10000_fixture

from qana_keras.config import Config
from qana_keras.data import ham10000, splits
from qana_keras.io import RunFolderError, read_json


def tiny_config(tmp_path, epochs=2) -> Config:
    data_dir = write_ham10000_fixture(tmp_path / "ham", n_lesions_per_class=6, images_per_lesion=(1, 2), size=(48, 36))
    split_file = tmp_path / "split.csv"
    splits.write_split(splits.make_lesion_split(ham10000.load_metadata(data_dir), seed=1), split_file)
    config = Config()
    config.data.data_dir, config.data.split_file = str(data_dir), str(split_file)
    config.data.cache_dir, config.data.image_size = str(tmp_path / "cache"), 16
    config.model.widths, config.model.stem_filters, config.model.head_channels = (8, 16), 8, 8
    config.model.sa_eca_stages, config.model.se_ratio = (2,), 4
    config.train.epochs, config.train.batch_size, config.train.warmup_epochs = epochs, 8, 1
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from qana_keras.training.train import train

    tmp = tmp_path_factory.mktemp("train")
    config = tiny_config(tmp, epochs=3)
    metrics = train(tmp / "run", config, log=lambda *_: None)
    return tmp, config, metrics


def test_run_folder_holds_every_artifact(trained):
    tmp, config, metrics = trained
    run = tmp / "run"
    for name in ("config.yaml", "versions.json", "state.json", "history.csv", "qana_float.h5", "metrics.json",
                 "confusion_test.png", "per_class_val.png", "training_curves.png"):
        assert (run / name).exists(), name
    assert any((run / "logs").rglob("events.out.tfevents*"))
    saved = read_json(run / "metrics.json")
    assert saved["selection"] == "best validation macro-F1"
    assert set(saved["test"]) >= {"top1", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix",
                                  "bootstrap_95", "macro_auc"}
    assert read_json(run / "versions.json")["packages"]["quantizeml"] == "1.2.5"


def test_selection_rules_score_the_sources_alike():
    from qana_keras.training.train import selection_score

    row = {"val_macro_f1": 0.6, "val_top1": 0.8, "val_isic2019_balanced_accuracy": 0.5, "val_other_balanced_accuracy": 0.7}
    assert selection_score(row, "val_macro_f1") == 0.6
    assert selection_score(row, "source_mean") == pytest.approx(0.6)  # (0.6 + 0.5 + 0.7) / 3
    row["val_isic2019_balanced_accuracy"] = 0.8
    assert selection_score(row, "source_mean") == pytest.approx(0.7) and selection_score(row, "val_macro_f1") == 0.6
    assert selection_score({"val_macro_f1": 0.4}, "source_mean") == 0.4  # one source: the same rule
    with pytest.raises(ValueError, match="unknown train.selection 'loss'"):
        selection_score(row, "loss")


def test_selected_epoch_is_the_best_validation_macro_f1(trained):
    tmp, config, metrics = trained
    with open(tmp / "run" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    best = max(rows, key=lambda r: float(r["val_macro_f1"]))  # first maximum wins, as in training
    assert metrics["selected_epoch"] == int(best["epoch"])
    assert metrics["val"]["macro_f1"] == pytest.approx(float(best["val_macro_f1"]))


def test_existing_run_is_not_overwritten(trained):
    from qana_keras.training.train import train

    tmp, config, _ = trained
    with pytest.raises(RunFolderError, match="already holds a run"):
        train(tmp / "run", config, log=lambda *_: None)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    """Stop after epoch 1 (as a kill would), resume, and compare with a straight 2-epoch run."""
    from qana_keras.training.train import train

    config = tiny_config(tmp_path, epochs=2)
    config.train.mix = "cutmix"  # batch mixing is seeded by epoch and batch: a resumed run mixes the same way
    straight = train(tmp_path / "straight", config, log=lambda *_: None)

    assert train(tmp_path / "killed", config, stop_after=1, log=lambda *_: None) is None
    resumed = train(tmp_path / "killed", resume=True, log=lambda *_: None)

    a = read_json(tmp_path / "straight" / "state.json")["history"]
    b = read_json(tmp_path / "killed" / "state.json")["history"]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert straight["test"]["confusion_matrix"] == resumed["test"]["confusion_matrix"]


def test_resume_without_a_run_is_refused(tmp_path):
    from qana_keras.training.train import train

    with pytest.raises(RunFolderError, match="nothing to resume"):
        train(tmp_path / "none", resume=True, log=lambda *_: None)


def test_training_on_a_class_subset(tmp_path):
    """data.classes keeps only those classes' images, with labels in that order, and records classes.json."""
    import tf_keras as keras

    from qana_keras.data.dataset import load_splits
    from qana_keras.training.train import train

    config = tiny_config(tmp_path, epochs=1)
    config.data.classes = ("mel", "nv", "akiec")
    data = load_splits(config.data)
    for split in data.values():
        assert set(split.frame["dx"]) == {"mel", "nv", "akiec"}
        assert (split.labels == split.frame["dx"].map({"mel": 0, "nv": 1, "akiec": 2}).to_numpy()).all()
    metrics = train(tmp_path / "subset", config, log=lambda *_: None)
    assert read_json(tmp_path / "subset" / "classes.json") == {"classes": ["mel", "nv", "akiec"]}
    assert metrics["test"]["classes"] == ["mel", "nv", "akiec"]
    assert len(metrics["test"]["confusion_matrix"]) == 3
    model = keras.models.load_model(tmp_path / "subset" / "qana_float.h5", compile=False)
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize("classes, message", [(("mel", "scc"), "scc unknown"), (("mel",), "at least 2"),
                                               (("mel", "mel"), "distinct")])
def test_bad_class_subset_is_named(classes, message):
    from qana_keras.config import DataConfig
    from qana_keras.data.dataset import run_classes

    with pytest.raises(ValueError, match=message):
        run_classes(DataConfig(classes=classes))


def test_fine_tuning_starts_from_the_given_weights(trained, tmp_path):
    import tf_keras as keras

    from qana_keras.models.qana import build_model
    from qana_keras.training.train import load_initial_weights

    tmp, config, _ = trained
    source = tmp / "run" / "qana_float.h5"
    model = build_model(config.model, input_size=16)
    load_initial_weights(model, source)
    trained_model = keras.models.load_model(source, compile=False)
    for mine, theirs in zip(model.get_weights(), trained_model.get_weights()):
        np.testing.assert_array_equal(mine, theirs)

    wider = Config().model
    wider.widths, wider.stem_filters, wider.head_channels, wider.sa_eca_stages, wider.se_ratio = (8, 32), 8, 8, (2,), 4
    with pytest.raises(ValueError, match="same variant, widths and input size"):
        load_initial_weights(build_model(wider, input_size=16), source)
    with pytest.raises(FileNotFoundError, match="init_from"):
        load_initial_weights(model, tmp_path / "missing.h5")


def test_history_has_val_loss_and_metrics_have_recall_intervals(trained):
    tmp, config, metrics = trained
    with open(tmp / "run" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["val_loss"]) > 0 for r in rows)
    for split in ("val", "test"):
        for c, row in metrics[split]["per_class"].items():
            ci = row["recall_95"]
            if row["support"]:
                assert ci["low"] <= row["recall"] <= ci["high"], (split, c)


def test_init_backbone_from_copies_a_deeper_cuts_backbone_and_leaves_the_head(tmp_path):
    import dataclasses

    import tf_keras as keras

    from qana_keras.config import ModelConfig
    from qana_keras.models.qana import build_model
    from qana_keras.training.train import load_initial_weights

    def lite0(variant, size):
        return build_model(ModelConfig(variant=variant, head_channels=16, pretrained=False), input_size=size)

    keras.utils.set_random_seed(1)
    deeper = lite0("lite0-b7", 64)  # another cut and another input size: the backbone weights do not depend on it
    deeper.save(tmp_path / "b7.h5", save_format="h5")
    keras.utils.set_random_seed(2)
    student = lite0("lite0-b5", 32)
    head_before = student.get_layer("head/dense").get_weights()
    load_initial_weights(student, tmp_path / "b7.h5", prefix="lite0/", key="train.init_backbone_from")
    backbone = [layer for layer in student.layers if layer.name.startswith("lite0/") and layer.weights]
    assert backbone
    for layer in backbone:
        for mine, theirs in zip(layer.get_weights(), deeper.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    for mine, before in zip(student.get_layer("head/dense").get_weights(), head_before):
        np.testing.assert_array_equal(mine, before)
    # A shallower source lacks the deeper blocks; a model without a backbone has nothing to take.
    student.save(tmp_path / "b5.h5", save_format="h5")
    with pytest.raises(ValueError, match=r"train.init_backbone_from: .*b5.h5 has no layer 'lite0/block6"):
        load_initial_weights(lite0("lite0-b7", 64), tmp_path / "b5.h5", prefix="lite0/", key="train.init_backbone_from")
    qana = build_model(dataclasses.replace(Config().model, widths=(8, 16), stem_filters=8, head_channels=8,
                                           sa_eca_stages=(2,), se_ratio=4), input_size=16)
    with pytest.raises(ValueError, match="applies to the pretrained variants"):
        load_initial_weights(qana, tmp_path / "b7.h5", prefix="lite0/", key="train.init_backbone_from")
