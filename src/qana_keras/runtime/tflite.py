"""A ``.tflite`` classifier run with the TFLite interpreter, fed uint8 pixels like every other model kind
(``qana export`` writes them; ``safe_load.load_tflite_model`` checks and loads them)."""
from __future__ import annotations

import warnings

import numpy as np


class TFLiteModel:
    """A ``.tflite`` classifier fed uint8 pixels like the other models: inputs are quantized to the model's input
    type, outputs dequantized to float logits. Load it through ``safe_load.load_tflite_model``."""

    def __init__(self, content: bytes, name: str = "model.tflite"):
        self.name = name
        self.interpreter, self.interpreter_name = _interpreter(content)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        self.input_shape = (None, *(int(d) for d in self._input["shape"][1:]))
        self.output_shape = (None, *(int(d) for d in self._output["shape"][1:]))

    def tensor_info(self, which: str) -> dict:
        """dtype, shape and (scale, zero point) of the model's input or output tensor."""
        detail = self._input if which == "input" else self._output
        scale, zero_point = detail["quantization"]
        return {"name": detail["name"], "dtype": np.dtype(detail["dtype"]).name,
                "shape": [int(d) for d in detail["shape"]], "scale": float(scale), "zero_point": int(zero_point)}

    def float_tensors(self) -> list[str]:
        """Names of the float32 tensors in the graph: none in a fully-integer model."""
        return [t["name"] for t in self.interpreter.get_tensor_details() if np.dtype(t["dtype"]) == np.float32]

    def quantize_input(self, images: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._input["dtype"])
        scale, zero_point = self._input["quantization"]
        if dtype.kind == "f" or not scale:
            return images.astype(dtype)
        info = np.iinfo(dtype)
        return np.clip(np.round(images.astype(np.float32) / scale) + zero_point, info.min, info.max).astype(dtype)

    def dequantize_output(self, values: np.ndarray) -> np.ndarray:
        scale, zero_point = self._output["quantization"]
        if np.dtype(self._output["dtype"]).kind == "f" or not scale:
            return values.astype(np.float32)
        return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def predict(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
        """Float logits (N, classes) of uint8 images (N, H, W, 3)."""
        outputs = []
        for start in range(0, len(images), batch_size):
            chunk = self.quantize_input(images[start:start + batch_size])
            if len(chunk) != self._batch:
                self.interpreter.resize_tensor_input(self._input["index"], [len(chunk), *self.input_shape[1:]])
                self.interpreter.allocate_tensors()
                self._batch = len(chunk)
            self.interpreter.set_tensor(self._input["index"], chunk)
            self.interpreter.invoke()
            outputs.append(self.dequantize_output(self.interpreter.get_tensor(self._output["index"])))
        return np.concatenate(outputs).reshape(len(images), -1)


def _interpreter(content: bytes):
    """(interpreter, its name): LiteRT's if installed (``ai_edge_litert``), else ``tf.lite.Interpreter``."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_content=content), "ai_edge_litert.interpreter.Interpreter"
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():  # "deprecated ... use ai_edge_litert": not installed here, see above
            warnings.simplefilter("ignore", UserWarning)
            return tf.lite.Interpreter(model_content=content), "tf.lite.Interpreter"
