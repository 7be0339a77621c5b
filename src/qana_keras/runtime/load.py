"""The one model loader: any ``.h5`` (float or quantized Keras), ``.fbz`` (Akida) or hybrid (Akida prefix +
float Keras tail), refused before loading when unsafe (``qana_keras.runtime.safe_load``), and ``predict_logits`` for all.

TensorFlow is imported only when a model is loaded or run, so importing this module stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qana_keras.runtime.safe_load import inside_folder, load_akida_model, load_keras_model, load_model_file, reports_naming

__all__ = ["HybridModel", "akida_logits", "conversion_report_for", "input_shape", "load_akida_model",
           "load_keras_model", "load_model_any", "predict_logits", "tail_model"]


def akida_logits(akida_model, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """Akida ``predict`` on uint8 images, flattened to (N, values): [N, 1, 1, 7] -> [N, 7]."""
    out = akida_model.predict(np.ascontiguousarray(images, dtype=np.uint8), batch_size=batch_size)
    return out.reshape(len(images), -1)


def tail_model(qmodel, boundary: str):
    """The float part of a partially quantized model: from the output of ``boundary`` to the model output."""
    import tf_keras as keras

    return keras.Model(qmodel.get_layer(boundary).output, qmodel.output, name=f"{qmodel.name}_host_tail")


@dataclass
class HybridModel:
    """Akida integer prefix + float Keras tail on the host, with one ``predict(images) -> logits``.

    ``boundary`` is the Dequantizer that ends the quantized prefix: the Akida model's last layer, and
    the input of ``tail`` (the rest of the quantized Keras model, all float layers).
    """
    akida_model: object
    tail: object  # keras.Model
    boundary: str
    info: dict = field(default_factory=dict)

    def predict(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
        features = self.akida_model.predict(np.ascontiguousarray(images, dtype=np.uint8), batch_size=batch_size)
        return self.tail.predict(features.astype(np.float32), batch_size=max(batch_size, 1), verbose=0)

    @classmethod
    def load(cls, akida_path: str | Path, quantized_path: str | Path, boundary: str) -> "HybridModel":
        qmodel = load_keras_model(quantized_path)
        return cls(load_akida_model(akida_path), tail_model(qmodel, boundary), boundary)


def predict_logits(model, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """Logits (N, classes) from a Keras model, an akida.Model, a HybridModel or a TFLiteModel, all fed uint8 images."""
    import tf_keras as keras

    from qana_keras.runtime.tflite import TFLiteModel

    if isinstance(model, keras.Model):
        return model.predict(images, batch_size=batch_size, verbose=0)
    if isinstance(model, (HybridModel, TFLiteModel)):
        return model.predict(images, batch_size=batch_size)
    return akida_logits(model, images, batch_size)


def conversion_report_for(fbz: Path) -> tuple[Path, dict] | None:
    """(path, report) of the conversion.json (or conversion_<tag>.json) that names ``fbz`` as its Akida artifact."""
    return next(iter(reports_naming(fbz)), None)


def load_model_any(path: str | Path):
    """A .h5 (float or quantized Keras) or .fbz (Akida; a hybrid's prefix gets its host tail back), checked
    before loading (``safe_load``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} not found")
    if path.suffix == ".fbz":
        found = conversion_report_for(path)
        if found and found[1].get("hybrid"):
            source, report = found
            quantized = inside_folder(path.parent, (report.get("artifacts") or {}).get("quantized"), source)
            return HybridModel.load(path, quantized, report["hybrid"]["boundary"])
        return load_akida_model(path)
    return load_model_file(path)


def input_shape(model):
    """The input shape of one image (H, W, C) of any loaded model, or None when it does not say."""
    if isinstance(model, HybridModel):
        model = model.akida_model
    shape = getattr(model, "input_shape", None)
    if shape is None:
        return None
    shape = list(shape)
    return shape[1:] if len(shape) == 4 else shape
