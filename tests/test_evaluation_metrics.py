"""Fast lesion bootstrap, weighted AUC, subgroups and the evaluate metrics dictionary (no TensorFlow)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from qana_keras import CLASSES
from qana_keras.evaluation.evaluate import _with_lesion_groups, evaluation_metrics
from qana_keras.metrics import (auc_bootstrap, bootstrap_intervals, confusion_bootstrap, metrics_from_confusion,
                                roc_curves, softmax, weighted_auc)
from qana_keras.evaluation.subgroups import HAM_ATTRIBUTES, MIN_UNITS, age_band, fitzpatrick, subgroup_report


def _noisy(n: int, accuracy: float, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, n)
    predictions = np.where(rng.random(n) < accuracy, labels, rng.integers(0, 7, n))
    return labels, predictions


def test_confusion_bootstrap_equals_the_image_level_implementation():
    labels, predictions = _noisy(500, 0.7, 0)
    lesions = np.random.default_rng(1).integers(0, 350, 500)
    slow = bootstrap_intervals(labels, predictions, lesions, n_boot=100, seed=3)
    fast = confusion_bootstrap(labels, predictions, lesions, n_boot=100, seed=3)
    for key in slow:
        assert fast[key]["low"] == pytest.approx(slow[key]["low"], abs=1e-12)
        assert fast[key]["high"] == pytest.approx(slow[key]["high"], abs=1e-12)
    assert fast["n_units"] == len(np.unique(lesions))
    for name in CLASSES:
        assert fast["recall"][name]["low"] <= fast["recall"][name]["high"]


def test_lesion_resampling_is_wider_than_image_resampling_when_images_repeat_a_lesion():
    """Ten identical images per lesion: resampling lesions must not pretend there are 10x more cases."""
    labels, predictions = _noisy(100, 0.7, 2)
    labels, predictions = np.repeat(labels, 10), np.repeat(predictions, 10)
    by_lesion = confusion_bootstrap(labels, predictions, np.repeat(np.arange(100), 10), n_boot=300)
    by_image = confusion_bootstrap(labels, predictions, np.arange(1000), n_boot=300)
    width = lambda ci: ci["top1"]["high"] - ci["top1"]["low"]  # noqa: E731
    assert width(by_lesion) > 2 * width(by_image)


def test_macro_f1_averages_the_classes_present():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0])
    cm = np.bincount(labels * 7 + predictions, minlength=49).reshape(7, 7)
    m = metrics_from_confusion(cm, [0, 1, 2])
    assert m["macro_f1"] == pytest.approx(f1_score(labels, predictions, labels=[0, 1, 2], average="macro"))
    assert metrics_from_confusion(cm, range(7))["macro_f1"] == pytest.approx(3 / 7 * m["macro_f1"])
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert np.isnan(m["recall"][3])


def test_weighted_auc_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(400), 1)  # many ties
    positives = rng.random(400) < 0.3
    weights = rng.integers(0, 4, (6, 400))
    expected = [roc_auc_score(positives, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(weighted_auc(scores, positives, weights), expected, rtol=1e-12)
    assert np.isnan(weighted_auc(scores, np.zeros(400, bool), np.ones((1, 400))))[0]


def test_auc_intervals_contain_the_point_and_roc_curves_end_at_one():
    labels, _ = _noisy(700, 0.7, 4)
    logits = np.eye(7)[labels] * 2 + np.random.default_rng(5).normal(size=(700, 7))
    probabilities = softmax(logits)
    ci = auc_bootstrap(labels, probabilities, np.arange(700) // 2, n_boot=200)
    for c, name in enumerate(CLASSES):
        point = roc_auc_score(labels == c, probabilities[:, c])
        assert ci["per_class"][name]["low"] <= point <= ci["per_class"][name]["high"]
    curves = roc_curves(labels, probabilities)
    assert set(curves) == set(CLASSES)
    assert curves["df"]["fpr"][-1] == 1.0 and curves["df"]["tpr"][-1] == 1.0


def test_age_bands_and_fitzpatrick_labels():
    assert [age_band(a) for a in (0, 29.9, 30, 45, 60, 74, 75, 85)] == \
        ["<30", "<30", "30-44", "45-59", "60-74", "60-74", ">=75", ">=75"]
    assert age_band("") == age_band(None) == age_band(float("nan")) == "unknown"
    assert [fitzpatrick(v) for v in ("1.0", "3", 6, "", None, "7")] == ["I", "III", "VI", "unknown", "unknown",
                                                                       "unknown"]


def _ham_frame(n_lesions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lesions = np.repeat(np.arange(n_lesions), 2)
    frame = pd.DataFrame({"lesion_id": [f"L{i}" for i in lesions],
                          "sex": np.where(lesions < 60, "male", np.where(lesions < 70, "female", "unknown")),
                          "age": np.where(lesions % 3 == 0, "70.0", np.where(lesions % 3 == 1, "35.0", "")),
                          "localization": "back", "dx_type": "histo"})
    labels = np.repeat(rng.integers(0, 7, n_lesions), 2)
    predictions = np.where(rng.random(len(labels)) < 0.8, labels, (labels + 1) % 7)
    return frame, labels, predictions


def test_subgroups_count_lesions_and_flag_small_groups():
    frame, labels, predictions = _ham_frame(80)
    report = subgroup_report(frame, labels, predictions, frame["lesion_id"].to_numpy(), HAM_ATTRIBUTES, n_boot=100)
    sex = {row["value"]: row for row in report["attributes"]["sex"]}
    assert [r["value"] for r in report["attributes"]["sex"]] == ["male", "female", "unknown"]  # by size, unknown last
    assert (sex["male"]["n_images"], sex["male"]["n_units"], sex["male"]["too_few"]) == (120, 60, False)
    assert (sex["female"]["n_units"], sex["female"]["too_few"]) == (10, True)
    male = frame["sex"].to_numpy() == "male"
    assert sex["male"]["top1"] == pytest.approx(np.mean(labels[male] == predictions[male]))
    ci = sex["male"]["bootstrap_95"]["top1"]
    assert ci["low"] <= sex["male"]["top1"] <= ci["high"]
    assert sum(sex["male"]["class_counts"].values()) == 120
    assert [r["value"] for r in report["attributes"]["age"]] == ["30-44", "60-74", "unknown"]
    assert report["min_units"] == MIN_UNITS and report["missing_columns"] == []
    # A threshold of 5 lesions un-flags the female group.
    loose = subgroup_report(frame, labels, predictions, frame["lesion_id"].to_numpy(), {"sex": HAM_ATTRIBUTES["sex"]},
                            min_units=5, n_boot=50)
    assert not any(r["too_few"] for r in loose["attributes"]["sex"] if r["value"] != "unknown")
    missing = subgroup_report(frame.drop(columns="dx_type"), labels, predictions, frame["lesion_id"].to_numpy(),
                              HAM_ATTRIBUTES, n_boot=10)
    assert missing["missing_columns"] == ["dx_type"]


def test_evaluation_metrics_leaves_out_rows_without_a_ham_class():
    rng = np.random.default_rng(0)
    dx = ["akiec", "bcc", "bkl", "mel", "nv", None] * 20  # None: PAD-UFES-20 SCC
    meta = pd.DataFrame({"image_id": [f"img{i}" for i in range(120)], "dx": dx,
                         "diagnostic": ["ACK", "BCC", "SEK", "MEL", "NEV", "SCC"] * 20,
                         "patient_id": [f"P{i // 3}" for i in range(120)], "fitspatrick": "2.0", "gender": "MALE",
                         "age": "50", "region": "ARM"})
    logits = rng.normal(size=(120, 7))
    logits[np.arange(5, 120, 6), 1] += 10  # every SCC image predicted bcc
    m = evaluation_metrics(meta, logits, "pad-ufes-20", n_boot=50)
    assert m["n_images"] == 100 and m["excluded"]["n_images"] == 20
    assert m["excluded"]["by_label"]["SCC"]["predicted"]["bcc"] == 20
    assert m["macro_over"] == ["akiec", "bcc", "bkl", "mel", "nv"]
    assert m["groups"] == {"column": "patient_id", "n": len({f"P{i // 3}" for i in range(120) if dx[i]})}
    assert m["per_class"]["df"]["support"] == 0 and m["per_class"]["df"]["recall_95"]["low"] is None
    assert len(m["predictions"]["image_id"]) == 100 and "img5" not in m["predictions"]["image_id"]
    assert [r["value"] for r in m["subgroups"]["attributes"]["fitzpatrick"]] == ["II"]
    with pytest.raises(ValueError, match="cannot resample by 'lesion_id'"):
        evaluation_metrics(meta, logits, "pad-ufes-20", group_by="lesion_id")
    with pytest.raises(ValueError, match="120 metadata rows but 3 predictions"):
        evaluation_metrics(meta, logits[:3], "pad-ufes-20")


def test_isic_lesion_groupings_are_checked(tmp_path):
    meta = pd.DataFrame({"image_id": ["ISIC_1", "ISIC_2"], "dx": ["nv", "mel"], "path": ["a", "b"]})
    csv = tmp_path / "groups.csv"
    csv.write_text("image,lesion_id,diagnosis_confirm_type\nISIC_1,HAM_1,histopathology\nISIC_2,HAM_1,histopathology\n")
    assert _with_lesion_groups(meta, csv)["lesion_id"].tolist() == ["HAM_1", "HAM_1"]
    csv.write_text("image,lesion_id\nISIC_1,HAM_1\n")
    with pytest.raises(ValueError, match="no lesion_id for 1 image.*ISIC_2"):
        _with_lesion_groups(meta, csv)
    csv.write_text("image,lesion\nISIC_1,HAM_1\n")
    with pytest.raises(ValueError, match="missing column.*lesion_id"):
        _with_lesion_groups(meta, csv)


def test_fast_paired_bootstrap_equals_the_image_level_implementation():
    from qana_keras.metrics import paired_bootstrap_difference, paired_confusion_bootstrap

    labels, a = _noisy(400, 0.6, 7)
    _, b = _noisy(400, 0.8, 7)
    lesions = np.arange(400) // 2
    slow = paired_bootstrap_difference(labels, a, b, lesions, n_boot=100, seed=2)
    fast = paired_confusion_bootstrap(labels, a, b, lesions, n_boot=100, seed=2)
    for key in slow:
        for field in ("difference", "low", "high", "real"):
            assert fast[key][field] == pytest.approx(slow[key][field], abs=1e-12)
