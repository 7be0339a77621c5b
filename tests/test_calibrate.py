"""Decision offsets, temperature scaling, ECE, folding into head/dense and the Akida model, run folder."""
from __future__ import annotations

import numpy as np
import pytest
from fixtures import QUIET, random_images, write_run_fixture
from sklearn.metrics import balanced_accuracy_score, f1_score

from qana_keras import CLASSES
from qana_keras.refit.calibrate import (add_offsets_to_quantized, add_to_dense_bias, fit_offsets, fit_temperature,
                                  objective_score, reliability)
from qana_keras.io import RunFolderError, read_json

K = len(CLASSES)


def biased_logits(n: int = 2000, seed: int = 0, shift: float = 2.0):
    """Noisy one-hot-ish logits where class 3 (df) is pushed down by ``shift``: its recall suffers."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    logits = rng.normal(0, 1.0, (n, K))
    logits[np.arange(n), labels] += 2.0
    logits[:, 3] -= shift
    return logits, labels


def test_objective_score_matches_sklearn():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, K, 300), rng.integers(0, K - 1, 300)  # one class never predicted
    assert objective_score(y, p, "macro_f1", K) == pytest.approx(
        f1_score(y, p, labels=list(range(K)), average="macro", zero_division=0))
    assert objective_score(y, p, "balanced_accuracy", K) == pytest.approx(balanced_accuracy_score(y, p))
    with pytest.raises(ValueError, match="objective must be one of"):
        objective_score(y, p, "accuracy", K)


@pytest.mark.parametrize("objective", ["macro_f1", "balanced_accuracy"])
def test_offsets_undo_a_class_bias_and_raise_the_objective(objective):
    logits, labels = biased_logits()
    offsets, report = fit_offsets(logits, labels, objective)
    assert report["val_after"] > report["val_before"] + 0.02
    assert objective_score(labels, (logits + offsets).argmax(1), objective, K) == pytest.approx(report["val_after"])
    # df must be lifted against the others by about the injected shift.
    others = np.delete(offsets, 3).mean()
    assert 1.0 < offsets[3] - others < 3.0
    assert abs(offsets.mean()) < 1e-9
    # On fresh data from the same distribution the gain holds (offsets are not just noise-fitting).
    fresh, fresh_labels = biased_logits(seed=7)
    assert objective_score(fresh_labels, (fresh + offsets).argmax(1), objective, K) > \
        objective_score(fresh_labels, fresh.argmax(1), objective, K) + 0.02


def test_offsets_stay_zero_when_nothing_can_be_gained():
    labels = np.repeat(np.arange(K), 20)
    logits = np.eye(K)[labels] * 10.0  # perfectly separated: every small offset ties, zero must win
    offsets, report = fit_offsets(logits, labels)
    np.testing.assert_array_equal(offsets, 0.0)
    assert report["val_before"] == report["val_after"] == 1.0
    with pytest.raises(ValueError, match="do not match"):
        fit_offsets(logits[:5], labels)


def test_temperature_recovers_overconfidence_and_lowers_ece():
    rng = np.random.default_rng(2)
    n, true_t = 6000, 2.5
    z = rng.normal(0, 2.0, (n, K))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(K, p=row) for row in p])  # z is calibrated; z * true_t is overconfident
    t = fit_temperature(z * true_t, labels)
    assert t == pytest.approx(true_t, rel=0.1)
    before, after = reliability(z * true_t, labels), reliability(z * true_t, labels, t)
    assert before["ece"] > 0.08 and after["ece"] < 0.03 and after["nll"] < before["nll"]
    assert len(before["bins"]) == 15 and sum(b["count"] for b in before["bins"]) == n
    # Temperature never changes the decision.
    np.testing.assert_array_equal((z * true_t / t).argmax(1), z.argmax(1))


def test_reliability_bins_match_sklearn_calibration_curve():
    """Same bins as sklearn's calibration_curve (edges included), which drops the empty bins we keep."""
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(4)
    logits, labels = rng.normal(0, 3.0, (1500, K)), rng.integers(0, K, 1500)
    logits[:4] = 0.0  # confidence exactly 1/7, and ties
    rel = reliability(logits, labels)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    accuracy, confidence = calibration_curve(p.argmax(1) == labels, p.max(1), n_bins=15)
    filled = [b for b in rel["bins"] if b["count"]]
    assert len(filled) < 15  # some bins are empty here: calibration_curve leaves them out
    np.testing.assert_allclose([b["accuracy"] for b in filled], accuracy, rtol=0, atol=1e-12)
    np.testing.assert_allclose([b["confidence"] for b in filled], confidence, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
def test_calibration_markdown_names_classes_by_the_run():
    """A 5-class run's rows are akiec, bcc, bkl, mel, nv: mel must not be reported as df."""
    from qana_keras.refit.calibrate import _summary, calibration_markdown

    classes = ("akiec", "bcc", "bkl", "mel", "nv")
    labels = np.repeat(np.arange(5), 4)
    logits = np.eye(5, dtype=np.float32)[np.where(labels == 3, 4, labels)]  # every mel called nv
    row = _summary(labels, logits, classes)
    assert row["recall"] == {"akiec": 1.0, "bcc": 1.0, "bkl": 1.0, "mel": 0.0, "nv": 1.0}
    check = {"argmax_agreement": 1.0, "images": 20, "disagreements": 0, "max_abs_logit_diff": 0.0}
    md = calibration_markdown({"variant": "v", "objective": "macro_f1", "fit_on": "akida", "n_test": 20,
                               "classes": list(classes), "offsets": dict.fromkeys(classes, 0.0),
                               "test": {"Akida": row}, "akida_check": check, "temperature": {}})
    assert "| recall mel | 0.00 |" in md and "recall df" not in md


# Folding into the tiny QANA and its Akida model


@pytest.fixture(scope="module")
def tiny(tiny_qana):
    return tiny_qana.model, tiny_qana.qmodel, tiny_qana.akida()


def test_offsets_fold_into_the_float_head_exactly(tiny):
    model, _, _ = tiny
    offsets = np.linspace(-1, 1, K).astype(np.float32)
    x = random_images(8, seed=3)
    shifted = add_to_dense_bias(model, offsets)
    np.testing.assert_allclose(shifted.predict(x, verbose=0), model.predict(x, verbose=0) + offsets, atol=1e-5)


def test_offsets_reach_the_akida_dense_bias(tiny):
    from qana_keras.conversion.quantize import to_akida
    from qana_keras.runtime.load import load_keras_model, predict_logits

    model, qmodel, ak = tiny
    x = random_images(64, seed=4)
    before = predict_logits(ak, x)
    spread = float(np.ptp(before))
    offsets = np.array([0.0, 0.5, -0.5, 1.0, 0.0, -1.0, 0.25]) * spread
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:  # the run's quantized model is reloaded from disk, as in calibrate_run
        path = Path(d) / "q.h5"
        qmodel.save(path, include_optimizer=False, save_format="h5")
        q_cal = load_keras_model(path)
    add_offsets_to_quantized(q_cal, offsets)
    ak_cal = to_akida(q_cal, strict=True, variant="qana", **QUIET)
    after = predict_logits(ak_cal, x)
    # The bias is stored as int8 << shift: the chip adds the offsets up to that rounding.
    assert np.abs(after - (before + offsets)).max() < 0.02 * spread
    assert np.mean(after.argmax(1) == (before + offsets).argmax(1)) >= 0.95
    assert np.mean(after.argmax(1) != before.argmax(1)) > 0.05, "offsets this large must change decisions"
    with pytest.raises(ValueError, match="no bias of shape"):
        add_offsets_to_quantized(q_cal, np.zeros(3))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_qana):
    """A run folder holding the untrained tiny QANA and its conversion (no training: seconds, not minutes)."""
    import shutil

    from qana_keras.io import write_json

    run, config, _ = write_run_fixture(tmp_path_factory.mktemp("calibrate"), 6, size=(48, 36), image_size=16)
    tiny_qana.model.save(run / "qana_float.h5", save_format="h5")
    tiny_qana.qmodel.save(run / "qana_i8_w8_a8.h5", include_optimizer=False, save_format="h5")
    shutil.copy(tiny_qana.fbz, run / "qana.fbz")
    write_json(run / "conversion.json", {"hybrid": None, "precision": "i8_w8_a8", "artifacts": {"akida": "qana.fbz"},
                                         "calibration": {"images": 16, "seed": 0, "batch_size": 16, "epochs": 1}})
    return run


