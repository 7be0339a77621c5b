"""Evaluate any saved model (.h5 float or quantized Keras, .fbz Akida) on a data set; write metrics JSON.

Preprocessing is the one the model was trained with: the ``config.yaml`` beside the model gives the
image size and the crop mode, and images go through the same decode/resize cache (``load_cached_images``) or
lesion-crop cache (``crop.cache.load_cached_crops``) as training.
Data layouts: HAM10000 (optionally one split of a split file), PAD-UFES-20 (clinical photos; SCC has no
HAM class, so its images are left out of the 7-class metrics and reported apart under ``excluded``) and
ISIC 2018 Task 3 (image folder and one-hot ground-truth CSV; each image is its own lesion unless a
lesion-groupings CSV says otherwise).

Intervals resample whole groups (``GROUP_COLUMNS``): HAM10000 lesions, PAD-UFES-20 patients (some
lesion_ids there belong to two patients, and a patient's lesions share skin and camera), ISIC images.
"""
from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from qana_keras import CLASSES
from qana_keras.io import write_json
from qana_keras.runtime.progress import run_with_progress
from qana_keras.runtime.load import input_shape, load_model_any

FORMATS = ("ham10000", "pad-ufes-20", "isic2018")
# Default resampling unit of the bootstrap per format; isic2018 uses lesion_id when groupings are given.
GROUP_COLUMNS = {"ham10000": "lesion_id", "pad-ufes-20": "patient_id", "isic2018": "image_id"}
N_BOOT = 1000


def model_image_size(model_path: str | Path, model=None) -> int:
    """The image size in the config.yaml beside the model; cross-checked against the model's input."""
    from qana_keras.config import load_config

    config_path = Path(model_path).parent / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: evaluate needs the config the model was trained with, "
                                "beside the model file, to preprocess images the same way")
    size = load_config(config_path).data.image_size
    if model is not None:
        shape = input_shape(model)
        if shape is not None and len(shape) == 3 and shape[2] != 3:
            raise ValueError(f"{model_path} takes {shape[2]}-channel inputs; qana feeds RGB images (3 channels): "
                             "evaluate a model made by qana train/convert")
        if shape is not None and tuple(shape[:2]) != (size, size):
            raise ValueError(f"{config_path} says image_size {size}, but {model_path} takes {shape[0]}x{shape[1]} "
                             "inputs; the config does not belong to this model")
    return size


def load_dataset(data: str | Path, fmt: str = "ham10000", split: str | None = None,
                 split_file: str | Path | None = None, ground_truth: str | Path | None = None,
                 lesion_groups: str | Path | None = None):
    """Metadata table (image_id, dx, path, ...) of the images to evaluate.

    PAD-UFES-20 rows keep their own columns; ``dx`` is the HAM class (None for SCC, see
    ``pad_ufes.DIAGNOSTIC_TO_HAM``). ISIC 2018 rows get ``lesion_id`` from ``lesion_groups`` (a CSV with
    columns image, lesion_id, like ISIC2018_Task3_Training_LesionGroupings.csv) when one is given or
    found beside the ground truth.
    """
    from qana_keras.data import ham10000, splits

    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "ham10000":
        meta = ham10000.load_metadata(data)
        if split is None:
            return meta
        if split not in splits.SPLITS:
            raise ValueError(f"--split must be one of {', '.join(splits.SPLITS)}, not {split!r}")
        if split_file is None:
            raise ValueError("--split needs a split file (--split-file, or the split_file of the model's config)")
        table = splits.read_split(split_file, meta=meta)
        meta = meta.merge(table[["image_id", "split"]], on="image_id", validate="one_to_one")
        return meta[meta["split"] == split].reset_index(drop=True)
    if split is not None:
        raise ValueError(f"--split applies to the HAM10000 layout only; a {fmt} folder is evaluated whole")
    if fmt == "pad-ufes-20":
        from qana_keras.data import pad_ufes

        meta = pad_ufes.load_metadata(data)
        meta = meta.assign(image_id=meta["img_id"].map(lambda n: Path(n).stem), dx=meta["ham_dx"])
        return meta
    if fmt == "isic2018":
        from qana_keras.data import isic2018

        images_dir, csv = _isic_paths(Path(data), ground_truth)
        meta = isic2018.load_metadata(images_dir, csv)
        if lesion_groups is None:
            found = sorted(csv.parent.glob("*LesionGroupings*.csv"))
            lesion_groups = found[0] if len(found) == 1 else None
        if lesion_groups is not None:
            meta = _with_lesion_groups(meta, Path(lesion_groups))
        return meta
    raise ValueError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")


