"""`qana evaluate` on HAM10000 and ISIC 2018 fixtures, for float/quantized .h5 and Akida .fbz models."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from fixtures import write_isic2018_fixture
from test_convert import QUIET, converted_tiny_run

from qana_keras import CLASSES
from qana_keras.cli import main
from qana_keras.data import splits
from qana_keras.evaluation.evaluate import evaluate_model
from qana_keras.io import read_json


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run, config, _ = converted_tiny_run(tmp_path_factory)
    images, gt = write_isic2018_fixture(tmp_path_factory.mktemp("isic"), per_class=2)
    return run, config, images, gt


def _check_metrics(result: dict, n: int) -> None:
    assert result["n_images"] == n
    for key in ("top1", "balanced_accuracy", "macro_f1"):
        assert 0.0 <= result[key] <= 1.0
    assert set(result["per_class"]) == set(CLASSES)
    for values in result["per_class"].values():
        assert set(values) >= {"precision", "recall", "f1", "support"}
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (7, 7) and matrix.sum() == n
    assert np.trace(matrix) / n == pytest.approx(result["top1"])


@pytest.mark.parametrize("artifact", ["qana_float.h5", "qana.fbz"])
def test_evaluate_ham10000_test_split(run, artifact, tmp_path):
    run_dir, config, _, _ = run
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(run_dir / artifact), "--data", config.data.data_dir,
                 "--split", "test", "--json", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    result = read_json(out)
    n_test = int((splits.read_split(config.data.split_file)["split"] == "test").sum())
    _check_metrics(result, n_test)
    assert result["split"] == "test" and result["image_size"] == config.data.image_size


def test_fbz_scores_like_the_quantized_keras_model(run):
    """Quantized .h5 and .fbz on the ISIC layout with an explicit ground-truth CSV: same predictions."""
    run_dir, config, images, gt = run
    q = evaluate_model(run_dir / "qana_i8_w8_a8.h5", images, "isic2018", ground_truth=gt, **QUIET)
    a = evaluate_model(run_dir / "qana.fbz", images, "isic2018", ground_truth=gt, **QUIET)
    assert a["model_type"] == "Model" and q["model_type"] == "Functional"
    assert a["confusion_matrix"] == q["confusion_matrix"]
    _check_metrics(q, 2 * len(CLASSES))


def test_evaluate_isic2018_folder(run, tmp_path):
    run_dir, _, images, gt = run
    out = tmp_path / "isic.json"
    # The parent folder holds exactly one image folder and one *GroundTruth*.csv: found without --ground-truth.
    assert main(["evaluate", "--model", str(run_dir / "qana.fbz"), "--data", str(images.parent), "--format", "isic2018",
                 "--json", str(out)]) == 0
    result = read_json(out)
    _check_metrics(result, 2 * len(CLASSES))
    assert result["format"] == "isic2018"


def test_evaluate_needs_the_config_beside_the_model(run, tmp_path):
    run_dir, config, _, _ = run
    lone = tmp_path / "qana.fbz"
    shutil.copy(run_dir / "qana.fbz", lone)
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        evaluate_model(lone, config.data.data_dir, **QUIET)
    with pytest.raises(ValueError, match="unknown model format"):
        (tmp_path / "model.onnx").write_text("x")
        evaluate_model(tmp_path / "model.onnx", config.data.data_dir, **QUIET)
    assert main(["evaluate", "--model", str(run_dir / "qana.fbz"), "--data", config.data.data_dir,
                 "--format", "isic2018", "--json", str(tmp_path / "x.json")]) == 2  # not an ISIC folder


def test_evaluate_a_run_folder_reads_its_akida_model(run, tmp_path, capsys):
    """`make evaluate` passes the run folder: the run's own .fbz is scored, whatever its variant is called."""
    run_dir, config, _, _ = run
    out = tmp_path / "run.json"
    assert main(["evaluate", "--model", str(run_dir), "--data", config.data.data_dir, "--split", "test",
                 "--json", str(out), "--no-figures"]) == 0
    assert read_json(out)["model"].endswith("qana.fbz")
    unconverted = tmp_path / "unconverted"
    unconverted.mkdir()
    shutil.copy(run_dir / "config.yaml", unconverted / "config.yaml")
    assert main(["evaluate", "--model", str(unconverted), "--json", str(tmp_path / "y.json")]) == 2
    assert "qana.fbz not found; convert the run first" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path), "--json", str(tmp_path / "z.json")]) == 2
    assert "no config.yaml; pass a run folder, a .fbz or an .h5" in capsys.readouterr().err


def test_tta_averages_the_softmax_over_the_named_views():
    from qana_keras.metrics import softmax
    from qana_keras.runtime.tta import dihedral_views, tta_logits

    images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    seen = []

    def predict(batch):  # logits that depend on the view, so that the average is visible
        seen.append(batch)
        return batch.reshape(len(batch), -1)[:, :7].astype(np.float64) / 50

    np.testing.assert_array_equal(tta_logits(predict, images, 1), predict(images))
    seen.clear()
    two = tta_logits(predict, images, 2)
    views = dihedral_views(images)
    np.testing.assert_array_equal(seen[1], images[:, :, ::-1])  # the second view is the mirror image
    expected = (softmax(predict(views[0])) + softmax(predict(views[4]))) / 2
    np.testing.assert_allclose(softmax(two), expected, rtol=1e-9)
    seen.clear()
    tta_logits(predict, images, 8)
    assert sorted(v.tobytes() for v in seen) == sorted(v.tobytes() for v in views)  # each symmetry once
    with pytest.raises(ValueError, match="--tta 3: use one of 1, 2, 4, 8"):
        tta_logits(predict, images, 3)


def test_evaluate_with_tta_on_the_akida_model(run, tmp_path):
    """Eight views through the Akida model: scored like one view, and the view count recorded in the JSON."""
    run_dir, config, images, gt = run
    one = evaluate_model(run_dir / "qana.fbz", images, "isic2018", ground_truth=gt, **QUIET)
    eight = evaluate_model(run_dir / "qana.fbz", images, "isic2018", ground_truth=gt, tta=8, **QUIET)
    assert one["tta_views"] == 1 and eight["tta_views"] == 8
    _check_metrics(eight, 2 * len(CLASSES))
    with pytest.raises(ValueError, match="--tta 5"):
        evaluate_model(run_dir / "qana.fbz", images, "isic2018", ground_truth=gt, tta=5, **QUIET)
