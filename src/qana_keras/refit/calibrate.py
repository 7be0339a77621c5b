"""Decision offsets and temperature scaling, fitted on validation; the offsets run on the chip.

Offsets: one additive offset per class on the logits, chosen on the VALIDATION split by coordinate
ascent over a grid to maximize macro-F1 (or balanced accuracy). They are folded into the bias of
``head/dense``, so no host step is needed at inference:

  * the float model: ``head/dense`` bias + offsets -> ``<variant>_calibrated_float.h5``;
  * the Akida model: the run's quantized Keras model (the one ``qana convert`` calibrated and, if it
    did, fine-tuned) gets the same offsets in its ``head/dense`` bias and is converted again with
    ``conversion.quantize.to_akida`` -> ``<variant>_calibrated_<tag>.h5`` and ``<variant>_calibrated.fbz``. The
    backbone is bit-identical to the deployed one; only the 8-bit-with-shift bias changes. Because
    that bias is quantized, the Akida argmax is checked against the host argmax (original Akida
    logits + offsets) image by image. ``requantize=True`` instead quantizes the calibrated float
    model from scratch with the run's calibration draw (post-training quantization only: a
    fine-tuning step of the original conversion is not repeated).

Temperature: one scalar T fitted on validation logits (of the calibrated Akida model) by negative
log-likelihood; host-side only (it never changes the argmax). Top-label expected calibration error
(15 equal-width confidence bins) on the test split before and after, with a reliability diagram.

Run folder artifacts: calibration.json, calibration.md, calibration_reliability.png and the models above.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from qana_keras import CLASSES
from qana_keras.io import RunFolderError, atomic_path, atomic_write_text, display_path, write_json
from qana_keras.runs import RunFolder

OBJECTIVES = ("macro_f1", "balanced_accuracy")
DEFAULT_GRID = tuple(np.round(np.arange(-3.0, 3.0001, 0.1), 2))  # logits units; QANA's logit gaps are a few units
ECE_BINS = 15


# --------------------------------------------------------------------------------------------------
# Objectives (NumPy only: the ascent evaluates them thousands of times)


def _confusion(labels: np.ndarray, predictions: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)


def objective_score(labels: np.ndarray, predictions: np.ndarray, objective: str, k: int) -> float:
    """Macro-F1 (classes absent from labels and predictions count 0, as sklearn with zero_division=0)
    or balanced accuracy (mean recall over the classes present in ``labels``)."""
    cm = _confusion(labels, predictions, k).astype(float)
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    if objective == "macro_f1":
        denom = support + predicted
        return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))
    if objective == "balanced_accuracy":
        present = support > 0
        return float(np.mean(tp[present] / support[present]))
    raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}")


def fit_offsets(logits: np.ndarray, labels: np.ndarray, objective: str = "macro_f1", grid=DEFAULT_GRID,
                rounds: int = 5) -> tuple[np.ndarray, dict]:
    """Per-class offsets maximizing ``objective`` of argmax(logits + offsets); returns (offsets, report).

    Coordinate ascent from zero: each class in turn takes the grid value that scores best with the
    others fixed (ties: the smallest |offset|, so a class is moved only for a real gain), until a
    full round changes nothing. The result is centred (mean 0); argmax does not see a common shift.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match")
    k = logits.shape[1]
    # Zero is always a candidate; sorted by |value| so ties go to the smallest offset.
    grid = np.asarray(sorted(set(float(g) for g in grid) | {0.0}, key=lambda g: (abs(g), g)), np.float64)
    offsets = np.zeros(k)
    start = best = objective_score(labels, logits.argmax(1), objective, k)
    done_rounds = 0
    for done_rounds in range(1, rounds + 1):
        changed = False
        for c in range(k):
            trial = offsets.copy()
            scores = []
            for value in grid:
                trial[c] = value
                scores.append(objective_score(labels, (logits + trial).argmax(1), objective, k))
            # The current value is on the grid, so scores[pick] >= best; among equal scores the first
            # (smallest |offset|) wins, so every change gains score or shrinks an offset: no cycles.
            pick = int(np.argmax(scores))
            changed |= grid[pick] != offsets[c]
            offsets[c], best = grid[pick], scores[pick]
        if not changed:
            break
    offsets -= offsets.mean()
    return offsets, {"objective": objective, "val_before": start, "val_after": best, "rounds": done_rounds,
                     "grid": [float(grid.min()), float(grid.max()), len(grid)]}


