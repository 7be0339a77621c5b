"""Embedding-space SMOTE head: refit a trained QANA's last Dense layer on rebalanced embeddings.

The backbone stays frozen. Its penultimate representation (the output of ``head/flatten``, the
input of ``head/dense``) is PCA-whitened, minority classes are oversampled in that space with
imbalanced-learn from *safe anchors* plus a small locally aligned perturbation, and a linear head is
fitted on real + synthetic embeddings. Whitening and head are then folded into one Dense layer,

    logits = W P (x - mu) + b  =  x @ K + c,   K = (W P)^T,   c = b - mu @ K,

where ``P`` (components x D) whitens, ``W`` (classes x components) and ``b`` are the fitted head. The
new model is the original float model with ``head/dense`` replaced by (K, c): same architecture, so
it quantizes and converts exactly like the original, to one Akida dense layer.

Embeddings: ``embedding="quantized"`` (default) fits on the embeddings of the model quantized as
``qana convert`` quantizes it (same calibration draw), i.e. the 8-bit values the Akida dense layer
actually reads, so the head is fitted on the inputs it will see on the chip; the backbone quantizes
identically whatever the head (its calibration never looks at head/dense). quantizeml's calibration
rescales the channels feeding the head (cross-layer equalization) and compensates in the dense
kernel; ``extract_embeddings`` undoes that scaling, so both kinds live in the float model's basis
and one folded kernel serves both. ``embedding="float"`` fits on the float model's embeddings (no
quantization needed; what the saved float .h5 sees).

The numbers (whitening, oversampling, the linear head, folding, head.npz) are in ``qana_keras.refit.head_fit``; this
module reads the embeddings out of a model, writes the folded head back into it, and runs one fit on a run folder.

Run folder artifacts (next to ``<variant>_float.h5``):
  head.npz                    PCA (mean, components, eigenvalues, scale), head (W, b), folded (K, c)
  head.json                   settings, anchors and synthetic counts, val/test metrics vs the original
  <variant>_head_float.h5     the original float model with the folded head
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from qana_keras.refit.head_fit import HeadConfig, HeadError, fit_head, save_head
from qana_keras.io import atomic_path, display_path, read_json, sha256_file
from qana_keras.runs import calibration_indices

if TYPE_CHECKING:  # TensorFlow is imported only where a model is touched: `qana --help` stays fast
    import tf_keras as keras

EMBEDDING_LAYER = "head/flatten"  # its output is exactly what head/dense reads (dropout is identity at inference)
DENSE_LAYER = "head/dense"


# --------------------------------------------------------------------------------------------------
# Embeddings


def _embedding_layer(model: keras.Model):
    try:
        return model.get_layer(EMBEDDING_LAYER)
    except ValueError:
        raise HeadError(f"model '{model.name}' has no layer '{EMBEDDING_LAYER}': the embedding head needs the "
                        "Flatten -> Dense classifier of qana_keras.models.blocks.classifier_head") from None


def embedding_model(model: keras.Model) -> keras.Model:
    """Sub-model from the image input to the ``head/flatten`` output.

    For a quantizeml model that output is a FixedPoint tensor; a Dequantizer turns it into the float
    values it stands for (a power-of-two scale, exact), so ``predict`` can batch it. Those values are
    still in quantizeml's equalized basis: see ``equalization_rates``.
    """
    import tf_keras as keras

    embedding = keras.Model(model.input, _embedding_layer(model).output, name=f"{model.name}_embedding")
    if not _is_quantized(model):
        return embedding
    from quantizeml.layers import Dequantizer

    # The Dequantizer goes on a new input, not on the model's own tensor: a layer called on that tensor would
    # become a second consumer of head/flatten, and cnn2snn then refuses to convert the model.
    image = keras.Input(model.input.shape[1:], dtype=model.input.dtype)
    out = Dequantizer(name="embedding_dequantizer")(embedding(image))
    return keras.Model(image, out, name=f"{model.name}_embedding_float")


def _is_quantized(model: keras.Model) -> bool:
    """A quantizeml model (its layers come from quantizeml), checked without importing quantizeml."""
    return any(type(layer).__module__.startswith("quantizeml") for layer in model.layers)


def equalization_rates(qmodel: keras.Model) -> np.ndarray:
    """(D,) factors by which quantizeml's calibration scaled each embedding value (1 where it did not).

    Calibration applies cross-layer equalization: the output quantizer of the layer feeding
    ``head/flatten`` (``se/relu``) multiplies channel c by ``rescaling_rate[c]`` (its range snapped
    to a power of two) and ``head/dense``'s kernel rows are divided by the same rate. Dividing the
    dequantized embedding by these rates gives the quantized embedding in the float model's basis,
    the one a folded float ``head/dense`` multiplies; re-quantizing the folded model re-applies the
    same rates (they depend on the backbone and calibration images only).
    """
    flatten = _embedding_layer(qmodel)
    dim = int(np.prod(flatten.output_shape[1:]))
    source = flatten.inbound_nodes[0].inbound_layers
    rate = getattr(getattr(source, "out_quantizer", None), "rescaling_rate", None)
    if rate is None:
        return np.ones(dim)
    rate = np.asarray(rate.numpy(), np.float64).reshape(-1)
    channels = int(flatten.input_shape[-1])
    if rate.size == 1:
        return np.full(dim, rate[0])
    if rate.size != channels or dim % channels:
        raise HeadError(f"'{source.name}' has {rate.size} equalization rates for {channels} channels feeding "
                        f"'{EMBEDDING_LAYER}' ({dim} values); cannot map them onto the embedding")
    # Flatten of (H, W, C) is channel-fastest: value i belongs to channel i % C.
    return np.tile(rate, dim // channels)


def extract_embeddings(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, D) float64 embeddings of uint8 ``images``, in the float model's basis.

    Float model: the ``head/flatten`` output. Quantized model: the dequantized 8-bit values the
    quantized ``head/dense`` reads, divided by quantizeml's equalization rates, i.e. exactly what a
    float kernel row multiplies once the folded model is quantized.
    """
    sub = embedding_model(model)
    if len(images) <= batch_size:
        # One batch: tracing predict's graph (tens of seconds for a quantized model) costs more than running it.
        values = sub(images, training=False).numpy()
    else:
        values = sub.predict(images, batch_size=batch_size, verbose=0)
    values = np.asarray(values, dtype=np.float64).reshape(len(images), -1)
    if _is_quantized(model):
        values = values / equalization_rates(model)
    return values


