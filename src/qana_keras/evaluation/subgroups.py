"""Metrics per subgroup (sex, age band, site, diagnosis type, Fitzpatrick skin type) with lesion-level intervals.

A subgroup is judged only when it holds at least ``MIN_UNITS`` resampling units (lesions for HAM10000,
patients for PAD-UFES-20). Below that its 95% interval is wider than about +-0.12 for a top-1 near
0.75 (binomial standard error sqrt(0.75 * 0.25 / 50) = 0.061), too wide to tell a real gap from noise:
such groups are still listed, with ``too_few: true``, and the report prints them as "too few to judge".
Macro metrics inside a group average over the classes that occur in that group (``macro_over``).
No TensorFlow here.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qana_keras import CLASSES
from qana_keras.metrics import confusion_bootstrap, metrics_from_confusion

MIN_UNITS = 50
UNKNOWN = "unknown"

# (low inclusive, high exclusive, label). HAM10000 ages are multiples of 5 (0..85).
AGE_BANDS = ((0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"), (75, math.inf, ">=75"))
FITZPATRICK = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}


def age_band(value) -> str:
    try:
        age = float(value)
    except (TypeError, ValueError):
        return UNKNOWN
    if math.isnan(age):
        return UNKNOWN
    return next(label for low, high, label in AGE_BANDS if low <= age < high)


def _text(value) -> str:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()
    return text.lower() if text else UNKNOWN


def fitzpatrick(value) -> str:
    try:
        return FITZPATRICK[int(float(value))]
    except (TypeError, ValueError, KeyError):
        return UNKNOWN


# attribute -> (metadata column, value -> group label, order of the labels or None for "by size")
HAM_ATTRIBUTES = {
    "sex": ("sex", _text, None),
    "age": ("age", age_band, [b[2] for b in AGE_BANDS] + [UNKNOWN]),
    "localization": ("localization", _text, None),
    "dx_type": ("dx_type", _text, None),
}
# PAD-UFES-20 spells the column "fitspatrick".
PAD_UFES_ATTRIBUTES = {
    "fitzpatrick": ("fitspatrick", fitzpatrick, list(FITZPATRICK.values()) + [UNKNOWN]),
    "sex": ("gender", _text, None),
    "age": ("age", age_band, [b[2] for b in AGE_BANDS] + [UNKNOWN]),
    "region": ("region", _text, None),
}


def attributes_for(fmt: str) -> dict:
    return {"ham10000": HAM_ATTRIBUTES, "pad-ufes-20": PAD_UFES_ATTRIBUTES}.get(fmt, {})


def group_metrics(labels, predictions, groups, n_boot: int = 1000, seed: int = 0, classes=CLASSES) -> dict:
    """Counts, point metrics and 95% lesion-bootstrap intervals of one set of images."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    k = len(classes)
    present = sorted(set(labels.tolist()))
    cm = np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)
    point = metrics_from_confusion(cm, present)
    boot = confusion_bootstrap(labels, predictions, groups, present, k, n_boot=n_boot, seed=seed, classes=classes)
    return {
        "n_images": int(len(labels)),
        "n_units": int(boot["n_units"]),
        "class_counts": {classes[c]: int(cm[c].sum()) for c in range(k) if cm[c].sum()},
        "macro_over": [classes[c] for c in present],
        "top1": float(point["top1"]),
        "balanced_accuracy": float(point["balanced_accuracy"]),
        "macro_f1": float(point["macro_f1"]),
        "recall": {classes[c]: float(point["recall"][c]) for c in present},
        "bootstrap_95": {name: boot[name] for name in ("top1", "balanced_accuracy", "macro_f1")},
    }


def subgroup_report(frame: pd.DataFrame, labels, predictions, groups, attributes: dict,
                    min_units: int = MIN_UNITS, n_boot: int = 1000, seed: int = 0, unit: str = "lesion_id") -> dict:
    """{"min_units", "unit", "attributes": {name: [group rows]}} for the attributes ``frame`` has.

    ``frame`` is aligned with ``labels``/``predictions``/``groups``. An attribute whose column is
    missing is listed under ``missing_columns`` rather than silently skipped.
    """
    labels, predictions, groups = np.asarray(labels), np.asarray(predictions), np.asarray(groups)
    if len(frame) != len(labels):
        raise ValueError(f"subgroups: {len(frame)} metadata rows but {len(labels)} predictions")
    out = {"min_units": min_units, "unit": unit, "n_boot": n_boot,
           "rule": f"too_few when fewer than {min_units} {unit} values (resampling units) are in the group",
           "attributes": {}, "missing_columns": []}
    for name, (column, to_label, order) in attributes.items():
        if column not in frame.columns:
            out["missing_columns"].append(column)
            continue
        values = frame[column].map(to_label).to_numpy()
        names = list(pd.unique(values))
        if order is not None:
            names = [v for v in order if v in names] + sorted(v for v in names if v not in order)
        else:
            names = sorted(names, key=lambda v: (v == UNKNOWN, -int((values == v).sum()), v))
        rows = []
        for value in names:
            mask = values == value
            row = {"value": value, **group_metrics(labels[mask], predictions[mask], groups[mask], n_boot, seed)}
            row["too_few"] = row["n_units"] < min_units
            rows.append(row)
        out["attributes"][name] = rows
    return out