# --------------------------------------------------------------------------------------------------
# Temperature and expected calibration error


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimizing the negative log-likelihood of softmax(logits / T) (bounded 1-D search)."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)

    def nll(log_t):
        return -np.mean(log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels])

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def reliability(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = ECE_BINS) -> dict:
    """Top-label ECE over ``bins`` equal-width confidence bins, with the per-bin table for the diagram."""
    probs = np.exp(log_softmax(np.asarray(logits, np.float64) / temperature, axis=1))
    confidence, predictions = probs.max(1), probs.argmax(1)
    correct = predictions == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # sklearn's calibration_curve bins the same way but drops empty bins and returns no counts, which ECE needs
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        acc = float(correct[members].mean()) if n else None
        conf = float(confidence[members].mean()) if n else None
        if n:
            ece += n / len(labels) * abs(acc - conf)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n, "accuracy": acc,
                      "confidence": conf})
    nll = float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))
    return {"ece": float(ece), "nll": nll, "temperature": temperature, "bins": table}


def plot_reliability(panels: dict[str, dict], path: str | Path) -> None:
    """One reliability diagram per entry of ``panels`` (title -> ``reliability`` result), side by side."""
    from qana_keras.plots import _save, plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, rel) in zip(axes[0], panels.items()):
        filled = [b for b in rel["bins"] if b["count"]]
        centres = [(b["low"] + b["high"]) / 2 for b in filled]
        width = filled[0]["high"] - filled[0]["low"] if filled else 0.05
        ax.bar(centres, [b["accuracy"] for b in filled], width=width * 0.9, color="tab:blue", label="accuracy")
        ax.bar(centres, [b["confidence"] - b["accuracy"] for b in filled], bottom=[b["accuracy"] for b in filled],
               width=width * 0.9, color="tab:red", alpha=0.35, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top label)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}\nECE {rel['ece'] * 100:.2f} % (T = {rel['temperature']:.2f})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Folding the offsets into head/dense


def add_to_dense_bias(model, offsets: np.ndarray):
    """A copy of the float ``model`` whose ``head/dense`` bias is increased by ``offsets``."""
    from qana_keras.refit.head import DENSE_LAYER, HeadError, with_dense

    try:
        kernel, bias = model.get_layer(DENSE_LAYER).get_weights()
    except ValueError:
        raise HeadError(f"model '{model.name}' has no layer '{DENSE_LAYER}' whose bias could take the offsets; "
                        "calibrate needs the Flatten -> Dense head of qana_keras.models.blocks") from None
    return with_dense(model, kernel, bias + np.asarray(offsets, np.float32))


def add_offsets_to_quantized(qmodel, offsets: np.ndarray) -> None:
    """Add ``offsets`` to the float bias that quantizeml keeps in the quantized ``head/dense`` (in place).

    quantizeml stores float weights and quantizes them at call time, so the converter quantizes the
    new bias exactly as it would the original one; the rest of the model is untouched.
    """
    from qana_keras.refit.head import DENSE_LAYER

    layer = qmodel.get_layer(DENSE_LAYER)
    bias = [w for w in layer.weights if w.name.split("/")[-1].startswith("bias")]
    if len(bias) != 1 or bias[0].shape != (len(offsets),):
        raise ValueError(f"quantized model '{qmodel.name}': layer '{DENSE_LAYER}' has no bias of shape "
                         f"({len(offsets)},) to add the offsets to")
    bias[0].assign(bias[0].numpy() + np.asarray(offsets, np.float32))


# --------------------------------------------------------------------------------------------------
# The run-folder step