def quantized_backbone(model: keras.Model, train_images: np.ndarray, variant: str, config: HeadConfig,
                       log=print) -> keras.Model:
    """The model quantized as ``qana convert`` would (same calibration draw), for its embeddings.

    The backbone's calibrated ranges do not depend on the head weights, so the folded model quantizes
    to the same integer backbone and its Akida dense layer reads exactly these values.
    """
    from qana_keras.conversion.quantize import quantize_for_akida

    picked = calibration_indices(len(train_images), config.calibration, config.seed)
    qmodel, _ = quantize_for_akida(model, train_images[picked], variant, bits=config.bits, log=log)
    return qmodel


# --------------------------------------------------------------------------------------------------
# Folding into the model


def with_dense(model: keras.Model, kernel: np.ndarray, bias: np.ndarray) -> keras.Model:
    """A copy of ``model`` (same layers and names) whose ``head/dense`` holds (kernel, bias)."""
    try:
        dense = model.get_layer(DENSE_LAYER)
    except ValueError:
        raise HeadError(f"model '{model.name}' has no layer '{DENSE_LAYER}' to replace") from None
    old_kernel, old_bias = dense.get_weights()
    if old_kernel.shape != kernel.shape or old_bias.shape != bias.shape:
        raise HeadError(f"'{DENSE_LAYER}' of '{model.name}' is {old_kernel.shape} + {old_bias.shape}; the folded "
                        f"head is {kernel.shape} + {bias.shape} (was the head fitted on another model?)")
    import tf_keras as keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.get_layer(DENSE_LAYER).set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return clone


# --------------------------------------------------------------------------------------------------
# One run


def run_embeddings(model: keras.Model, data: dict, variant: str, kinds, config: HeadConfig, log=print) -> dict:
    """{kind: {split: (N, D) embeddings}} for the float and/or quantized backbone, all splits."""
    out = {}
    for kind in kinds:
        began = time.perf_counter()
        source = model if kind == "float" else quantized_backbone(model, data["train"].images, variant, config, log)
        out[kind] = {split: extract_embeddings(source, d.images) for split, d in data.items()}
        log(f"{kind} embeddings of {', '.join(f'{s} {len(d)}' for s, d in data.items())} "
            f"in {time.perf_counter() - began:.0f}s")
    return out


