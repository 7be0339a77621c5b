"""The Akida 1.0 spike layer: its output quantized to 1 bit, and its BN offsets tuned so that it fires."""
from __future__ import annotations

import numpy as np

from qana_keras.conversion import ConversionError

AKIDA_V1_SPIKE_LAYERS = {"qana-akd1000": "spike/relu"}
"""Akida 1.0 variants with a spike layer whose output is quantized to 1 bit (what on-chip learning reads)."""


def spike_config(model, qparams, spike_layer: str) -> dict:
    """quantizeml's per-layer config for ``model`` with ``spike_layer``'s output quantized to 1 bit."""
    from quantizeml.models import dump_config, quantize

    probe = quantize(model, qparams=qparams, samples=None, num_samples=1, batch_size=1, epochs=1)
    config = dump_config(probe)
    quantizer = config.get(spike_layer, {}).get("output_quantizer")
    if quantizer is None:
        raise ConversionError(f"layer '{spike_layer}' has no output quantizer in the quantized model (layers with "
                              f"one: {', '.join(k for k, v in config.items() if 'output_quantizer' in v)}); the "
                              "spike layer must be the ReLU that closes the last feature layer")
    quantizer["bitwidth"] = 1
    return config


def tune_spike_rate(model, images: np.ndarray, spike_layer: str = "spike/relu", rate: float = 0.1,
                    threshold: float = 0.5, batch_size: int = 256):
    """Shift the spike layer's BN offsets so each channel fires on ``rate`` of the training positions.

    At 1 bit the ReLU1 output becomes a spike where it reaches ``threshold`` (half the calibrated range
    of 1). A float model trained with a continuous ReLU1 often stays below that everywhere, and a
    silent layer gives on-chip learning nothing to read, so the offset of each channel c moves by
    ``threshold - q_c``, where q_c is its (1 - rate) quantile over training images and positions.
    Returns (a copy of the model with the new offsets, a report). The trained head no longer fits the
    binary features: quantization-aware fine-tuning in ``convert_run`` adapts it, and on the chip it
    is replaced by the learned layer anyway.
    """
    import tf_keras as keras

    if not 0.0 < rate < 1.0:
        raise ValueError(f"spike rate must be in (0, 1), got {rate}")
    bn_name = spike_layer.rsplit("/", 1)[0] + "/BN"
    names = {layer.name for layer in model.layers}
    if bn_name not in names or spike_layer not in names:
        raise ConversionError(f"the model has no '{bn_name}' -> '{spike_layer}' spike layer to tune (a qana-akd1000 "
                              "model has)")
    probe = keras.Model(model.inputs, model.get_layer(bn_name).output)
    pre = probe.predict(images, batch_size=batch_size, verbose=0)
    pre = pre.reshape(-1, pre.shape[-1])
    before = float(np.mean(np.clip(pre, 0, 1) >= threshold))
    quantile = np.quantile(pre, 1.0 - rate, axis=0)
    tuned = keras.models.clone_model(model)
    tuned.set_weights(model.get_weights())
    bn = tuned.get_layer(bn_name)
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, beta + (threshold - quantile), mean, var])
    after = float(np.mean(np.clip(pre + (threshold - quantile), 0, 1) >= threshold))
    return tuned, {"layer": spike_layer, "target_rate": rate, "rate_before": before, "rate_after": after,
                   "threshold": threshold, "images": int(len(images))}
