"""Logits of any loaded model over many images, with a progress line every few seconds."""
from __future__ import annotations

import time

import numpy as np

from qana_keras.runtime.load import predict_logits


def run_with_progress(model, images: np.ndarray, label: str, batch_size: int = 100, every_seconds: float = 10.0,
                      log=print) -> tuple[np.ndarray, float]:
    """Logits of ``model`` over ``images`` in chunks, with a progress line every ``every_seconds``."""
    outputs, began, last = [], time.perf_counter(), time.perf_counter()
    for start in range(0, len(images), batch_size):
        outputs.append(predict_logits(model, images[start:start + batch_size], batch_size))
        now = time.perf_counter()
        done = min(start + batch_size, len(images))
        if now - last >= every_seconds or done == len(images):
            log(f"  {label}: {done}/{len(images)} images, {done / (now - began):.0f} images/s")
            last = now
    return np.concatenate(outputs), time.perf_counter() - began