def test_calibrate_run_writes_artifacts_and_refuses_to_overwrite(tiny_run):
    from qana_keras.refit.calibrate import calibrate_run

    report = calibrate_run(tiny_run, batch_size=16, **QUIET)
    for name in ("calibration.json", "calibration.md", "calibration_reliability.png", "qana_calibrated_float.h5",
                 "qana_calibrated_i8_w8_a8.h5", "qana_calibrated.fbz"):
        assert (tiny_run / name).exists(), name
    saved = read_json(tiny_run / "calibration.json")
    assert saved["offsets"] == report["offsets"] and set(saved["offsets"]) == set(CLASSES)
    assert set(saved["test"]) == {"float", "float + offsets", "Akida", "Akida + offsets (on chip)"}
    assert saved["fit"]["val_after"] >= saved["fit"]["val_before"]
    # The Akida bias is an int8 << shift per class: the folded offsets arrive within about 1/128 of their size.
    largest = max(abs(v) for v in saved["offsets"].values())
    assert saved["akida_check"]["max_abs_logit_diff"] <= largest / 50 + 1e-3
    assert 0 <= saved["akida_check"]["argmax_agreement"] <= 1
    for t in saved["temperature"].values():
        assert t["temperature"] > 0 and 0 <= t["after"]["ece"] <= 1
    assert (tiny_run / "calibration_reliability.png").read_bytes()[:4] == b"\x89PNG"
    before = (tiny_run / "calibration.json").read_text()
    with pytest.raises(RunFolderError, match="pass --overwrite"):
        calibrate_run(tiny_run, **QUIET)
    assert (tiny_run / "calibration.json").read_text() == before


def test_cli_calibrate_errors(tiny_run, tmp_path, capsys):
    import shutil

    from qana_keras.cli import main

    # Its own copy with a calibration already there: it must not rely on the test above having run on this
    # fixture (when xdist does not group a module, its tests run on different workers, each with its own fixture).
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "calibration.json").write_text("{}")
    assert main(["calibrate", "--run", str(run)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["calibrate", "--run", str(tiny_run.parent / "nowhere")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