def split_report(labels, logits, groups, baseline_logits, seed: int = 0, n_boot: int = 1000) -> dict:
    """classification_metrics + lesion bootstrap intervals + paired difference against the baseline."""
    from qana_keras.metrics import bootstrap_intervals, classification_metrics, paired_bootstrap_difference

    metrics = classification_metrics(labels, logits)
    pred = logits.argmax(1)
    metrics["bootstrap_95"] = bootstrap_intervals(labels, pred, groups, n_boot=n_boot, seed=seed)
    metrics["vs_original_95"] = paired_bootstrap_difference(labels, baseline_logits.argmax(1), pred, groups,
                                                            n_boot=n_boot, seed=seed)
    return metrics


def head_run(run_dir: str | Path, config: HeadConfig | None = None, overwrite: bool = False, data=None,
             n_boot: int = 1000, log=print) -> dict:
    """Fit the embedding-space head of ``run_dir``'s float model; write head.npz/json and the new model.

    Metrics (validation and the lesion-level test split, lesion bootstrap, paired against the
    original model): ``float`` is the saved float model; ``quantized_embedding`` applies the folded
    head to the quantized backbone's embeddings (what the Akida dense layer reads) in float, i.e.
    before the dense weights are themselves quantized. ``data`` overrides loading the run's splits.
    """
    from qana_keras.runs import RunFolder
    from qana_keras.runtime.safe_load import load_keras_model

    began = time.perf_counter()
    config = (config or HeadConfig()).validate()
    run_dir = Path(run_dir)
    run = RunFolder.open(run_dir, f"train a model there first (`qana train --run {run_dir}`)")
    variant = run.variant
    paths = run.head_artifacts()
    run.float_model()  # FileNotFoundError before any work
    run.refuse_overwrite([p for key, p in paths.items() if key != "float"], overwrite, "head")
    model = load_keras_model(paths["float"])
    data = data if data is not None else run.splits(log=log)
    kinds = ["float"] + (["quantized"] if config.embedding == "quantized" else [])
    embeddings = run_embeddings(model, data, variant, kinds, config, log)
    head = fit_head(embeddings[config.embedding]["train"], data["train"].labels, config)
    new_model = with_dense(model, head.kernel, head.folded_bias)

    metrics = {}
    for split in ("val", "test"):
        d = data[split]
        groups = d.frame["lesion_id"].to_numpy()
        baseline = model.predict(d.images, batch_size=256, verbose=0)
        new_logits = new_model.predict(d.images, batch_size=256, verbose=0)
        metrics[split] = {name: split_report(d.labels, logits, groups, baseline, config.seed, n_boot)
                          for name, logits in (("float", new_logits), ("original_float", baseline))}
        if "quantized" in embeddings:
            metrics[split]["quantized_embedding"] = split_report(
                d.labels, head.logits(embeddings["quantized"][split]), groups, baseline, config.seed, n_boot)
        m, o = metrics[split]["float"], metrics[split]["original_float"]
        diff = m["vs_original_95"]["macro_f1"]
        log(f"{split}: macro-F1 {m['macro_f1']:.4f} (original {o['macro_f1']:.4f}, difference {diff['difference']:+.4f} "
            f"[{diff['low']:+.4f}, {diff['high']:+.4f}])  balanced acc {m['balanced_accuracy']:.4f}  "
            f"top-1 {m['top1']:.4f}")

    with atomic_path(paths["model"]) as tmp:
        new_model.save(tmp, include_optimizer=False, save_format="h5")
    save_head(head, paths["npz"], paths["json"], extra={
        "variant": variant, "source_model": paths["float"].name, "source_sha256": sha256_file(paths["float"]),
        "model": paths["model"].name, "embedding_layer": EMBEDDING_LAYER, "dense_layer": DENSE_LAYER,
        "metrics": metrics, "bootstrap": f"{n_boot} resamples of lesions (lesion_id), paired with the original model",
        "seconds": round(time.perf_counter() - began, 1)})
    log(f"wrote {paths['npz'].name}, {paths['json'].name}, {paths['model'].name} in {display_path(run_dir)} "
        f"({time.perf_counter() - began:.0f}s)")
    return read_json(paths["json"])
