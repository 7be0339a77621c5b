"""Evaluate any saved model (.h5 float or quantized Keras, .fbz Akida) on a data set; write metrics JSON.

Preprocessing is the one the model was trained with: the ``config.yaml`` beside the model gives the
image size, and images go through the same decode/resize cache (``load_cached_images``) as training.
Data layouts: HAM10000 (optionally one split of a split file) and ISIC 2018 Task 3 (image folder and
one-hot ground-truth CSV).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from qana_keras.io import read_json, write_json

FORMATS = ("ham10000", "isic2018")


def load_model_any(path: str | Path):
    """A .h5 (float or quantized Keras) or .fbz (Akida; a hybrid's prefix gets its host tail back)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} not found")
    if path.suffix == ".h5":
        from qana_keras.convert import load_quantized

        return load_quantized(path)  # also loads float models; importing quantizeml costs ~3 s
    if path.suffix == ".fbz":
        import akida

        from qana_keras.convert import HybridModel

        model = akida.Model(str(path))
        report = _conversion_report_for(path)
        if report and report.get("hybrid"):
            quantized = path.parent / report["artifacts"]["quantized"]
            return HybridModel.load(path, quantized, report["hybrid"]["boundary"])
        return model
    raise ValueError(f"{path}: unknown model format {path.suffix!r}; expected .h5 (Keras) or .fbz (Akida)")


def _conversion_report_for(fbz: Path) -> dict | None:
    """The conversion.json (or conversion_<tag>.json) that names ``fbz`` as its Akida artifact."""
    for candidate in sorted(fbz.parent.glob("conversion*.json")):
        report = read_json(candidate)
        if report.get("artifacts", {}).get("akida") == fbz.name:
            return report
    return None


def model_image_size(model_path: str | Path, model=None) -> int:
    """The image size in the config.yaml beside the model; cross-checked against the model's input."""
    from qana_keras.config import load_config

    config_path = Path(model_path).parent / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: evaluate needs the config the model was trained with, "
                                "beside the model file, to preprocess images the same way")
    size = load_config(config_path).data.image_size
    if model is not None:
        shape = _input_shape(model)
        if shape is not None and tuple(shape[:2]) != (size, size):
            raise ValueError(f"{config_path} says image_size {size}, but {model_path} takes {shape[0]}x{shape[1]} "
                             "inputs; the config does not belong to this model")
    return size


def _input_shape(model):
    from qana_keras.convert import HybridModel

    if isinstance(model, HybridModel):
        model = model.akida_model
    shape = getattr(model, "input_shape", None)
    if shape is None:
        return None
    shape = list(shape)
    return shape[1:] if len(shape) == 4 else shape


def load_dataset(data: str | Path, fmt: str = "ham10000", split: str | None = None,
                 split_file: str | Path | None = None, ground_truth: str | Path | None = None):
    """Metadata table (image_id, dx, path, ...) of the images to evaluate."""
    from qana_keras.data import ham10000, splits

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
    if fmt == "isic2018":
        from qana_keras.data import isic2018

        if split is not None:
            raise ValueError("--split applies to the HAM10000 layout only; an ISIC 2018 folder is evaluated whole")
        images_dir, csv = _isic_paths(Path(data), ground_truth)
        return isic2018.load_metadata(images_dir, csv)
    raise ValueError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")


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
                   cache_dir: str | Path | None = None, batch_size: int = 100, log=print) -> dict:
    """Metrics of ``model_path`` on the data: top-1, balanced accuracy, macro-F1, per class, confusion matrix."""
    from qana_keras import CLASSES
    from qana_keras.config import load_config
    from qana_keras.convert import predict_logits
    from qana_keras.data.cache import load_cached_images
    from qana_keras.metrics import classification_metrics

    began = time.perf_counter()
    model_path = Path(model_path)
    model = load_model_any(model_path)
    size = model_image_size(model_path, model)
    config = load_config(model_path.parent / "config.yaml")
    if split is not None and split_file is None and fmt == "ham10000":
        split_file = config.data.split_file
    meta = load_dataset(data, fmt, split, split_file, ground_truth)
    if meta.empty:
        raise ValueError(f"{data}: no images to evaluate" + (f" in split {split!r}" if split else ""))
    images = load_cached_images(meta["path"].tolist(), size, cache_dir or config.data.cache_dir, name=fmt, log=log)
    labels = meta["dx"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
    logits = predict_logits(model, images, batch_size)
    if logits.shape[1] != len(CLASSES):
        raise ValueError(f"{model_path} outputs {logits.shape[1]} values per image, not the {len(CLASSES)} classes")
    metrics = classification_metrics(labels, logits)
    out = {"model": str(model_path), "model_type": type(model).__name__, "data": str(data), "format": fmt,
           "split": split, "image_size": size, **metrics,
           "seconds": round(time.perf_counter() - began, 1)}
    log(f"{model_path.name} on {fmt}{' ' + split if split else ''} ({metrics['n_images']} images): "
        f"top-1 {metrics['top1']:.4f}  balanced acc {metrics['balanced_accuracy']:.4f}  "
        f"macro-F1 {metrics['macro_f1']:.4f}")
    return out


def evaluate_to_json(out_path: str | Path, **kwargs) -> dict:
    result = evaluate_model(**kwargs)
    write_json(out_path, result)
    return result
