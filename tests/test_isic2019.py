"""The ISIC 2019 training-layout loader and multi-source training data (HAM10000 + extra sources)."""
from __future__ import annotations

import numpy as np
import pytest
from fixtures import write_isic2019_fixture, write_ham10000_fixture

from qana_keras.data import ham10000, isic2019, splits
from qana_keras.data.checks import DatasetError

ROWS = [("ISIC_0000001", "NV", "MSK4_1"), ("ISIC_0000002", "NV", "MSK4_1"),  # one lesion, two images
        ("ISIC_0000003_downsampled", "MEL", ""), ("ISIC_0000004", "AK", ""), ("ISIC_0000005", "BKL", ""),
        ("ISIC_0000006", "SCC", ""),  # no HAM10000 class
        ("ISIC_0024400", "NV", "HAM_0000001")]  # a HAM10000 image inside the ISIC 2019 release


def test_load_metadata_maps_classes_and_leaves_out_what_has_no_ham_class(tmp_path):
    df = isic2019.load_metadata(write_isic2019_fixture(tmp_path / "isic", ROWS))
    assert df["image_id"].tolist() == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004",
                                       "ISIC_0000005"]
    assert df["dx"].tolist() == ["nv", "nv", "mel", "akiec", "bkl"]
    assert df["path"].iloc[2].endswith("ISIC_0000003_downsampled.jpg")
    assert df["lesion_id"].tolist()[:3] == ["MSK4_1", "MSK4_1", "isic2019:ISIC_0000003"]
    assert df.attrs == {"ham10000_copies": 1, "without_ham_class": {"SCC": 1}}


def test_ham10000_copies_are_recognised_by_id_and_lesion(tmp_path):
    rows = [("ISIC_0000001", "NV", "HAM_0000007"), ("ISIC_0099999", "MEL", ""), ("ISIC_0000002", "BKL", "")]
    root = write_isic2019_fixture(tmp_path / "isic", rows)
    df = isic2019.load_metadata(root, ham_image_ids={"ISIC_0099999"}, ham_lesion_ids={"HAM_0000007"})
    assert df["image_id"].tolist() == ["ISIC_0000002"]
    assert df.attrs["ham10000_copies"] == 2


@pytest.mark.parametrize("mutate, expected", [
    (lambda root: (root / "ISIC_2019_Training_Input" / "ISIC_0000004.jpg").unlink(),
     "line 5 (image 'ISIC_0000004'): no image file ISIC_0000004.jpg"),
    (lambda root: (root / "ISIC_2019_Training_Input" / "ISIC_0000009.jpg").write_bytes(b"x"),
     "ISIC_0000009.jpg: image file has no row"),
    (lambda root: root.joinpath("ISIC_2019_Training_GroundTruth.csv").write_text(
        root.joinpath("ISIC_2019_Training_GroundTruth.csv").read_text() + "ISIC_0000003,0,1,0,0,0,0,0,0,0\n"),
     "line 9 (image 'ISIC_0000003'): the same image as line 4"),
    (lambda root: root.joinpath("ISIC_2019_Training_GroundTruth.csv").write_text(
        root.joinpath("ISIC_2019_Training_GroundTruth.csv").read_text().replace(
            "ISIC_0000005,0.0,0.0,0.0,0.0,1.0", "ISIC_0000005,1.0,0.0,0.0,0.0,1.0")),
     "line 6 (image 'ISIC_0000005'): 2 classes set (MEL, BKL)"),
])
def test_bad_rows_are_named(tmp_path, mutate, expected):
    root = write_isic2019_fixture(tmp_path / "isic", ROWS)
    mutate(root)
    with pytest.raises(DatasetError) as error:
        isic2019.load_metadata(root)
    assert any(expected in problem for problem in error.value.problems), error.value.problems


def test_missing_folder_says_where_to_put_the_data(tmp_path):
    with pytest.raises(DatasetError, match="ISIC_2019_Training_GroundTruth.csv not found; put the ISIC 2019"):
        isic2019.load_metadata(tmp_path / "nowhere")


def test_split_keeps_lesions_together_and_is_stable():
    import pandas as pd

    frame = pd.DataFrame({"lesion_id": [f"L{i // 3}" for i in range(600)]})
    split = isic2019.assign_split(frame)
    assert split.groupby(frame["lesion_id"]).nunique().max() == 1  # one split per lesion
    assert 0.08 < (split == "val").mean() < 0.22
    assert split.iloc[:300].tolist() == isic2019.assign_split(frame.iloc[:300]).tolist()  # independent of the rest


