"""Readout updates on a tiny Akida 2.0 model: backbone features, integer write-back, protocols, run folder."""
from __future__ import annotations

import numpy as np
import pytest
from fixtures import QUIET, TINY_QANA, random_images, write_pad_ufes_fixture, write_run_fixture

from qana_keras import CLASSES
from qana_keras.io import RunFolderError, read_json, write_json
from qana_keras.onchip.learn import LearnConfig, LearnError, class_incremental, patient_split
from qana_keras.onchip.readout import (class_sample_weights, fit_readout, quantize_readout, read_readout, split_readout,
                                write_readout)

K = len(CLASSES)


@pytest.fixture(scope="module")
def tiny_akida(tiny_qana):
    return tiny_qana.akida()


def blobs(n_per_class=40, dim=24, classes=K, seed=0, spread=1.0):
    """Non-negative integer 'features' (0..127) with one mean per class."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 100, (classes, dim))
    x = np.concatenate([rng.normal(centres[c], 6 * spread, (n_per_class, dim)) for c in range(classes)])
    y = np.repeat(np.arange(classes), n_per_class)
    return np.clip(np.round(x), 0, 127).astype(np.int8), y


def test_quantized_readout_follows_the_float_readout():
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(0, 0.01, (64, 8)), rng.normal(0, 2.0, 8)
    x = rng.integers(0, 128, (500, 64)).astype(np.int8)
    q = quantize_readout(kernel, bias)
    assert q.weights.dtype == np.int8 and np.abs(q.weights).max() == 127
    assert q.bias.dtype == np.int8 and q.bias_shift.dtype == np.uint8
    float_logits = x.astype(float) @ kernel + bias
    emulated = q.logits(x)
    assert np.abs(emulated - float_logits).max() < 0.02 * np.ptp(float_logits)
    assert np.mean(emulated.argmax(1) == float_logits.argmax(1)) > 0.97
    # The shifted int8 bias carries the float bias to within one step of its shift.
    steps = (q.bias.astype(np.int64) << q.bias_shift.astype(np.int64)) * q.scales
    np.testing.assert_allclose(steps, bias, atol=float((2.0 ** q.bias_shift * q.scales).max()))
    with pytest.raises(LearnError, match="overflow the 12-bit accumulator"):
        quantize_readout(kernel, bias, buffer_bits=12)


def test_readout_of_the_akida_model_is_emulated_exactly(tiny_akida):
    from qana_keras.onchip.readout import backbone_features
    from qana_keras.runtime.load import predict_logits

    backbone, dense, dequantizer = split_readout(tiny_akida)
    assert dense.name == "head/dense" and len(backbone.layers) == len(tiny_akida.layers) - 2
    x = random_images(24, seed=1)
    features = backbone_features(backbone, x, batch_size=10, **QUIET)
    assert features.shape == (24, int(np.prod(backbone.output_shape))) and features.dtype == np.int8
    readout = read_readout(tiny_akida)
    np.testing.assert_allclose(readout.logits(features), predict_logits(tiny_akida, x), rtol=1e-5, atol=1e-6)


def test_written_readout_runs_on_akida_and_can_grow(tiny_akida, tmp_path):
    import akida

    from qana_keras.onchip.readout import backbone_features
    from qana_keras.runtime.load import predict_logits

    x = random_images(32, seed=2)
    before = predict_logits(tiny_akida, x)
    backbone, *_ = split_readout(tiny_akida)
    features = backbone_features(backbone, x, **QUIET)
    rng = np.random.default_rng(3)
    kernel, bias = rng.normal(0, 0.05, (features.shape[1], 8)), rng.normal(0, 1.0, 8)
    readout = quantize_readout(kernel, bias)
    written = write_readout(tiny_akida, readout)
    assert list(written.output_shape) == [1, 1, 8]
    after = predict_logits(written, x)
    np.testing.assert_allclose(after, readout.logits(features), rtol=1e-5, atol=1e-6)
    host = features.astype(float) @ kernel + bias
    assert np.mean(after.argmax(1) == host.argmax(1)) >= 0.9
    # The original model is untouched, and the written one survives save/load.
    np.testing.assert_array_equal(predict_logits(tiny_akida, x), before)
    written.save(str(tmp_path / "w.fbz"))
    np.testing.assert_array_equal(predict_logits(akida.Model(str(tmp_path / "w.fbz")), x), after)
    with pytest.raises(LearnError, match="reads 5 features"):
        write_readout(tiny_akida, quantize_readout(np.ones((5, 3)), np.zeros(3)))


def test_a_model_without_dense_readout_is_refused(tiny_akida):
    import akida

    backbone = akida.Model(layers=tiny_akida.layers[:-2])
    with pytest.raises(LearnError, match="not Dense1D -> Dequantizer"):
        split_readout(backbone)


def test_fit_readout_separates_blobs_and_never_predicts_absent_classes():
    x, y = blobs()
    keep = y != 3  # class 3 absent from training
    kernel, bias = fit_readout(x[keep], y[keep], K, C=1.0)
    pred = (x.astype(float) @ kernel + bias).argmax(1)
    assert np.mean(pred[keep] == y[keep]) > 0.95
    assert not np.any(pred == 3)
    q = quantize_readout(kernel, bias)
    assert np.mean(q.logits(x[keep]).argmax(1) == y[keep]) > 0.95


def test_sample_weights():
    y = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(class_sample_weights(y, 2, "balanced"), [2 / 3, 2 / 3, 2 / 3, 2])
    np.testing.assert_allclose(class_sample_weights(y, 2, "sqrt"), np.sqrt([2 / 3, 2 / 3, 2 / 3, 2]))
    with pytest.raises(ValueError, match="class weighting"):
        class_sample_weights(y, 2, "log")


def test_patient_split_keeps_patients_whole():
    import pandas as pd

    rng = np.random.default_rng(0)
    patients = np.repeat([f"P{i}" for i in range(60)], rng.integers(1, 4, 60))
    labels = np.array([hash(p) % 3 for p in patients])
    frame = pd.DataFrame({"patient_id": patients})
    test = patient_split(frame, labels, 1 / 3, seed=0)
    assert not set(patients[test]) & set(patients[~test])
    assert 0.2 < test.mean() < 0.45
    assert set(labels[test]) == {0, 1, 2}


def test_class_incremental_protocol_on_features():
    x, y = blobs(n_per_class=30)
    half = np.arange(len(y)) % 2 == 0
    features, labels = {"train": x[half], "test": x[~half]}, {"train": y[half], "test": y[~half]}
    base = [c for c in CLASSES if c not in ("vasc", "df")]
    rows, (readout, kernel, bias) = class_incremental(features, labels, base, LearnConfig(C=1.0), shots=(5, 0))
    assert [(r["shots"], r["step"]) for r in rows] == [(5, "+vasc"), (5, "+df"), ("all", "+vasc"), ("all", "+df")]
    assert [r["train_images_new_class"] for r in rows] == [5, 5, 15, 15]
    for r in rows:
        assert r["new_class_recall"] > 0.8 and r["base_accuracy_before"] > 0.9 and 0 <= r["base_accuracy_after"] <= 1
    # The last step's integer readout (what is written to the chip) decides like its float fit.
    assert readout.weights.shape == (x.shape[1], K)
    float_pred = (features["test"] @ kernel + bias).argmax(1)
    assert np.mean(readout.logits(features["test"]).argmax(1) == float_pred) > 0.97


def test_class_incremental_run_writes_the_last_step_into_the_akida_model(tmp_path):
    """A 5-class backbone (classes.json) gets vasc and df; the written 7-unit model matches the emulation."""
    import akida

    from qana_keras.config import ModelConfig
    from qana_keras.conversion.quantize import quantize_for_akida, to_akida
    from qana_keras.onchip.learn import learn_run
    from qana_keras.models.qana import build_model

    base = ["akiec", "bcc", "bkl", "mel", "nv"]
    run, _, _ = write_run_fixture(tmp_path, 5, size=(48, 36), image_size=16)
    five = build_model(ModelConfig(**TINY_QANA), input_size=16, num_classes=len(base))
    qmodel, _ = quantize_for_akida(five, random_images(32), "qana", batch_size=16, **QUIET)
    to_akida(qmodel, strict=True, variant="qana", **QUIET).save(str(run / "qana.fbz"))
    write_json(run / "classes.json", {"classes": base})
    result = learn_run(run, protocols=("class-incremental",), config=LearnConfig(C=1.0, verify_ham=-1), batch_size=16,
                       **QUIET)["class-incremental"]
    assert read_json(run / "learn_class-incremental.json") == result
    assert "| shots | step |" in (run / "learn_class-incremental.md").read_text()
    assert [r["step"] for r in result["rows"]] == ["+vasc", "+df"] * 4
    written = akida.Model(str(run / "qana_learn_class-incremental.fbz"))
    assert list(written.output_shape) == [1, 1, K]
    for check in result["akida_end_to_end_checks"].values():
        assert check["argmax_agreement_vs_integer_emulation"] == 1.0
        assert check["max_abs_logit_diff_vs_integer_emulation"] < 1e-4


# --------------------------------------------------------------------------------------------------
# Run folder (untrained tiny model converted without training; PAD-UFES-20 fixture)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_akida):
    root = tmp_path_factory.mktemp("learn")
    run, _, _ = write_run_fixture(root, 5, size=(48, 36), image_size=16)
    pad = write_pad_ufes_fixture(root / "pad", per_diagnostic=6, missing_per_diagnostic=1, size=(40, 40))
    tiny_akida.save(str(run / "qana.fbz"))
    return run, pad


def test_learn_run_domain_and_new_class(tiny_run):
    from qana_keras.onchip.learn import learn_run

    run, pad = tiny_run
    results = learn_run(run, pad_root=pad, config=LearnConfig(C=1.0, verify_ham=5), batch_size=16, **QUIET)
    for protocol, units in (("domain", 7), ("new-class", 8)):
        for name in (f"learn_{protocol}.json", f"learn_{protocol}.md", f"qana_learn_{protocol}.fbz"):
            assert (run / name).exists(), name
        saved = read_json(run / f"learn_{protocol}.json")
        assert saved == results[protocol]
        assert len(saved["classes"]) == units
        assert saved["pad_split"]["train_patients"] > 0 and saved["pad_split"]["test_patients"] > 0
        assert set(saved["rows"]) == {"original Akida", "refit, HAM replay only (control)",
                                      "refit, PAD train x4 + HAM replay"}
        for check in saved["akida_end_to_end_checks"].values():
            assert check["argmax_agreement_vs_integer_emulation"] == 1.0
            assert check["max_abs_logit_diff_vs_integer_emulation"] < 1e-4
        assert all(c["argmax_agreement_vs_integer_emulation"] == 1.0 for c in saved["original_model_check"].values())
        assert "FEATURES" in saved["replay"]
    import akida

    assert list(akida.Model(str(run / "qana_learn_new-class.fbz")).output_shape) == [1, 1, 8]
    # PAD SCC images are labelled scc (index 7) only in the new-class protocol.
    assert read_json(run / "learn_new-class.json")["pad_split"]["test_counts"]["scc"] >= 1
    assert "scc" not in read_json(run / "learn_domain.json")["pad_split"]["test_counts"]
    assert (run / "learn_features.npz").exists()
    before = (run / "learn_domain.json").read_text()
    with pytest.raises(RunFolderError, match="pass --overwrite"):
        learn_run(run, pad_root=pad, **QUIET)
    assert (run / "learn_domain.json").read_text() == before


def test_class_incremental_refuses_a_backbone_that_saw_every_class(tiny_run, capsys):
    from qana_keras.cli import main
    from qana_keras.onchip.learn import learn_run

    run, pad = tiny_run
    with pytest.raises(LearnError, match="already seen vasc and df"):
        learn_run(run, protocols=("class-incremental",), **QUIET)
    assert main(["learn", "--run", str(run), "--protocol", "class-incremental"]) == 1
    assert "already seen vasc and df" in capsys.readouterr().err
    write_json(run / "classes.json", {"classes": ["akiec", "bcc"]})
    try:
        with pytest.raises(LearnError, match="has 7 outputs but classes.json names 2"):
            learn_run(run, protocols=("class-incremental",), **QUIET)
    finally:
        (run / "classes.json").unlink()


def test_metrics_average_over_the_classes_present():
    from qana_keras.onchip.learn import _metrics

    names = list(CLASSES) + ["scc"]
    labels = np.array([0, 0, 1, 1])
    logits = np.eye(8)[[0, 7, 1, 1]]  # one akiec image called scc: an error, but scc is not averaged in
    m = _metrics(labels, logits, names)
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx(np.mean([2 / 3, 1.0]))
    assert m["balanced_accuracy"] == pytest.approx(0.75)
