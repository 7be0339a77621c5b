"""`qana predict`: classify image files with a saved model (.h5 Keras or .fbz Akida on the software backend).

Images get the training preprocessing: ``read_rgb`` (full decode, RGB check) and ``resize_image`` (whole
frame, INTER_AREA) to the model's input size. Models are loaded by ``runtime.load.load_model_any`` (a hybrid
.fbz gets its host tail from the conversion*.json beside it) and run by ``runtime.load.predict_logits``.
Files that are not images, or do not decode, are named and skipped.
"""
from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from qana_keras import CLASSES
from qana_keras.io import atomic_write_text, read_classes, write_json

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
TOP_K = 3


@dataclass
class Predictions:
    """What ``predict_images`` found: one row per classified image, one (file, reason) per skipped file."""
    model: str
    classes: tuple[str, ...]
    image_size: int
    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def list_inputs(target: str | Path) -> list[Path]:
    """``target`` itself if it is a file, else the files directly in the folder (sorted; hidden ones left out)."""
    target = Path(target)
    if target.is_file():
        return [target]
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{target}: the folder has no files to classify; pass an image or a folder of images")
        return files
    raise FileNotFoundError(f"{target} not found; pass an image file or a folder of images")


def model_classes(model_path: str | Path) -> tuple[str, ...]:
    """Class names of the model's outputs: ``classes.json`` beside the model if present, else all of CLASSES."""
    return read_classes(Path(model_path).parent) or CLASSES


def model_input_size(model, model_path: str | Path) -> int:
    """The square input size of a loaded model (Keras, akida.Model or HybridModel)."""
    from qana_keras.runtime.load import input_shape

    shape = input_shape(model)
    if shape is None or len(shape) < 2 or shape[0] != shape[1]:
        raise ValueError(f"{model_path}: cannot tell a square input size from its input shape {shape}")
    return int(shape[0])


def _refuse_crop_models(model_path: Path) -> None:
    """Crop-trained models need the lesion crop of training, which predict does not cut: say so, early."""
    from qana_keras.config import load_config

    config_path = model_path.parent / "config.yaml"
    if config_path.exists() and load_config(config_path).data.crop != "none":
        raise ValueError(f"{model_path} was trained on lesion crops (data.crop in {config_path}); predict feeds whole "
                         "images: use a whole-image model (e.g. models/qana/qana.fbz)")


def load_images(paths: list[Path], size: int) -> tuple[list[Path], np.ndarray, list[dict]]:
    """(decoded paths, uint8 images resized as in training, skipped files with their reason)."""
    from qana_keras.data.cache import resize_image
    from qana_keras.data.checks import DatasetError
    from qana_keras.data.images import read_rgb

    kept, images, skipped = [], [], []
    for path in paths:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append({"file": str(path), "reason": f"not an image file (suffix {path.suffix or 'none'!r}; "
                                                        f"expected {', '.join(sorted(IMAGE_SUFFIXES))})"})
            continue
        try:
            image = read_rgb(path)
        except DatasetError as error:
            skipped.append({"file": str(path), "reason": str(error)})
            continue
        kept.append(path)
        images.append(resize_image(image, size))
    return kept, np.stack(images) if images else np.empty((0, size, size, 3), np.uint8), skipped


def prediction_rows(paths: list[Path], logits: np.ndarray, classes: tuple[str, ...]) -> list[dict]:
    """One row per image: predicted class, its probability (softmax of the logits), the top-3 and all classes."""
    from qana_keras.metrics import softmax

    probabilities = softmax(logits.astype(np.float64))
    rows = []
    for path, p in zip(paths, probabilities):
        order = np.argsort(-p)[:TOP_K]
        rows.append({"file": str(path), "predicted": classes[order[0]], "probability": float(p[order[0]]),
                     "top3": [{"class": classes[i], "probability": float(p[i])} for i in order],
                     "probabilities": {c: float(v) for c, v in zip(classes, p)}})
    return rows


def predict_images(target: str | Path, model_path: str | Path, batch_size: int = 100, tta: int = 1) -> Predictions:
    """Classify the image ``target`` or every image file in the folder ``target``; ``tta`` > 1 averages the
    probabilities over that many flips/rotations of each image (qana_keras.runtime.tta)."""
    from qana_keras.runtime.load import load_model_any, predict_logits
    from qana_keras.runtime.tta import check_views, tta_logits

    check_views(tta)
    model_path = Path(model_path)
    paths = list_inputs(target)
    _refuse_crop_models(model_path)
    model = load_model_any(model_path)
    size = model_input_size(model, model_path)
    classes = model_classes(model_path)
    kept, images, skipped = load_images(paths, size)
    result = Predictions(str(model_path), classes, size, skipped=skipped)
    if not kept:
        return result
    logits = tta_logits(lambda views: predict_logits(model, views, batch_size).reshape(len(kept), -1), images, tta)
    if logits.shape[1] != len(classes):
        source = model_path.parent / "classes.json"
        raise ValueError(f"{model_path} outputs {logits.shape[1]} values per image but "
                         f"{source if source.exists() else 'qana_keras.CLASSES'} names {len(classes)} classes; "
                         "put the run's classes.json beside the model")
    result.rows = prediction_rows(kept, logits, classes)
    return result


def format_table(result: Predictions) -> str:
    """The stdout table: file, predicted class, probability, top-3."""
    width = max([len(Path(r["file"]).name) for r in result.rows] + [4])
    lines = [f"{'file':<{width}}  {'predicted':<9}  {'prob':>5}  top-3"]
    for r in result.rows:
        top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top3"])
        lines.append(f"{Path(r['file']).name:<{width}}  {r['predicted']:<9}  {r['probability']:>5.3f}  {top}")
    return "\n".join(lines)


def write_csv(path: str | Path, result: Predictions) -> None:
    """One row per image: file, predicted, probability, top-3 as 'class:p;...', then one column per class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "predicted", "probability", "top3", *(f"p_{c}" for c in result.classes)])
    for r in result.rows:
        top = ";".join(f"{t['class']}:{t['probability']:.4f}" for t in r["top3"])
        writer.writerow([r["file"], r["predicted"], f"{r['probability']:.6f}", top,
                         *(f"{r['probabilities'][c]:.6f}" for c in result.classes)])
    atomic_write_text(path, buffer.getvalue())


def write_predictions_json(path: str | Path, result: Predictions) -> None:
    write_json(path, {"model": result.model, "classes": list(result.classes), "image_size": result.image_size,
                      "probability": "softmax of the model's logits", "predictions": result.rows,
                      "skipped": result.skipped})


def report_skipped(result: Predictions, stream=None) -> None:
    for s in result.skipped:  # sys.stderr looked up now, not at import (a redirected or captured stderr)
        print(f"skipped {s['file']}: {s['reason']}", file=stream or sys.stderr)