def _with_lesion_groups(meta, csv_path: Path):
    """``meta`` with the lesion_id of each image from an ISIC lesion-groupings CSV (image, lesion_id)."""
    import pandas as pd

    if not csv_path.is_file():
        raise FileNotFoundError(f"lesion-groupings CSV {csv_path} not found")
    table = pd.read_csv(csv_path, dtype=str)
    missing = [c for c in ("image", "lesion_id") if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected image,lesion_id,...")
    dupes = table[table["image"].duplicated()]["image"].tolist()
    if dupes:
        raise ValueError(f"{csv_path}: image(s) listed twice: {', '.join(dupes[:10])}; keep one row each")
    lesion = dict(zip(table["image"], table["lesion_id"]))
    absent = [i for i in meta["image_id"] if not isinstance(lesion.get(i), str)]
    if absent:
        raise ValueError(f"{csv_path}: no lesion_id for {len(absent)} image(s) of the ground truth, e.g. "
                         f"{', '.join(absent[:5])}; add their rows")
    return meta.assign(lesion_id=meta["image_id"].map(lesion))


def _isic_paths(data: Path, ground_truth) -> tuple[Path, Path]:
    """(images dir, ground-truth CSV): given explicitly, or the single folder + *GroundTruth*.csv under ``data``."""
    if ground_truth is not None:
        return data, Path(ground_truth)
    csvs = sorted(data.glob("*GroundTruth*.csv"))
    dirs = [d for d in sorted(data.iterdir()) if d.is_dir() and not d.name.startswith(".")] if data.is_dir() else []
    if len(csvs) == 1 and len(dirs) == 1:
        return dirs[0], csvs[0]
    raise ValueError(f"{data}: pass --ground-truth CSV (and --data the image folder); found {len(csvs)} "
                     f"*GroundTruth*.csv and {len(dirs)} folders, expected one of each")


def evaluate_model(model_path: str | Path, data: str | Path, fmt: str = "ham10000", split: str | None = None,
                   split_file: str | Path | None = None, ground_truth: str | Path | None = None,
                   cache_dir: str | Path | None = None, batch_size: int = 100, group_by: str | None = None,
                   lesion_groups: str | Path | None = None, n_boot: int = N_BOOT, seed: int = 0,
                   min_units: int | None = None, tta: int = 1, log=print) -> dict:
    """Metrics of ``model_path`` on the data: top-1, balanced accuracy, macro-F1 (95% group-bootstrap
    intervals), per class (recall and AUC with intervals), ROC curves, confusion matrix, subgroups.

    ``tta`` > 1 averages the softmax over that many flips/rotations of each image (qana_keras.runtime.tta):
    on a chip, ``tta`` inferences per image."""
    from qana_keras.config import load_config
    from qana_keras.runtime.tta import check_views, tta_logits

    began = time.perf_counter()
    check_n_boot(n_boot)
    check_views(tta)
    model_path = Path(model_path)
    model = load_model_any(model_path)
    size = model_image_size(model_path, model)
    config = load_config(model_path.parent / "config.yaml")
    if split is not None and split_file is None and fmt == "ham10000":
        split_file = config.data.split_file
    meta = load_dataset(data, fmt, split, split_file, ground_truth, lesion_groups)
    if meta.empty:
        raise ValueError(f"{data}: no images to evaluate" + (f" in split {split!r}" if split else ""))
    images = model_inputs(meta, config.data, size, fmt, cache_dir, log)
    log(f"evaluating {model_path.name} on {len(images)} images" + (f", {tta} views each" if tta > 1 else "") + " ...")
    logits = tta_logits(lambda views: run_with_progress(model, views, f"evaluating {len(views)} images", batch_size,
                                                        30.0, log=log)[0], images, tta)
    if logits.shape[1] != len(CLASSES):
        raise ValueError(f"{model_path} outputs {logits.shape[1]} values per image, not the {len(CLASSES)} classes")
    log(f"metrics with {n_boot} bootstrap resamples (intervals, ROC, subgroups) ...")
    metrics = evaluation_metrics(meta, logits, fmt, group_by=group_by, n_boot=n_boot, seed=seed,
                                 min_units=min_units)
    out = {"model": str(model_path), "model_type": type(model).__name__, "data": str(data), "format": fmt,
           "split": split, "image_size": size, "crop": config.data.crop, "tta_views": tta, **metrics,
           "seconds": round(time.perf_counter() - began, 1)}
    ci = metrics["bootstrap_95"]
    log(f"{model_path.name} on {fmt}{' ' + split if split else ''} ({metrics['n_images']} images, "
        f"{ci['n_units']} {metrics['groups']['column']}): "
        + "  ".join(f"{name} {metrics[key]:.4f} [{ci[key]['low']:.4f}, {ci[key]['high']:.4f}]"
                    for key, name in (("top1", "top-1"), ("balanced_accuracy", "balanced acc"),
                                      ("macro_f1", "macro-F1"))))
    return out


def model_inputs(meta, data_config, size: int, fmt: str, cache_dir=None, log=print) -> np.ndarray:
    """The images of ``meta`` as the model was trained on them: whole frames resized to ``size``, or lesion crops
    (``data.crop`` of its config: the saliency crop of the same crop model, or the mask crop) cut the same way."""
    import dataclasses

    from qana_keras.data.cache import CacheError, load_cached_images

    cache_dir = cache_dir_for(cache_dir, data_config)
    name = fmt.replace("-", "_")
    if data_config.crop == "mask" and fmt != "ham10000":
        raise ValueError(f"the model was trained on mask crops (data.crop=mask), which need the HAM10000 lesion masks; "
                         f"{fmt} has none: evaluate a whole-image or saliency-crop model instead")
    try:
        if data_config.crop == "none":
            return load_cached_images(meta["path"].tolist(), size, cache_dir, name=name, log=log)
        from qana_keras.crop.cache import load_cached_crops

        return load_cached_crops(meta, dataclasses.replace(data_config, image_size=size, cache_dir=cache_dir),
                                 name=name, log=log)
    except OSError as error:
        # Only failures on the cache folder itself are reworded; a missing image keeps its own message.
        if error.filename and _is_inside(error.filename, cache_dir):
            raise CacheError(f"--cache-dir {cache_dir}: cannot write the image cache there ({error.strerror}); pass "
                             "a writable --cache-dir or set QANA_CACHE_DIR") from None
        raise


def cache_dir_for(cache_dir, data_config) -> str:
    """The image cache: the user's (--cache-dir, then $QANA_CACHE_DIR) before the one the model's config recorded,
    which may belong to another checkout."""
    return str(cache_dir or os.environ.get("QANA_CACHE_DIR") or data_config.cache_dir)


def _is_inside(path, folder) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def check_n_boot(n_boot) -> None:
    """Bootstrap intervals need at least one resample."""
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"--n-boot {n_boot}: the number of bootstrap resamples must be a positive integer "
                         f"(default {N_BOOT})")