def test_load_splits_adds_the_source_to_train_and_validates_it_apart(tmp_path):
    from qana_keras.config import DataConfig
    from qana_keras.data.dataset import load_splits

    data_dir = write_ham10000_fixture(tmp_path / "ham", n_lesions_per_class=3, size=(48, 36))
    meta = ham10000.load_metadata(data_dir)
    split_file = tmp_path / "split.csv"
    splits.write_split(splits.make_lesion_split(meta, seed=1), split_file)
    # The extra source repeats a HAM10000 test image under its own id: it must not enter training.
    test_image = splits.read_split(split_file).query("split == 'test'")["image_id"].iloc[0]
    rows = [(f"ISIC_{i:07d}", "NV" if i % 2 else "MEL", f"MSK4_{i // 2}") for i in range(1, 41)]
    isic = write_isic2019_fixture(tmp_path / "isic2019", rows + [(test_image, "NV", "")])
    config = DataConfig(data_dir=str(data_dir), split_file=str(split_file), cache_dir=str(tmp_path / "cache"),
                        image_size=16, extra_sources=(str(isic),))
    plain = load_splits(DataConfig(data_dir=str(data_dir), split_file=str(split_file),
                                   cache_dir=str(tmp_path / "cache"), image_size=16), log=lambda *_: None)
    data = load_splits(config, log=lambda *_: None, extra_sources=True)
    assert set(data) == {"train", "val", "test", "val_isic2019"}
    extra_train = data["train"].frame.query("source == 'isic2019'")
    assert len(data["train"]) == len(plain["train"]) + len(extra_train)
    assert len(extra_train) + len(data["val_isic2019"]) == 40
    assert set(extra_train["lesion_id"]).isdisjoint(data["val_isic2019"].frame["lesion_id"])
    assert test_image not in set(data["train"].frame["image_id"])
    assert data["test"].images.shape == plain["test"].images.shape  # HAM10000 val/test unchanged
    np.testing.assert_array_equal(data["val"].labels, plain["val"].labels)


def test_rows_left_out_need_no_image_file(tmp_path):
    """A copy of the full release without its HAM10000 and SCC images loads: those rows are dropped first."""
    root = write_isic2019_fixture(tmp_path / "isic", ROWS)
    (root / "ISIC_2019_Training_Input" / "ISIC_0000006.jpg").unlink()  # SCC
    (root / "ISIC_2019_Training_Input" / "ISIC_0024400.jpg").unlink()  # a HAM10000 copy
    df = isic2019.load_metadata(root)
    assert len(df) == 5 and df.attrs == {"ham10000_copies": 1, "without_ham_class": {"SCC": 1}}


def test_a_byte_identical_copy_of_a_ham10000_image_under_another_id_stays_out(tmp_path):
    import shutil

    from qana_keras.config import DataConfig
    from qana_keras.data.dataset import load_splits

    data_dir = write_ham10000_fixture(tmp_path / "ham", n_lesions_per_class=3, size=(48, 36))
    meta = ham10000.load_metadata(data_dir)
    split_file = tmp_path / "split.csv"
    splits.write_split(splits.make_lesion_split(meta, seed=1), split_file)
    root = write_isic2019_fixture(tmp_path / "isic2019", [("ISIC_0000001", "NV", ""), ("ISIC_0000002", "MEL", "")])
    shutil.copy(meta["path"].iloc[0], root / "ISIC_2019_Training_Input" / "ISIC_0000002.jpg")
    config = DataConfig(data_dir=str(data_dir), split_file=str(split_file), cache_dir=str(tmp_path / "cache"),
                        image_size=16, extra_sources=(str(root),))
    data = load_splits(config, log=lambda *_: None, extra_sources=True)
    ids = set(data["train"].frame["image_id"]) | set(data["val_isic2019"].frame["image_id"])
    assert "ISIC_0000001" in ids and "ISIC_0000002" not in ids
    assert "val_isic2019" not in load_splits(config, log=lambda *_: None)  # other stages: HAM10000 only


def test_extra_sources_are_refused_with_crops_and_with_clashing_names(tmp_path):
    from qana_keras.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.extra_sources works with data.crop=none only"):
        load_config(None, ["data.extra_sources=/a/isic2019", "data.crop=mask"])
    with pytest.raises(ConfigError, match="two sources share a folder name"):
        load_config(None, ["data.extra_sources=/a/isic2019,/b/isic2019"])
    config = load_config(None, ["data.extra_sources=$QANA_NO_SUCH_DIR"])  # a recorded config still loads
    with pytest.raises(ConfigError, match=r"\$QANA_NO_SUCH_DIR names an unset environment variable; set it"):
        from qana_keras.training.train import check_start

        check_start(config)


def test_training_with_an_extra_source_reports_its_validation_apart(tmp_path):
    """One tiny epoch: the source's images train, its validation split is scored every epoch and at the end."""
    from test_train import tiny_config

    from qana_keras.io import read_json
    from qana_keras.training.train import train

    from qana_keras.training.train import selection_score

    config = tiny_config(tmp_path, epochs=2)
    config.train.selection = "source_mean"
    rows = [(f"ISIC_{i:07d}", ("NV", "MEL", "BKL")[i % 3], f"MSK4_{i // 2}") for i in range(1, 61)]
    config.data.extra_sources = (str(write_isic2019_fixture(tmp_path / "isic2019", rows)),)
    lines = []
    metrics = train(tmp_path / "run", config, log=lines.append)
    assert metrics["val_isic2019"]["n_images"] == len(load_val_ids(config)) > 0
    state = read_json(tmp_path / "run" / "state.json")
    history = state["history"]
    assert 0.0 <= history[0]["val_isic2019_balanced_accuracy"] <= 1.0
    assert any("val_isic2019 bal. acc." in line for line in lines)
    # Selection weighs both sources: the kept epoch is the first best mean of the two figures.
    means = [(h["val_macro_f1"] + h["val_isic2019_balanced_accuracy"]) / 2 for h in history]
    assert state["best_epoch"] == metrics["selected_epoch"] == 1 + int(np.argmax(means))
    assert [selection_score(h, "source_mean") for h in history] == pytest.approx(means)
    assert "each extra source" in metrics["selection"]


def load_val_ids(config) -> list[str]:
    from qana_keras.data.dataset import load_splits

    return load_splits(config.data, log=lambda *_: None, extra_sources=True)["val_isic2019"].frame["image_id"].tolist()
