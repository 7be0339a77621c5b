"""Incremental readout updates on the Akida 2.0 model: Akida backbone features, host refit, integer write-back.

An Akida 2.0 model's last layer cannot learn on the chip (``The last layer of the model is not
trainable``), so the readout is refitted on the host and written back:

1. Features come from the converted Akida model itself: ``akida.Model(layers=model.layers[:-2])`` is
   the model without its ``head/dense`` (Dense1D) and output Dequantizer, and ``forward`` returns the
   integer activations the dense layer reads (4x4x128 int8, 0..127 for QANA). Images go into the
   Akida model only; the float model is never used.
2. A logistic-regression readout is fitted on those integer features (standardized on the host, then
   folded back to integer-feature units).
3. It is quantized the way the Dense1D layer computes: per output class c, int8 weights ``w = round(W / s_c)``,
   bias ``b_int << bias_shift`` in accumulator units and the Dequantizer scale ``s_c``, so the chip
   returns ``s_c * (x @ w + (b_int << bias_shift))``. A new Dense1D (units = classes, bit widths
   copied from the old one) and Dequantizer are appended to the backbone's layers, and the variables
   are set with ``set_variable``. The written model's argmax is checked against the host readout.

Protocols (``learn_run``), each before/after on the new data and on the HAM10000 test split (forgetting):
  domain     PAD-UFES-20 clinical photos (5 HAM classes), patient-level split; the refit also replays the
             stored HAM10000 training FEATURES (never images).
  new-class  the same, with SCC as an 8th output (the dense layer grows from 7 to 8 units).
  class-incremental  vasc then df added few-shot to a backbone trained without them: needs a run trained
             on a class subset (``classes.json`` in the run); a run trained on all 7 is refused.

Run folder artifacts: learn_features.npz (a cache of Akida features, keyed by the .fbz checksum),
learn_<protocol>.json/.md and <variant>_learn_<protocol>.fbz.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qana_keras import CLASSES
from qana_keras.io import atomic_path, atomic_write_text, read_classes, sha256_file, write_json
from qana_keras.runtime.progress import run_with_progress
from qana_keras.onchip.readout import (IntegerReadout, LearnError, _float_readout, backbone_features, class_sample_weights,
                                fit_readout, quantize_readout, read_readout, split_readout, write_readout)
from qana_keras.runs import RunFolder
from qana_keras.runtime.load import load_akida_model

NEW_CLASS = "scc"
PROTOCOLS = ("domain", "new-class", "class-incremental")
INCREMENTAL_STEPS = ("vasc", "df")
SHOTS = (5, 10, 20, 0)  # 0 = every training image of the new class


# --------------------------------------------------------------------------------------------------
# Data: HAM10000 splits and PAD-UFES-20 with a patient-level split


def patient_split(frame, labels: np.ndarray, test_fraction: float = 1 / 3, seed: int = 0) -> np.ndarray:
    """Boolean mask of test rows: whole patients, class-stratified (StratifiedGroupKFold, first fold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    folds = max(2, int(round(1 / test_fraction)))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    _, test_idx = next(cv.split(np.zeros(len(labels)), labels, groups=frame["patient_id"].to_numpy()))
    mask = np.zeros(len(labels), bool)
    mask[test_idx] = True
    return mask


def cached_features(run_dir: Path, fbz: Path, sets: dict[str, tuple[list[str], np.ndarray]], batch_size: int = 100,
                    log=print) -> dict[str, np.ndarray]:
    """Akida backbone features of each named image set, cached in ``learn_features.npz``.

    ``sets`` maps a name to (image ids, images). The cache is reused only for the same .fbz
    (checksum) and the same image ids, so it can never serve features of another model.
    """
    cache = run_dir / "learn_features.npz"
    key = sha256_file(fbz)
    stored = {}
    if cache.exists():
        with np.load(cache, allow_pickle=False) as f:
            if str(f["fbz_sha256"]) == key:
                stored = {k: f[k] for k in f.files}
    backbone = None
    out = {}
    for name, (ids, images) in sets.items():
        if f"{name}__ids" in stored and stored[f"{name}__ids"].tolist() == list(ids):
            out[name] = stored[name]
            continue
        if backbone is None:
            backbone, _, _ = split_readout(load_akida_model(fbz))
        out[name] = backbone_features(backbone, images, batch_size, name, log=log)
        stored[name], stored[f"{name}__ids"] = out[name], np.asarray(ids, dtype=str)
        with atomic_path(cache, suffix=".npz") as tmp:
            np.savez(tmp, fbz_sha256=np.array(key), **{k: v for k, v in stored.items() if k != "fbz_sha256"})
    log(f"Akida backbone features: {', '.join(f'{k} {v.shape}' for k, v in out.items())} (cache {cache.name})")
    return out


# --------------------------------------------------------------------------------------------------
# Evaluation


def _metrics(labels, logits, classes) -> dict:
    """Accuracy, balanced accuracy and macro-F1 over the classes present in ``labels`` (PAD-UFES-20 has no df
    or vasc, HAM10000 no scc: an absent class would add a 0 to the mean); predicting one still counts as an error."""
    from qana_keras.metrics import classification_metrics

    m = classification_metrics(labels, logits, classes)
    present = [c for c in classes if m["per_class"][c]["support"] > 0]
    return {"accuracy": m["top1"], "balanced_accuracy": m["balanced_accuracy"],
            "macro_f1": float(np.mean([m["per_class"][c]["f1"] for c in present])),
            "recall": {c: m["per_class"][c]["recall"] for c in classes},
            "support": {c: m["per_class"][c]["support"] for c in classes}, "n": m["n_images"]}


def _akida_logits(model, images, batch_size: int, label: str, log) -> np.ndarray:
    return run_with_progress(model, images, label, batch_size, every_seconds=30.0, log=log)[0]


def verify_written(model, readout: IntegerReadout, host: tuple[np.ndarray, np.ndarray],
                   evaluations: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int, log) -> tuple[dict, dict]:
    """Run ``model`` (the written Akida model) on each evaluation set's images; compare with the host.

    ``evaluations``: name -> (images, features). Returns ({name: Akida logits}, agreement report):
    Akida argmax vs the float host readout (what was fitted) and vs the exact integer emulation.
    """
    logits, check = {}, {}
    for name, (images, features) in evaluations.items():
        logits[name] = _akida_logits(model, images, batch_size, f"updated Akida, {name}", log)
        host_pred = (features.reshape(len(features), -1) @ host[0] + host[1]).argmax(1)
        emulated = readout.logits(features)
        check[name] = {"images": int(len(images)),
                       "argmax_agreement_vs_host_readout": float(np.mean(logits[name].argmax(1) == host_pred)),
                       "argmax_agreement_vs_integer_emulation": float(np.mean(logits[name].argmax(1)
                                                                              == emulated.argmax(1))),
                       "max_abs_logit_diff_vs_integer_emulation": float(np.abs(logits[name] - emulated).max())}
    return logits, check


# --------------------------------------------------------------------------------------------------
# Protocols


@dataclass
class LearnConfig:
    """Settings of the host refit (shared by the protocols)."""
    C: float = 0.01  # inverse L2 strength on standardized features
    class_weighting: str = "sqrt"  # as the original training (train.class_weighting)
    new_weight: float = 4.0  # loss weight of one new-data sample relative to one replayed HAM sample
    replay: bool = True  # also fit on the stored HAM10000 training features
    test_fraction: float = 1 / 3  # of PAD-UFES-20 patients held out
    verify_ham: int = 300  # HAM test images run end to end through the written Akida model (-1 = all)
    seed: int = 0


def refit(parts: list[tuple[np.ndarray, np.ndarray, float]], n_classes: int, config: LearnConfig):
    """Fit one readout on the concatenated (features, labels, per-sample weight) parts."""
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    w = np.concatenate([np.full(len(p[1]), p[2], float) for p in parts])
    w = w * class_sample_weights(y, n_classes, config.class_weighting)
    return fit_readout(x, y, n_classes, config.C, sample_weight=w / w.mean())


def _pad_table(pad_root, size: int, cache_dir, log):
    from qana_keras.data.cache import load_cached_images
    from qana_keras.data.pad_ufes import load_metadata

    frame = load_metadata(pad_root)
    images = load_cached_images(frame["path"].tolist(), size, cache_dir, name="pad_ufes", log=log)
    names = list(CLASSES) + [NEW_CLASS]
    labels = np.array([names.index(d if d is not None else NEW_CLASS) for d in frame["ham_dx"]], np.int64)
    return frame, images, labels


def protocol_table(rows: dict[str, dict], new_name: str) -> str:
    """Markdown: one row per model, accuracy/macro-F1 on the new data and HAM10000 test, forgetting."""
    base = next(iter(rows.values()))
    lines = [f"| model | {new_name} accuracy | {new_name} macro-F1 | {new_name} balanced acc | HAM test accuracy | "
             "HAM test macro-F1 | forgetting (HAM acc. before - after, pt) | Akida = host argmax |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        agree = r.get("agreement")
        lines.append(f"| {name} | {r['new']['accuracy'] * 100:.2f} | {r['new']['macro_f1'] * 100:.2f} | "
                     f"{r['new']['balanced_accuracy'] * 100:.2f} | {r['ham_test']['accuracy'] * 100:.2f} | "
                     f"{r['ham_test']['macro_f1'] * 100:.2f} | "
                     f"{(base['ham_test']['accuracy'] - r['ham_test']['accuracy']) * 100:+.2f} | "
                     + (f"{agree * 100:.2f} %" if agree is not None else "-") + " |")
    return "\n".join(lines)


def _check_classes(run_dir: Path, n_outputs: int) -> list[str]:
    """The output classes of the run's Akida model: classes.json if the run has one, else all of CLASSES."""
    path = run_dir / "classes.json"
    try:
        classes = list(read_classes(run_dir) or CLASSES)
    except ValueError as error:
        raise LearnError(str(error)) from None
    if len(classes) != n_outputs:
        raise LearnError(f"{run_dir}: the Akida model has {n_outputs} outputs but "
                         f"{path.name if path.exists() else 'the default class list'} names {len(classes)} classes")
    return classes


def class_incremental(features: dict, labels: dict, base: list[str], config: LearnConfig,
                      steps=INCREMENTAL_STEPS, shots=SHOTS) -> tuple[list[dict], tuple]:
    """Protocol on HAM10000 Akida features of a backbone trained on ``base`` classes only.

    For each shot count k (0 = all), step by step add each class of ``steps`` with k training images
    (seeded draw) while replaying every training feature of the classes already known; evaluate on
    the test images of the known classes with the integer readout the chip would run
    (``quantize_readout``, emulated exactly). Returns (one row per (k, step) with the new class recall,
    macro-F1 and the accuracy on the base classes before/after, (readout, kernel, bias) of the last step).
    """
    index = {c: i for i, c in enumerate(CLASSES)}
    rng_seed = config.seed
    rows = []
    train_x, train_y = features["train"], labels["train"]
    test_x, test_y = features["test"], labels["test"]
    base_idx = [index[c] for c in base]
    max_feature = int(train_x.max()) or 127
    base_kernel, base_bias = refit([(train_x[np.isin(train_y, base_idx)], train_y[np.isin(train_y, base_idx)], 1.0)],
                                   len(CLASSES), config)
    base_test = np.isin(test_y, base_idx)
    base_logits = quantize_readout(base_kernel, base_bias, max_feature=max_feature).logits(test_x[base_test])
    base_logits[:, np.setdiff1d(np.arange(len(CLASSES)), base_idx)] = -np.inf
    base_acc_before = float(np.mean(base_logits.argmax(1) == test_y[base_test]))
    for k in shots:
        known, parts = list(base_idx), [(train_x[np.isin(train_y, base_idx)], train_y[np.isin(train_y, base_idx)], 1.0)]
        rng = np.random.default_rng(rng_seed)
        for step in steps:
            c = index[step]
            pool = np.flatnonzero(train_y == c)
            pick = pool if k == 0 or k >= len(pool) else rng.choice(pool, size=k, replace=False)
            parts.append((train_x[pick], train_y[pick], 1.0))
            known.append(c)
            kernel, bias = refit(parts, len(CLASSES), config)
            readout = quantize_readout(kernel, bias, max_feature=max_feature)
            mask = np.isin(test_y, known)
            logits = readout.logits(test_x[mask])
            logits[:, np.setdiff1d(np.arange(len(CLASSES)), known)] = -np.inf
            pred, truth = logits.argmax(1), test_y[mask]
            from qana_keras.metrics import macro_f1

            present = np.isin(np.arange(len(CLASSES)), known)
            f1 = macro_f1(truth, pred, len(CLASSES)) * len(CLASSES) / present.sum()  # mean over known classes
            rows.append({"shots": k or "all", "step": f"+{step}", "train_images_new_class": int(len(pick)),
                         "new_class_recall": float(np.mean(pred[truth == c] == c)) if np.any(truth == c) else None,
                         "macro_f1_known": float(f1), "accuracy_known": float(np.mean(pred == truth)),
                         "base_accuracy_before": base_acc_before,
                         "base_accuracy_after": float(np.mean(pred[np.isin(truth, base_idx)]
                                                              == truth[np.isin(truth, base_idx)]))})
    return rows, (readout, kernel, bias)


def class_incremental_table(rows: list[dict]) -> str:
    """Markdown table of class-incremental rows (one per shot count and step); shared with qana_keras.onchip.edge."""
    lines = ["| shots | step | new-class recall | accuracy (known classes) | macro-F1 (known) | base accuracy "
             "before -> after |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['shots']} | {r['step']} | {r['new_class_recall'] * 100:.1f} | "
                     f"{r['accuracy_known'] * 100:.2f} | {r['macro_f1_known'] * 100:.2f} | "
                     f"{r['base_accuracy_before'] * 100:.2f} -> {r['base_accuracy_after'] * 100:.2f} |")
    return "\n".join(lines)


def check_protocols(protocols, known) -> None:
    """ValueError naming the ``protocols`` not in ``known``."""
    unknown = [p for p in protocols if p not in known]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; choose from {', '.join(known)}")


def learn_run(run_dir: str | Path, protocols=("domain", "new-class"), pad_root: str | Path | None = None,
              config: LearnConfig | None = None, overwrite: bool = False, batch_size: int = 100, data=None,
              log=print) -> dict:
    """Run the readout-update protocols on ``run_dir``'s Akida model; write learn_<protocol>.json/.md/.fbz."""
    began = time.perf_counter()
    config = config or LearnConfig()
    check_protocols(protocols, PROTOCOLS)
    run_dir = Path(run_dir)
    run = RunFolder.open(run_dir, "train and convert a model there first")
    run_config, variant = run.config, run.variant
    fbz = run.akida_model()
    outputs = {p: run.learn_artifacts(p) for p in protocols}
    run.refuse_overwrite([f for o in outputs.values() for f in o.values()], overwrite, "learn")
    model = load_akida_model(fbz)
    split_readout(model)  # fails early on a model without an Akida readout
    classes = _check_classes(run_dir, int(np.prod(model.output_shape)))
    if "class-incremental" in protocols and classes == list(CLASSES):
        raise LearnError(f"{run_dir}: its backbone was trained on all 7 classes, so it has already seen vasc and df; "
                         "adding them 'incrementally' to its readout would overstate what incremental learning "
                         "achieves. Train a run on akiec,bcc,bkl,mel,nv only and declare it in <run>/classes.json "
                         "({\"classes\": [...]}, the order of the model's outputs).")
    if classes != list(CLASSES) and set(protocols) - {"class-incremental"}:
        raise LearnError(f"{run_dir}: the domain and new-class protocols need a 7-class run; this one has {classes}")

    # All 7 classes' images, also for a run trained on a subset: the protocols add the classes it never saw.
    data = data if data is not None else run.splits(all_classes=True, log=log)
    sets = {s: (data[s].frame["image_id"].tolist(), data[s].images) for s in ("train", "test")}
    pad = None
    if set(protocols) & {"domain", "new-class"}:
        if pad_root is None:
            raise ValueError("the domain and new-class protocols need PAD-UFES-20: pass --pad-ufes DIR")
        frame, pad_images, pad_labels = _pad_table(pad_root, run_config.data.image_size, run_config.data.cache_dir,
                                                   log)
        pad = {"frame": frame, "images": pad_images, "labels": pad_labels}
        sets["pad"] = (frame["img_id"].tolist(), pad_images)
    features = cached_features(run_dir, fbz, sets, batch_size, log)
    ham_y = {s: data[s].labels for s in ("train", "test")}
    original = read_readout(model)
    results = {}

    if "class-incremental" in protocols:
        rows, (readout, kernel, bias) = class_incremental({s: features[s] for s in ("train", "test")}, ham_y,
                                                          classes, config)
        # The last step (all images of vasc and df) written into the Akida model and run end to end.
        written = write_readout(model, readout)
        n_ham = len(features["test"]) if config.verify_ham < 0 else min(config.verify_ham, len(features["test"]))
        _, checks = verify_written(written, readout, (kernel, bias),
                                   {f"ham_test_first_{n_ham}": (data["test"].images[:n_ham], features["test"][:n_ham])},
                                   batch_size, log)
        with atomic_path(outputs["class-incremental"]["akida"]) as tmp:
            written.save(str(tmp))
        result = {"protocol": "class-incremental", "base_classes": classes, "rows": rows,
                  "metrics_from": "the exact integer emulation of each step's Dense1D (IntegerReadout.logits) on "
                                  "the Akida backbone features",
                  "written_model": outputs["class-incremental"]["akida"].name,
                  "written_model_row": "shots all, +df", "akida_end_to_end_checks": checks}
        atomic_write_text(outputs["class-incremental"]["md"],
                          f"# {variant}: class-incremental readout updates (base: {', '.join(classes)})\n\n"
                          "Akida backbone features, host refit, integer readout (exact emulation); the last step is "
                          f"written into {result['written_model']}.\n\n" + class_incremental_table(rows) + "\n")
        write_json(outputs["class-incremental"]["json"], result)
        results["class-incremental"] = result

    for protocol in [p for p in protocols if p != "class-incremental"]:
        grow = protocol == "new-class"
        names = list(CLASSES) + ([NEW_CLASS] if grow else [])
        keep = np.ones(len(pad["labels"]), bool) if grow else pad["labels"] < len(CLASSES)
        frame, labels = pad["frame"][keep].reset_index(drop=True), pad["labels"][keep]
        feats, images = features["pad"][keep], pad["images"][keep]
        test_mask = patient_split(frame, labels, config.test_fraction, config.seed)
        train_mask = ~test_mask
        overlap = set(frame["patient_id"][test_mask]) & set(frame["patient_id"][train_mask])
        if overlap:
            raise LearnError(f"patients in both PAD-UFES-20 splits: {sorted(overlap)[:5]}")
        log(f"{protocol}: PAD-UFES-20 {train_mask.sum()} train / {test_mask.sum()} test images "
            f"({frame['patient_id'][train_mask].nunique()} / {frame['patient_id'][test_mask].nunique()} patients)")
        k = len(names)
        evaluation = {"new": (feats[test_mask], labels[test_mask]), "ham_test": (features["test"], ham_y["test"])}

        def widen(logits):  # a 7-class readout never predicts scc: -inf in its column for the 8-class metrics
            return logits if logits.shape[1] == k else np.concatenate(
                [logits, np.full((len(logits), k - logits.shape[1]), -np.inf)], axis=1)

        rows = {"original Akida": {s: _metrics(y, widen(original.logits(x)), names)
                                   for s, (x, y) in evaluation.items()}}
        n_orig = min(100, len(features["test"]))
        original_check = verify_written(model, original, _float_readout(original),
                                        {f"ham_test_first_{n_orig}": (data["test"].images[:n_orig],
                                                                      features["test"][:n_orig])}, batch_size, log)[1]
        parts_ham = [(features["train"], ham_y["train"], 1.0)]
        parts_pad = [(feats[train_mask], labels[train_mask], config.new_weight)]
        fits = {"refit, HAM replay only (control)": parts_ham,
                f"refit, PAD train x{config.new_weight:g} + HAM replay": parts_ham + parts_pad}
        if not config.replay:
            fits = {"refit, PAD train only (no replay)": parts_pad}
        readouts = {}
        for name, parts in fits.items():
            kernel, bias = refit(parts, k, config)
            readout = quantize_readout(kernel, bias, max_feature=int(features["train"].max()) or 127)
            readouts[name] = (readout, kernel, bias)
            rows[name] = {s: _metrics(y, readout.logits(x), names) for s, (x, y) in evaluation.items()}
            rows[name]["agreement"] = float(np.mean(np.concatenate(
                [readout.logits(x).argmax(1) == (x.reshape(len(x), -1) @ kernel + bias).argmax(1)
                 for x, _ in evaluation.values()])))
            log(f"  {name}: PAD test macro-F1 {rows[name]['new']['macro_f1']:.4f}, HAM test accuracy "
                f"{rows[name]['ham_test']['accuracy']:.4f}; integer readout = host float readout argmax on "
                f"{rows[name]['agreement'] * 100:.2f} %")
        # The written Akida model, end to end on images: it must reproduce the integer readout exactly.
        main_name = list(fits)[-1]
        readout, kernel, bias = readouts[main_name]
        written = write_readout(model, readout)
        n_ham = len(features["test"]) if config.verify_ham < 0 else min(config.verify_ham, len(features["test"]))
        _, checks = verify_written(written, readout, (kernel, bias),
                                   {"pad_test": (images[test_mask], feats[test_mask]),
                                    f"ham_test_first_{n_ham}": (data["test"].images[:n_ham], features["test"][:n_ham])},
                                   batch_size, log)
        for where, c in checks.items():
            log(f"  written Akida model on {where} ({c['images']} images): argmax = host readout on "
                f"{c['argmax_agreement_vs_host_readout'] * 100:.2f} %, = integer emulation on "
                f"{c['argmax_agreement_vs_integer_emulation'] * 100:.2f} % (max |diff| "
                f"{c['max_abs_logit_diff_vs_integer_emulation']:.3g})")
        with atomic_path(outputs[protocol]["akida"]) as tmp:
            written.save(str(tmp))
        result = {"protocol": protocol, "classes": names, "config": vars(config).copy(),
                  "pad_split": {"train_images": int(train_mask.sum()), "test_images": int(test_mask.sum()),
                                "train_patients": int(frame["patient_id"][train_mask].nunique()),
                                "test_patients": int(frame["patient_id"][test_mask].nunique()),
                                "test_counts": {c: int(np.sum(labels[test_mask] == i)) for i, c in enumerate(names)},
                                "rule": "StratifiedGroupKFold by patient_id, first fold held out"},
                  "replay": "HAM10000 training-split FEATURES from the Akida backbone (stored in learn_features.npz); "
                            "no HAM image is used by the refit",
                  "rows": rows, "akida_end_to_end_checks": checks, "original_model_check": original_check,
                  "metrics_from": "the exact integer emulation of the written Dense1D (IntegerReadout.logits) on the "
                                  "Akida backbone features; the written Akida model was run end to end on the images "
                                  "listed in akida_end_to_end_checks and must match it",
                  "written_model": outputs[protocol]["akida"].name,
                  "written_model_row": main_name,
                  "original_readout": {"units": int(original.weights.shape[1])}}
        write_json(outputs[protocol]["json"], result)
        title = "PAD-UFES-20 test" if not grow else "PAD-UFES-20 test (8 classes, SCC new)"
        md = [f"# {variant}: readout update, protocol {protocol}", "",
              f"Akida backbone features; host logistic-regression refit (C={config.C}, class weighting "
              f"{config.class_weighting}); integer readout written back into the Akida model's "
              f"'{split_readout(model)[1].name}' ({k} units). PAD-UFES-20 split by patient: {train_mask.sum()} train / "
              f"{test_mask.sum()} test images. Replay uses stored HAM10000 training features, not images.", "",
              protocol_table(rows, title), ""]
        if grow:
            md += [f"SCC recall on PAD test: " + ", ".join(f"{n} {r['new']['recall'][NEW_CLASS] * 100:.1f} %"
                                                          for n, r in rows.items()), ""]
        atomic_write_text(outputs[protocol]["md"], "\n".join(md))
        results[protocol] = result
        log("\n".join(md))
    log(f"learn: {', '.join(protocols)} done in {time.perf_counter() - began:.0f}s")
    return results