def check_output_file(path, option: str = "--json") -> None:
    """Fail before a long evaluation if ``path`` is a folder or its folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is an existing folder; give a file name, e.g. {path / 'metrics.json'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # atomic_path creates missing folders
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{option} {path}: cannot write into {folder} ({error.strerror}); choose a writable "
                         "folder") from None


def evaluation_metrics(meta, logits: np.ndarray, fmt: str = "ham10000", group_by: str | None = None,
                       n_boot: int = N_BOOT, seed: int = 0, min_units: int | None = None) -> dict:
    """Everything ``evaluate_model`` reports, from the metadata rows and the model's logits (no TensorFlow).

    Rows whose ``dx`` is None (PAD-UFES-20 SCC) are left out of the metrics and summarised under
    ``excluded`` (what the model predicted for them). Macro-F1 averages the classes present in the
    labels (``macro_over``); on the HAM10000 splits that is all seven.
    """
    from qana_keras.metrics import (auc_bootstrap, classification_metrics, confusion_bootstrap,
                                    metrics_from_confusion, roc_curves, softmax)
    from qana_keras.evaluation.subgroups import MIN_UNITS, attributes_for, subgroup_report

    column = group_by or GROUP_COLUMNS[fmt]
    if fmt == "isic2018" and group_by is None and "lesion_id" in meta.columns:
        column = "lesion_id"
    if column not in meta.columns:
        raise ValueError(f"cannot resample by {column!r}: the {fmt} metadata has columns {', '.join(meta.columns)}")
    if len(meta) != len(logits):
        raise ValueError(f"{len(meta)} metadata rows but {len(logits)} predictions")
    meta = meta.reset_index(drop=True)
    known = meta["dx"].notna().to_numpy()
    bad = sorted(set(meta.loc[known, "dx"]) - set(CLASSES))
    if bad:
        raise ValueError(f"labels {bad} are not HAM10000 classes ({', '.join(CLASSES)})")
    excluded = _excluded_summary(meta[~known], logits[~known], fmt)
    meta, logits = meta[known].reset_index(drop=True), logits[known]
    if meta.empty:
        raise ValueError("no image has a HAM10000 class to score")
    labels = meta["dx"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
    predictions = logits.argmax(axis=1)
    groups = meta[column].astype(str).to_numpy()
    probabilities = softmax(logits.astype(np.float64))

    with warnings.catch_warnings():  # absent classes (PAD-UFES-20: df, vasc) are expected; see macro_over
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        metrics = classification_metrics(labels, logits)
    present = sorted(set(labels.tolist()))
    # Macro-F1 over the classes present (the same number when all seven are, as in HAM10000 splits).
    metrics["macro_f1"] = float(metrics_from_confusion(np.asarray(metrics["confusion_matrix"]), present)["macro_f1"])
    metrics["macro_over"] = [CLASSES[c] for c in present]
    boot = confusion_bootstrap(labels, predictions, groups, present, n_boot=n_boot, seed=seed)
    auc = auc_bootstrap(labels, probabilities, groups, n_boot=n_boot, seed=seed)
    for name in CLASSES:
        metrics["per_class"][name]["recall_95"] = boot["recall"][name]
        metrics["per_class"][name]["auc_95"] = auc["per_class"][name]
    metrics["bootstrap_95"] = {**{k: boot[k] for k in ("top1", "balanced_accuracy", "macro_f1")},
                               "macro_auc": auc["macro_auc"], "n_boot": n_boot, "seed": seed,
                               "unit": column, "n_units": boot["n_units"]}
    metrics["groups"] = {"column": column, "n": boot["n_units"]}
    metrics["roc_curves"] = roc_curves(labels, probabilities)
    metrics["subgroups"] = subgroup_report(meta, labels, predictions, groups, attributes_for(fmt),
                                           min_units=min_units or MIN_UNITS, n_boot=n_boot, seed=seed, unit=column)
    metrics["excluded"] = excluded
    metrics["predictions"] = {"image_id": meta["image_id"].astype(str).tolist(), "group": groups.tolist(),
                              "label": labels.tolist(), "predicted": predictions.tolist()}
    return metrics


def _excluded_summary(meta, logits: np.ndarray, fmt: str) -> dict:
    """Images without a HAM class (PAD-UFES-20 SCC): how many, and what the model called them."""
    if meta.empty:
        return {"n_images": 0}
    source = "diagnostic" if "diagnostic" in meta.columns else "dx"
    out = {"n_images": int(len(meta)),
           "reason": "no HAM10000 class (PAD-UFES-20 SCC, invasive squamous cell carcinoma: see "
                     "pad_ufes.DIAGNOSTIC_TO_HAM); left out of every metric above",
           "by_label": {}}
    predicted = logits.argmax(axis=1)
    for label in sorted(meta[source].astype(str).unique()):
        mask = (meta[source].astype(str) == label).to_numpy()
        counts = np.bincount(predicted[mask], minlength=len(CLASSES))
        out["by_label"][label] = {"n_images": int(mask.sum()),
                                  "predicted": {c: int(n) for c, n in zip(CLASSES, counts)}}
    return out


def write_figures(result: dict, stem: str | Path, title: str = "") -> list[Path]:
    """``<stem>_confusion.png``, ``<stem>_roc.png`` and (with subgroups) ``<stem>_subgroups.png``."""
    from qana_keras.plots import plot_confusion_matrix, plot_roc_curves, plot_subgroups

    stem = Path(stem)
    paths = [stem.parent / f"{stem.name}_confusion.png", stem.parent / f"{stem.name}_roc.png"]
    plot_confusion_matrix(result, paths[0], title=title)
    plot_roc_curves(result, paths[1], title=title)
    if any(result.get("subgroups", {}).get("attributes", {}).values()):
        paths.append(stem.parent / f"{stem.name}_subgroups.png")
        plot_subgroups(result, paths[2], title=title)
    return paths


def evaluate_to_json(out_path: str | Path, figures: bool = True, **kwargs) -> dict:
    """Evaluate, write the JSON and (``figures``) the PNGs beside it, named after the JSON."""
    check_n_boot(kwargs.get("n_boot", N_BOOT))
    check_output_file(out_path)
    result = evaluate_model(**kwargs)
    write_json(out_path, result)
    if figures:
        out_path = Path(out_path)
        title = f"{Path(result['model']).name} on {result['format']}"
        title += f" {result['split']}" if result["split"] else ""
        write_figures(result, out_path.with_suffix(""), title=title)
    return result
