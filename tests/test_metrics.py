import numpy as np
import pytest

from qana_keras.metrics import (bootstrap_intervals, classification_metrics, format_difference, headline_metrics,
                               paired_bootstrap_difference, softmax)


def test_classification_metrics_on_a_known_case():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 4, 5, 6])
    logits = np.eye(7)[[0, 1, 1, 1, 2, 0, 3, 4, 5, 6]] * 5
    m = classification_metrics(labels, logits)
    assert m["top1"] == pytest.approx(0.8)
    assert m["per_class"]["akiec"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["bcc"]["precision"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5 + 4) / 7)
    assert m["confusion_matrix"][0] == [1, 1, 0, 0, 0, 0, 0]
    assert m["n_images"] == 10 and m["classes"][3] == "df"


def test_bootstrap_resamples_whole_lesions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 300)
    preds = np.where(rng.random(300) < 0.8, labels, (labels + 1) % 7)
    lesions = np.repeat(np.arange(100), 3)  # three images per lesion
    ci = bootstrap_intervals(labels, preds, lesions, n_boot=300)
    top1 = np.mean(labels == preds)
    assert ci["top1"]["low"] < top1 < ci["top1"]["high"]
    assert ci["top1"]["high"] - ci["top1"]["low"] < 0.2


def test_paired_difference_detects_a_real_gain_and_not_noise():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, 600)
    lesions = np.arange(600)
    worse = np.where(rng.random(600) < 0.6, labels, (labels + 1) % 7)
    better = np.where(rng.random(600) < 0.9, labels, (labels + 1) % 7)
    real = paired_bootstrap_difference(labels, worse, better, lesions, n_boot=300)
    assert real["top1"]["real"] and real["top1"]["low"] > 0
    same = paired_bootstrap_difference(labels, worse, worse.copy(), lesions, n_boot=300)
    assert not same["macro_f1"]["real"]


def test_format_difference_in_points_and_marks_only_real_ones():
    assert format_difference({"difference": 0.006, "low": -0.011, "high": 0.026, "real": False}) == "+0.6 [-1.1, +2.6]"
    real = {"difference": -0.025, "low": -0.040, "high": -0.009, "real": True}
    assert format_difference(real) == "-2.5 [-4.0, -0.9] *"
    assert format_difference(real, mark="*") == "-2.5 [-4.0, -0.9]*"


def test_headline_metrics_agree_with_the_full_metrics():
    rng = np.random.default_rng(2)
    labels, logits = rng.integers(0, 7, 200), rng.normal(size=(200, 7))
    full = classification_metrics(labels, logits)
    assert headline_metrics(labels, logits.argmax(1)) == {k: round(full[k], 4)
                                                         for k in ("top1", "balanced_accuracy", "macro_f1")}


def test_softmax_is_over_classes_and_stable_for_large_logits():
    logits = np.array([[1000.0, 1000.0, 0.0], [0.0, np.log(3.0), -np.inf]])
    np.testing.assert_allclose(softmax(logits), [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], atol=1e-15)
    assert softmax(logits.astype(np.float32)).dtype == np.float32