def _summary(labels, logits, classes=CLASSES) -> dict:
    from qana_keras.metrics import classification_metrics

    m = classification_metrics(labels, logits, classes)
    return {"top1": m["top1"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "recall": {c: m["per_class"][c]["recall"] for c in classes}, "confusion_matrix": m["confusion_matrix"]}


def calibration_markdown(report: dict) -> str:
    rows = report["test"]
    names = list(rows)
    lines = [f"# {report['variant']}: decision offsets fitted on validation {report['objective']} "
             f"(fitted on {report['fit_on']} logits)", "",
             "Offsets (added to the logits, folded into head/dense bias): "
             + ", ".join(f"{c} {o:+.2f}" for c, o in report["offsets"].items()), "",
             f"Test split ({report['n_test']} images):", "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label in (("top1", "top-1"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1")):
        lines.append(f"| {label} | " + " | ".join(f"{rows[n][key] * 100:.2f}" for n in names) + " |")
    for c in report.get("classes", CLASSES):  # reports without "classes" predate class subsets: 7-class runs
        lines.append(f"| recall {c} | " + " | ".join(f"{rows[n]['recall'][c] * 100:.2f}" for n in names) + " |")
    ag = report["akida_check"]
    lines += ["", f"Akida with folded offsets vs host argmax (original Akida logits + offsets): "
                  f"{ag['argmax_agreement'] * 100:.2f} % of {ag['images']} test images agree "
                  f"({ag['disagreements']} differ); max |logit difference| {ag['max_abs_logit_diff']:.4g}.",
              "", "Temperature scaling (host side, fitted on validation NLL), top-label ECE on test, "
                  f"{ECE_BINS} bins:", "", "| logits | T | ECE before | ECE after | NLL before | NLL after |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, t in report["temperature"].items():
        lines.append(f"| {name} | {t['temperature']:.3f} | {t['before']['ece'] * 100:.2f} % | "
                     f"{t['after']['ece'] * 100:.2f} % | {t['before']['nll']:.4f} | {t['after']['nll']:.4f} |")
    return "\n".join(lines) + "\n"


def calibrate_run(run_dir: str | Path, objective: str = "macro_f1", fit_on: str = "akida", bits: int = 8,
                  requantize: bool = False, overwrite: bool = False, batch_size: int = 100, data=None,
                  log=print) -> dict:
    """Fit offsets (validation) and temperature, fold the offsets, convert, and report test metrics.

    ``fit_on``: "akida" fits on the deployed Akida model's validation logits (what the chip decides
    on), "float" on the float model's. ``data`` overrides loading the run's splits (tests).
    """
    from qana_keras.conversion.quantize import quantize_for_akida, to_akida
    from qana_keras.runs import calibration_indices
    from qana_keras.runtime.progress import run_with_progress
    from qana_keras.runtime.load import HybridModel, load_keras_model, predict_logits

    began = time.perf_counter()
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    if fit_on not in ("akida", "float"):
        raise ValueError(f"--fit-on must be 'akida' or 'float', not {fit_on!r}")
    run_dir = Path(run_dir)
    run = RunFolder.open(run_dir, "train and convert a model there first")
    variant = run.variant
    classes = run.classes  # a class-subset run's outputs are these, not the 7 HAM10000 classes
    paths = run.calibration_artifacts(bits)
    run.refuse_overwrite(paths.values(), overwrite, "calibration")
    converted = run.converted(bits)
    if isinstance(converted["akida"], HybridModel):
        raise RunFolderError(f"{run_dir}: the converted model is a hybrid (head/dense runs on the host); calibrate "
                             "folds offsets into an Akida dense layer, so it needs a fully integer run")
    float_path = converted["paths"]["float"]
    model = load_keras_model(float_path)
    akida_model = converted["akida"]
    data = data if data is not None else run.splits(log=log)
    val, test = data["val"], data["test"]

    log("logits of the float and the deployed Akida model on validation and test ...")
    logits = {"float": {s: predict_logits(model, data[s].images, 256) for s in ("val", "test")},
              "akida": {s: run_with_progress(akida_model, data[s].images, f"Akida simulator, {s}", batch_size,
                                             log=log)[0] for s in ("val", "test")}}
    if logits["akida"]["val"].shape[1] != len(classes):
        raise RunFolderError(f"{run_dir}: the Akida model has {logits['akida']['val'].shape[1]} outputs, the run's "
                             f"config names {len(classes)} classes ({', '.join(classes)})")
    offsets, fit = fit_offsets(logits[fit_on]["val"], val.labels, objective)
    log(f"offsets ({objective} on validation {fit_on} logits, {fit['val_before']:.4f} -> {fit['val_after']:.4f}): "
        + ", ".join(f"{c} {o:+.2f}" for c, o in zip(classes, offsets)))

    calibrated = add_to_dense_bias(model, offsets)
    if requantize:
        conv = converted["report"]["calibration"]
        picked = calibration_indices(len(data["train"]), conv["images"], conv["seed"])
        log(f"re-quantizing the calibrated float model on the run's calibration draw ({len(picked)} images) ...")
        q_cal, _ = quantize_for_akida(calibrated, data["train"].images[picked], variant, bits, conv["batch_size"],
                                      conv["epochs"], log=log)
        route = ("calibrated float model quantized from scratch with the run's calibration draw (post-training "
                 "quantization only)")
    else:
        q_cal = load_keras_model(converted["paths"]["quantized"])
        add_offsets_to_quantized(q_cal, offsets)
        route = "the run's quantized model with the offsets added to its head/dense bias, converted again"
    ak_cal = to_akida(q_cal, strict=True, variant=variant, log=log)
    for split in ("val", "test"):
        logits.setdefault("akida_calibrated", {})[split] = run_with_progress(
            ak_cal, data[split].images, f"calibrated Akida simulator, {split}", batch_size, log=log)[0]
    logits["float_calibrated"] = {s: logits["float"][s] + offsets for s in ("val", "test")}
    host = logits["akida"]["test"] + offsets  # what the chip should now decide
    agree = logits["akida_calibrated"]["test"].argmax(1) == host.argmax(1)
    check = {"images": int(len(agree)), "argmax_agreement": float(agree.mean()),
             "disagreements": int((~agree).sum()),
             "max_abs_logit_diff": float(np.abs(logits["akida_calibrated"]["test"] - host).max()),
             "vs_float_calibrated": float(np.mean(logits["akida_calibrated"]["test"].argmax(1)
                                                  == logits["float_calibrated"]["test"].argmax(1))),
             "host": "original Akida logits + offsets (float)"}
    log(f"calibrated Akida vs host argmax on test: {check['argmax_agreement'] * 100:.2f} % agree "
        f"({check['disagreements']} differ), max |logit difference| {check['max_abs_logit_diff']:.4g}")

    table = {"float": _summary(test.labels, logits["float"]["test"], classes),
             "float + offsets": _summary(test.labels, logits["float_calibrated"]["test"], classes),
             "Akida": _summary(test.labels, logits["akida"]["test"], classes),
             "Akida + offsets (on chip)": _summary(test.labels, logits["akida_calibrated"]["test"], classes)}
    temperature, panels = {}, {}
    for name, key in (("Akida + offsets", "akida_calibrated"), ("float + offsets", "float_calibrated")):
        t = fit_temperature(logits[key]["val"], val.labels)
        before, after = reliability(logits[key]["test"], test.labels), reliability(logits[key]["test"], test.labels, t)
        temperature[name] = {"temperature": t, "before": before, "after": after}
        if key == "akida_calibrated":
            panels = {f"{name}, T = 1": before, f"{name}, T fitted on val": after}
        log(f"{name}: T = {t:.3f}, test ECE {before['ece'] * 100:.2f} % -> {after['ece'] * 100:.2f} %")

    with atomic_path(paths["float"]) as tmp:
        calibrated.save(tmp, include_optimizer=False, save_format="h5")
    with atomic_path(paths["quantized"]) as tmp:
        q_cal.save(tmp, include_optimizer=False, save_format="h5")
    with atomic_path(paths["akida"]) as tmp:
        ak_cal.save(str(tmp))
    plot_reliability(panels, paths["png"])
    report = {"variant": variant, "objective": objective, "fit_on": fit_on, "split_fitted": "val",
              "classes": list(classes), "offsets": {c: float(o) for c, o in zip(classes, offsets)}, "fit": fit, "route": route,
              "n_val": int(len(val)), "n_test": int(len(test)), "test": table, "akida_check": check,
              "val": {"float": _summary(val.labels, logits["float"]["val"], classes),
                      "Akida": _summary(val.labels, logits["akida"]["val"], classes),
                      "Akida + offsets (on chip)": _summary(val.labels, logits["akida_calibrated"]["val"], classes)},
              "temperature": temperature, "ece_bins": ECE_BINS, "ece": "top-label, equal-width confidence bins",
              "artifacts": {k: p.name for k, p in paths.items()},
              "seconds": round(time.perf_counter() - began, 1)}
    write_json(paths["json"], report)
    atomic_write_text(paths["md"], calibration_markdown(report))
    t = table
    log(f"test macro-F1 float {t['float']['macro_f1']:.4f} -> {t['float + offsets']['macro_f1']:.4f}, Akida "
        f"{t['Akida']['macro_f1']:.4f} -> {t['Akida + offsets (on chip)']['macro_f1']:.4f}; wrote "
        f"{', '.join(p.name for p in paths.values())} in {display_path(run_dir)} ({report['seconds']:.0f}s)")
    return report
