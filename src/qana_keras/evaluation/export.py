"""`qana export`: a run's float Keras model as a fully-int8 TFLite model for CPUs and microcontrollers (not Akida).

``export_run`` converts ``<variant>_float.h5`` with ``tf.lite.TFLiteConverter`` (post-training full-integer
quantization: int8 weights and activations, int32 biases, int8 input and output), calibrated on a few hundred
training images of the run's split, then evaluates the ``.tflite`` on the HAM10000 lesion-level test split
against the float model. It writes to the run folder:
  <variant>_int8.tflite   the model (input: int8 pixels, ``q = pixel / scale + zero_point``; output: int8 logits)
  export.json             size and SHA-256, input/output dtypes and quantization, TensorFlow version, the
                          representative images, test metrics of both models and their argmax agreement

The models take raw 0..255 pixels (a ``Rescaling(1/255)`` layer inside) through a uint8 input; a uint8 input
would leave a float CAST + QUANTIZE at the start of the TFLite graph, so the model is first rebuilt with a
float32 input (same layers and weights), which the converter then replaces by an int8 one.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from qana_keras.io import atomic_path, display_path, write_json

FORMATS = ("tflite",)
EXPORT_REPORT = "export.json"
PROGRESS_SECONDS = 30.0


# --------------------------------------------------------------------------------------------------
# Conversion


def with_float_input(model):
    """``model`` rebuilt with a float32 input of the same shape (same layers, same weights)."""
    import tf_keras as keras

    inputs = keras.Input(shape=model.input_shape[1:], dtype="float32", name=model.input_names[0])
    clone = keras.models.clone_model(model, input_tensors=inputs)
    clone.set_weights(model.get_weights())
    return clone


def to_int8_tflite(model, representative: np.ndarray) -> bytes:
    """A fully-int8 TFLite flatbuffer of the float Keras ``model``, calibrated on ``representative`` uint8 images
    (int8 input = pixel - 128, lossless)."""
    import tensorflow as tf

    def samples():
        for i, image in enumerate(representative):
            image = image[None].astype(np.float32)
            if i == 0:  # one black and one white pixel: the int8 input then covers 0..255 exactly (scale 1,
                image[0, 0, :2] = [[0.0], [255.0]]  # zero point -128), not just the range these images happen to span
            yield [image]

    converter = tf.lite.TFLiteConverter.from_keras_model(with_float_input(model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # fail rather than keep a float op
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


# --------------------------------------------------------------------------------------------------
# The run-level verb


def export_paths(run_dir: Path, variant: str) -> dict[str, Path]:
    """The float model a TFLite export reads and what it writes."""
    from qana_keras.runs import artifact_paths

    return {"float": artifact_paths(run_dir, variant)["float"], "tflite": run_dir / f"{variant}_int8.tflite",
            "report": run_dir / EXPORT_REPORT}


def resolve_run(run_or_model: str | Path):
    """(the RunFolder, its float .h5) from a run folder or the ``<variant>_float.h5`` inside one."""
    from qana_keras.runs import RunFolder

    path = Path(run_or_model)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; pass a run folder (e.g. runs/qana, models/qana) or the "
                                "<variant>_float.h5 inside one")
    run_dir = path.parent if path.is_file() else path
    run = RunFolder.open(run_dir, "export needs the run's config (its split and image size): pass a folder made by "
                                  "qana train")
    float_path = run.artifacts()["float"]
    if path.is_file() and path.name != float_path.name:
        raise ValueError(f"{path}: export reads the run's float model {float_path.name}; pass it or the run folder")
    if not float_path.is_file():
        raise FileNotFoundError(f"{float_path}: no float Keras model; train one first (`qana train --run {run_dir}`)")
    return run, float_path


def export_run(run_or_model: str | Path, fmt: str = "tflite", representative: int = 300, seed: int = 0,
               overwrite: bool = False, cache_dir: str | None = None, batch_size: int = 100,
               command: str | None = None, log=print) -> dict:
    """Export the float model of a run to ``fmt`` (only "tflite": full int8), evaluate it on the test split
    beside the float model, and write ``<variant>_int8.tflite`` and ``export.json``; returns the report."""
    import tensorflow as tf

    from qana_keras.evaluation.evaluate import cache_dir_for
    from qana_keras.runs import calibration_indices
    from qana_keras.runtime.progress import run_with_progress
    from qana_keras.runtime.safe_load import file_record, load_keras_model
    from qana_keras.runtime.tflite import TFLiteModel

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use --format {' or '.join(FORMATS)}")
    if not isinstance(representative, int) or representative < 1:
        raise ValueError(f"--representative {representative}: give a positive number of training images")
    began = time.perf_counter()
    run, float_path = resolve_run(run_or_model)
    paths = export_paths(run.path, run.variant)
    run.refuse_overwrite([paths["tflite"], paths["report"]], overwrite, "export")
    run.config.data = dataclasses.replace(run.config.data, cache_dir=cache_dir_for(cache_dir, run.config.data))
    classes = run.classes

    model = load_keras_model(float_path)
    data = run.splits(seed=seed, log=log)  # lesion crops too, for a crop-trained run
    train, test = data["train"], data["test"]
    picked = calibration_indices(len(train), representative, seed)
    log(f"converting {float_path.name} to int8 TFLite, calibrated on {len(picked)} training images ...")
    t0 = time.perf_counter()
    content = to_int8_tflite(model, train.images[picked])
    convert_seconds = time.perf_counter() - t0
    # Evaluated from memory, written only with its report: no .tflite beside a stale export.json if this fails.
    tflite = TFLiteModel(content, paths["tflite"].name)
    t0 = time.perf_counter()
    int8_logits = run_with_progress(tflite, test.images, "TFLite int8 (CPU)", batch_size, PROGRESS_SECONDS, log=log)[0]
    tflite_seconds = time.perf_counter() - t0
    float_logits = run_with_progress(model, test.images, "float Keras", 256, PROGRESS_SECONDS, log=log)[0]
    with atomic_path(paths["tflite"]) as tmp:
        tmp.write_bytes(content)
    report = {
        "format": fmt,
        "precision": "full integer: int8 weights and activations, int32 biases, int8 input and output",
        "target": "CPU/MCU TFLite int8 (not Akida)",
        "artifacts": {"float": float_path.name, "tflite": paths["tflite"].name},
        "checksums": {paths["tflite"].name: file_record(paths["tflite"])},  # written just above
        "bytes": len(content),
        "float_h5_bytes": float_path.stat().st_size,
        "input": {**tflite.tensor_info("input"),
                  "feed": "q = round(pixel / scale) + zero_point for RGB pixels 0..255 resized like training"},
        "output": {**tflite.tensor_info("output"), "read": "logit = (q - zero_point) * scale"},
        "float_tensors": tflite.float_tensors(),
        "representative": {"split": "train", "images": int(len(picked)), "seed": seed,
                           "picked": "numpy default_rng(seed).choice over the training split, without replacement"},
        "tensorflow": tf.__version__,
        "interpreter": tflite.interpreter_name,
        "test": compare_on_test(test, {"float": float_logits, "tflite_int8": int8_logits}, classes, seed),
        "seconds": {"convert": round(convert_seconds, 1), "evaluate_tflite": round(tflite_seconds, 1),
                    "total": round(time.perf_counter() - began, 1)},
        "command": command,
    }
    write_json(paths["report"], report)
    log(f"wrote {display_path(paths['tflite'])} ({len(content):,} bytes, {convert_seconds:.0f} s to convert)")
    t, f = report["test"]["tflite_int8"], report["test"]["float"]
    log(f"TFLite int8 on test ({report['test']['n_images']} images): top-1 {t['top1']:.4f} (float {f['top1']:.4f})  "
        f"balanced acc {t['balanced_accuracy']:.4f} ({f['balanced_accuracy']:.4f})  macro-F1 {t['macro_f1']:.4f} "
        f"({f['macro_f1']:.4f})  argmax agreement {report['test']['argmax_agreement']:.4f}; "
        f"wrote {display_path(paths['report'])}")
    return report


def compare_on_test(test, logits: dict[str, np.ndarray], classes, seed: int = 0, n_boot: int = 1000) -> dict:
    """Top-1, balanced accuracy, macro-F1 (lesion-bootstrap 95% intervals) of each model on the test split, the
    paired difference tflite_int8 - float, and how often their argmax agree."""
    from qana_keras.metrics import classification_metrics, confusion_bootstrap, paired_confusion_bootstrap

    groups = test.frame["lesion_id"].astype(str).to_numpy()
    k = len(classes)
    out = {"split": "test", "n_images": int(len(test)), "n_lesions": int(len(np.unique(groups))),
           "classes": list(classes)}
    for name, values in logits.items():
        m = classification_metrics(test.labels, values, classes)
        ci = confusion_bootstrap(test.labels, values.argmax(1), groups, list(range(k)), k, n_boot, seed,
                                 classes=classes)
        out[name] = {key: m[key] for key in ("top1", "balanced_accuracy", "macro_f1", "macro_auc")}
        out[name]["bootstrap_95"] = {key: ci[key] for key in ("top1", "balanced_accuracy", "macro_f1")}
    out["argmax_agreement"] = float(np.mean(logits["float"].argmax(1) == logits["tflite_int8"].argmax(1)))
    out["max_abs_logit_difference"] = float(np.max(np.abs(logits["float"] - logits["tflite_int8"])))
    out["paired_difference_tflite_int8_minus_float"] = paired_confusion_bootstrap(
        test.labels, logits["float"].argmax(1), logits["tflite_int8"].argmax(1), groups, list(range(k)), k,
        n_boot, seed)
    return out
