"""Quantize a trained float model with quantizeml, convert it with cnn2snn, and check nothing was lost.

Run folder artifacts (``runs/<name>/``), next to ``<variant>_float.h5``:
  <variant>_i8_w8_a8.h5     quantized Keras model (8-bit input weights, 8-bit weights and activations)
  <variant>.fbz             the Akida model (for a hybrid: the Akida prefix only)
  conversion.json           r_succ, float layers, PTQ/QAT validation top-1 vs float, calibration, seconds
The 4-bit option writes ``<variant>_i8_w4_a4.h5``, ``<variant>_i8_w4_a4.fbz`` and
``conversion_i8_w4_a4.json`` instead, so both precisions can live in one run folder.

Integer-graph completeness ``r_succ`` is counted on the quantized Keras model, i.e. after quantizeml's
own rewriting (BatchNormalization folded into the conv before it, identity 1x1 convs inserted after
Adds and multi-consumer layers, activations split off convs):

    r_succ = integer layers / counted layers

Counted: every layer except the InputLayer and quantizeml's interface layers (Dequantizer,
InputQuantizer, OutputQuantizer), which move values between the integer and float domains but compute
nothing. Integer: a quantizeml ``Quantized*`` layer. Everything else counted is a float layer left on
the host. So the final output Dequantizer of a fully integer model costs nothing (r_succ = 1.0), while
a Dequantizer in the middle marks where the integer graph ends and every layer after it counts as float.

Hardware-native variants (``HARDWARE_NATIVE``) must reach r_succ = 1.0; anything else raises
``ConversionError`` naming the layer. Other variants run as a ``HybridModel``: the longest prefix that
quantizes and has a single output tensor runs on Akida, the float rest in Keras on the host.
"""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tf_keras as keras

from qana_keras import CLASSES
from qana_keras.io import RunFolderError, atomic_path, read_json, write_json
from qana_keras.models.pretrained import LITE0_CUTS
from qana_keras.safe_load import file_record

HARDWARE_NATIVE = frozenset({"qana", "plain-cnn", "plain-cnn-v1", "akidanet-0.25", "akidanet-0.5", "qana-akd1000",
                             *(f"lite0-b{block}" for block in LITE0_CUTS)})
"""Variants declared to run entirely on Akida: conversion fails loudly if any layer stays float."""

AKIDA_V1_VARIANTS = frozenset({"qana-akd1000", "plain-cnn-v1"})
"""Variants for Akida 1.0 (AKD1000, AKD1500: the chips people own): 4 bits, per-tensor activations, converted
with cnn2snn's ``AkidaVersion.v1``."""

AKIDA_V1_SPIKE_LAYERS = {"qana-akd1000": "spike/relu"}
"""Akida 1.0 variants with a spike layer whose output is quantized to 1 bit (what on-chip learning reads)."""

# Fidelity targets of the integer model against the float one (issue 4). Post-training quantization
# that misses any of them on validation triggers quantization-aware fine-tuning.
TARGETS = {"top1_drop": 0.005, "macro_f1_drop": 0.01, "argmax_agreement": 0.99, "class_recall_drop": 0.02}
MAX_PTQ_TOP1_DROP = TARGETS["top1_drop"]

# The smoke profile (`make all QUICK=1`, `qana convert/deploy --quick`): the pipeline runs end to end in minutes on
# class-stratified subsets of each split, so its numbers test the plumbing, not the model.
QUICK_MAX_IMAGES = 600
QUICK_QAT_EPOCHS = 1
QUICK_NOTE = ("SMOKE PROFILE (--quick): a few-minute run on small subsets of each split (at most "
              f"{QUICK_MAX_IMAGES} images) with at most {QUICK_QAT_EPOCHS} QAT epoch; its figures mean nothing about "
              "the model. Run without QUICK=1 / --quick for real numbers.")


class ConversionError(RuntimeError):
    """A model declared hardware-native would lose layers (left float or dropped) on the way to Akida."""


# --------------------------------------------------------------------------------------------------
# Precision and artifact names


def quick_fields(quick: bool) -> dict:
    """What every report of a run made with ``--quick`` starts with: ``quick`` and, if set, ``QUICK_NOTE``."""
    return {"quick": quick, **({"note": QUICK_NOTE} if quick else {})}


def precision_tag(bits: int) -> str:
    """``i8_w8_a8`` / ``i8_w4_a4``: input-layer weight bits, weight bits, activation bits."""
    if bits not in (8, 4):
        raise ValueError(f"bits must be 8 (Akida 2.0 default) or 4 (Akida 1.0 style), not {bits}")
    return f"i8_w{bits}_a{bits}"


def quantization_params(bits: int, akida_v1: bool = False):
    """8-bit: quantizeml defaults. 4-bit: 4-bit weights and activations, 8-bit first-layer weights.

    ``akida_v1`` (4-bit only): per-tensor activations too, as Akida 1.0 requires.
    """
    from quantizeml.layers import QuantizationParams

    precision_tag(bits)  # validates
    if akida_v1 and bits != 4:
        raise ValueError("Akida 1.0 runs 4-bit models: pass --bits 4 (bits=4)")
    if bits == 8:
        return QuantizationParams()
    return QuantizationParams(weight_bits=4, activation_bits=4, input_weight_bits=8, per_tensor_activations=akida_v1)


@contextmanager
def akida_version(v1: bool):
    """cnn2snn's target (quantizeml and the converter read it): Akida 1.0 if ``v1``, else the 2.0 default."""
    import cnn2snn

    with cnn2snn.set_akida_version(cnn2snn.AkidaVersion.v1) if v1 else nullcontext():
        yield


def artifact_paths(run_dir: str | Path, variant: str, bits: int = 8) -> dict[str, Path]:
    """Where ``convert_run`` writes (and ``deploy_run`` reads) the artifacts of one precision."""
    run_dir, tag = Path(run_dir), precision_tag(bits)
    suffix = "" if bits == 8 else f"_{tag}"
    return {"float": run_dir / f"{variant}_float.h5",
            "quantized": run_dir / f"{variant}_{tag}.h5",
            "akida": run_dir / f"{variant}{suffix}.fbz",
            "report": run_dir / f"conversion{suffix}.json"}


# --------------------------------------------------------------------------------------------------
# Graph helpers (on Keras functional models, by layer name)


def inbound_names(model: keras.Model) -> dict[str, list[str]]:
    """Layer name -> names of the layers feeding it, in call order (from the model config)."""
    out = {}
    for layer in model.get_config()["layers"]:
        names = []
        for node in layer.get("inbound_nodes", []):
            entries = node.values() if isinstance(node, dict) else node
            for entry in entries:
                names.append(entry[0])
        out[layer["config"]["name"]] = names
    return out


def _ancestors(name: str, inbound: dict[str, list[str]]) -> set[str]:
    seen, stack = {name}, [name]
    while stack:
        for parent in inbound[stack.pop()]:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _is_interface(layer) -> bool:
    """InputLayer and quantizeml's quantizer layers: they move values between domains, computing nothing."""
    from quantizeml.layers import Dequantizer, InputQuantizer, OutputQuantizer

    return isinstance(layer, (keras.layers.InputLayer, Dequantizer, InputQuantizer, OutputQuantizer))


def _describe(layer) -> str:
    kind = type(layer).__name__
    activation = getattr(layer, "activation", None)
    if kind == "Activation" and activation is not None:
        kind += f" {getattr(activation, '__name__', activation)}"
    return f"'{layer.name}' ({kind})"


def unquantizable_layers(model: keras.Model) -> list[str]:
    """Layers of ``model`` (after quantizeml's sanitizing) that have no quantized version at all.

    Cheap (no calibration): it tells before quantizing whether a model can be fully integer.
    """
    from quantizeml.models.quantize import get_quantized_layer
    from quantizeml.models.transforms import sanitize

    sanitized = sanitize(model)
    return [_describe(layer) for layer in sanitized.layers
            if not isinstance(layer, keras.layers.InputLayer) and get_quantized_layer(layer) is None]


def find_convertible_prefix(model: keras.Model) -> str | None:
    """The last layer at which ``model`` can be cut into an integer Akida prefix and a float host tail.

    A valid cut ``L``: L and every layer it depends on have a quantized version, the prefix contains
    a layer with weights (Akida starts with an input convolution), and L's output is the *only*
    tensor that crosses the cut (every later layer reads only L or other later layers), because an
    Akida model has a single output. The search runs on quantizeml's sanitized graph, but returns
    only names that also exist in ``model`` (``quantize_until`` takes those). Returns the model's
    last layer when the whole model quantizes, None when no cut exists.
    """
    from quantizeml.models.quantize import get_quantized_layer
    from quantizeml.models.transforms import sanitize

    sanitized = sanitize(model)
    inbound = inbound_names(sanitized)
    layers = {layer.name: layer for layer in sanitized.layers}
    original = {layer.name for layer in model.layers}
    order = [layer.name for layer in sanitized.layers]
    quantizable = {name for name, layer in layers.items()
                   if isinstance(layer, keras.layers.InputLayer) or get_quantized_layer(layer) is not None}
    for name in reversed(order):
        if name not in original:
            continue
        prefix = _ancestors(name, inbound)
        if not prefix <= quantizable or not any(layers[p].weights for p in prefix):
            continue
        crossing = [m for m in order if m not in prefix and any(p in prefix and p != name for p in inbound[m])]
        if not crossing:
            return name
    return None


def integer_completeness(qmodel: keras.Model) -> dict:
    """r_succ of a quantized Keras model, with the names of the float layers (see the module docstring)."""
    from quantizeml.models.quantize import is_quantized_layer

    counted = [layer for layer in qmodel.layers if not _is_interface(layer)]
    floating = [layer.name for layer in counted if not is_quantized_layer(layer)]
    output_names = set(qmodel.output_names)
    inner_dequantizers = [layer.name for layer in qmodel.layers
                          if type(layer).__name__ == "Dequantizer" and layer.name not in output_names]
    return {"r_succ": 1.0 - len(floating) / len(counted) if counted else 0.0,
            "counted_layers": len(counted),
            "integer_layers": len(counted) - len(floating),
            "float_layers": floating,
            "inner_dequantizers": inner_dequantizers,
            "definition": "integer layers / all layers of the quantized Keras model, not counting the InputLayer "
                          "and quantizer interface layers (Dequantizer, InputQuantizer, OutputQuantizer)"}


def first_float_layer(qmodel: keras.Model) -> str | None:
    """The first (topological) layer left float, as "'name' (Type)", or None for a fully integer model."""
    from quantizeml.models.quantize import is_quantized_layer

    for layer in qmodel.layers:
        if not _is_interface(layer) and not is_quantized_layer(layer):
            return _describe(layer)
    return None


# --------------------------------------------------------------------------------------------------
# Quantization and conversion


def spike_config(model: keras.Model, qparams, spike_layer: str) -> dict:
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


def misaligned_flatten_inputs(qmodel: keras.Model) -> dict[str, str]:
    """{QuantizedFlatten name: its producer} for each flatten whose input channels have different
    fractional bits.

    Such a flatten aligns the channels (left shifts, saturating at 8 bits) and records the shifts;
    cnn2snn 2.19 drops them, so the Akida Dense1D after it adds values of different scales (measured on
    the plain CNN baseline: 94.2% argmax agreement with its own quantized model instead of 100%).
    """
    from quantizeml.models import record_quantization_variables

    record_quantization_variables(qmodel)  # what cnn2snn does first; fills the flatten's shift recorder
    found = {}
    for layer in qmodel.layers:
        shift = getattr(layer, "input_shift", None) if type(layer).__name__ == "QuantizedFlatten" else None
        if shift is not None and shift.value is not None and np.any(shift.value.numpy() != 0):
            found[layer.name] = layer.inbound_nodes[0].inbound_layers.name
    return found


def _per_tensor_config(qmodel: keras.Model, producers: list[str]) -> dict:
    """``qmodel``'s quantization config with the output quantizers of ``producers`` made per-tensor."""
    from quantizeml.models import dump_config

    config = dump_config(qmodel)
    for name in producers:
        quantizer = config.get(name, {}).get("output_quantizer")
        if quantizer is None:
            raise ConversionError(f"layer '{name}' feeds a Flatten with misaligned channels but has no output "
                                  "quantizer to make per-tensor; end the layers before Flatten with a ReLU")
        quantizer["axis"] = "per-tensor"
    return config


def quantize_model(model: keras.Model, samples: np.ndarray, bits: int = 8, batch_size: int = 100,
                   epochs: int = 1, quantize_until: str | None = None, spike_layer: str | None = None,
                   akida_v1: bool = False, log=print) -> keras.Model:
    """quantizeml ``quantize`` calibrated on ``samples`` (uint8 images); quantizeml's warnings go to ``log``.

    ``akida_v1`` (or a ``spike_layer``) targets Akida 1.0: 4-bit per-tensor parameters; a ``spike_layer``'s output
    is quantized to 1 bit.
    """
    from quantizeml.models import quantize

    v1 = akida_v1 or spike_layer is not None
    qparams = quantization_params(bits, akida_v1=v1)
    with warnings.catch_warnings(record=True) as caught, akida_version(v1):
        warnings.simplefilter("always")
        q_config = spike_config(model, qparams, spike_layer) if spike_layer else None
        qmodel = quantize(model, q_config=q_config, qparams=qparams, samples=samples, num_samples=len(samples),
                          batch_size=batch_size, epochs=epochs, quantize_until=quantize_until)
        misaligned = misaligned_flatten_inputs(qmodel)
        if misaligned:  # one per-tensor scale before Flatten: nothing to align, on Keras and on Akida alike
            log(f"quantize: {', '.join(misaligned.values())} quantized per-tensor: per-axis channels of different "
                "fractional bits before Flatten would be summed unaligned by the Akida dense layer (cnn2snn "
                "drops the flatten's alignment shifts)")
            qmodel = quantize(model, q_config=_per_tensor_config(qmodel, list(misaligned.values())),
                              qparams=qparams, samples=samples, num_samples=len(samples), batch_size=batch_size,
                              epochs=epochs, quantize_until=quantize_until)
    for w in caught:
        if "quantiz" in str(w.message).lower():
            log(f"quantizeml: {str(w.message).splitlines()[0]}")
    return qmodel


def check_hardware_native(qmodel: keras.Model, variant: str) -> None:
    """Raise ConversionError naming the first float layer if ``qmodel`` is not integer end to end."""
    report = integer_completeness(qmodel)
    if report["float_layers"] or report["inner_dequantizers"]:
        first = first_float_layer(qmodel)
        raise ConversionError(
            f"{variant} is declared hardware-native, but quantization left {len(report['float_layers'])} of "
            f"{report['counted_layers']} layers float, starting at layer {first}"
            + (f" (Dequantizer inserted: {', '.join(report['inner_dequantizers'])})" if report["inner_dequantizers"]
               else "")
            + "; that layer and everything after it would not run on Akida. Replace it with an Akida-compatible "
              "layer (see qana_keras/models/blocks.py) or convert the variant as a hybrid.")


def quantize_for_akida(model: keras.Model, samples: np.ndarray, variant: str, bits: int = 8, batch_size: int = 100,
                       epochs: int = 1, hardware_native: bool | None = None,
                       log=print) -> tuple[keras.Model, str | None]:
    """Quantize ``model`` for Akida; returns (quantized model, cut layer or None for a fully integer model).

    ``hardware_native`` (default: ``variant in HARDWARE_NATIVE``) is the strict path: a layer without
    a quantized version raises ConversionError before calibrating, a layer left float after it too.
    Otherwise the model is quantized up to ``find_convertible_prefix`` (the whole model if it can).
    """
    native = variant in HARDWARE_NATIVE if hardware_native is None else hardware_native
    cut = None
    if native:
        blocked = unquantizable_layers(model)
        if blocked:
            raise ConversionError(f"{variant} is declared hardware-native, but layer {blocked[0]} has no quantized "
                                  f"version in quantizeml ({len(blocked)} such layer(s): {', '.join(blocked[:5])}"
                                  f"{' ...' if len(blocked) > 5 else ''}); it cannot run on Akida. Replace it "
                                  "(see qana_keras/models/blocks.py) or convert the variant as a hybrid.")
    else:
        cut = find_convertible_prefix(model)
        if cut is None:
            raise ConversionError(f"{variant}: no layer of the model can end an Akida prefix (the first layers do "
                                  "not quantize, or no single tensor separates them from the rest)")
        if cut == model.layers[-1].name:
            cut = None  # the whole model quantizes: no host tail
        else:
            log(f"{variant} is not hardware-native: Akida prefix up to '{cut}', float tail on the host")
    qmodel = quantize_model(model, samples, bits, batch_size, epochs, quantize_until=cut,
                            spike_layer=AKIDA_V1_SPIKE_LAYERS.get(variant), akida_v1=variant in AKIDA_V1_VARIANTS,
                            log=log)
    if native:
        check_hardware_native(qmodel, variant)
    return qmodel, cut


def _stop_messages(caught) -> list[str]:
    return [str(w.message) for w in caught if "Conversion stops" in str(w.message)]


def to_akida(qmodel: keras.Model, strict: bool, variant: str = "model", expected_last: str | None = None, log=print):
    """cnn2snn.convert with the silent-truncation checks made loud.

    ``strict``: the converter's 'Conversion stops at layer' warning is an error, every quantized
    layer with weights must reappear in the Akida model by name, and the Akida output must hold the
    Keras output's values (e.g. [1, 1, 7] for 7 logits). Otherwise (a hybrid prefix), the Akida
    model must end at ``expected_last`` (the Dequantizer closing the prefix).
    """
    import cnn2snn

    with warnings.catch_warnings(record=True) as caught, akida_version(variant in AKIDA_V1_VARIANTS):
        warnings.simplefilter("always")
        akida_model = cnn2snn.convert(qmodel)
    stops = _stop_messages(caught)
    for w in caught:
        if "Conversion stops" not in str(w.message) and issubclass(w.category, UserWarning):
            log(f"cnn2snn: {str(w.message).splitlines()[0]}")
    ak_names = [layer.name for layer in akida_model.layers]
    misaligned = list(misaligned_flatten_inputs(qmodel))
    if misaligned:
        raise ConversionError(f"{variant}: {', '.join(misaligned)} aligns channels of different fractional bits, and "
                              "cnn2snn drops that alignment (the Akida dense layer would sum them unaligned); "
                              "quantize with qana_keras.convert.quantize_model, which makes the layer before "
                              "Flatten per-tensor")
    if strict:
        if stops:
            raise ConversionError(f"{variant}: cnn2snn dropped the end of the model: {stops[0].splitlines()[0]} "
                                  "Every layer of a hardware-native variant must convert.")
        weighted = [layer.name for layer in qmodel.layers if layer.weights and not _is_interface(layer)
                    and any("kernel" in w.name for w in layer.weights)]
        missing = [name for name in weighted if name not in ak_names]
        if missing:
            raise ConversionError(f"{variant}: layer(s) {', '.join(missing)} of the quantized model have no "
                                  f"counterpart in the Akida model (last Akida layer: '{ak_names[-1]}')")
        keras_units = int(np.prod(qmodel.output_shape[1:]))
        ak_shape = list(akida_model.output_shape)
        if int(np.prod(ak_shape)) != keras_units or (len(ak_shape) == 3 and ak_shape[:2] != [1, 1]):
            raise ConversionError(f"{variant}: the Akida model outputs {ak_shape} (last layer '{ak_names[-1]}') but "
                                  f"the Keras model outputs {keras_units} values; the conversion is incomplete")
    elif expected_last is not None and ak_names[-1] != expected_last:
        raise ConversionError(f"{variant}: the Akida prefix ends at '{ak_names[-1]}', not at the planned cut "
                              f"'{expected_last}': {stops[0].splitlines()[0] if stops else 'no converter message'}")
    return akida_model


# --------------------------------------------------------------------------------------------------
# Running converted models


def akida_logits(akida_model, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """Akida ``predict`` on uint8 images, flattened to (N, values): [N, 1, 1, 7] -> [N, 7]."""
    out = akida_model.predict(np.ascontiguousarray(images, dtype=np.uint8), batch_size=batch_size)
    return out.reshape(len(images), -1)


def tail_model(qmodel: keras.Model, boundary: str) -> keras.Model:
    """The float part of a partially quantized model: from the output of ``boundary`` to the model output."""
    return keras.Model(qmodel.get_layer(boundary).output, qmodel.output, name=f"{qmodel.name}_host_tail")


@dataclass
class HybridModel:
    """Akida integer prefix + float Keras tail on the host, with one ``predict(images) -> logits``.

    ``boundary`` is the Dequantizer that ends the quantized prefix: the Akida model's last layer, and
    the input of ``tail`` (the rest of the quantized Keras model, all float layers).
    """
    akida_model: object
    tail: keras.Model
    boundary: str
    info: dict = field(default_factory=dict)

    def predict(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
        features = self.akida_model.predict(np.ascontiguousarray(images, dtype=np.uint8), batch_size=batch_size)
        return self.tail.predict(features.astype(np.float32), batch_size=max(batch_size, 1), verbose=0)

    @classmethod
    def load(cls, akida_path: str | Path, quantized_path: str | Path, boundary: str) -> "HybridModel":
        from qana_keras.safe_load import load_akida_model

        qmodel = load_quantized(quantized_path)
        return cls(load_akida_model(akida_path), tail_model(qmodel, boundary), boundary)


def load_quantized(path: str | Path) -> keras.Model:
    """A float or quantized Keras .h5, checked before loading (``safe_load.load_keras_model``)."""
    from qana_keras.safe_load import load_keras_model

    return load_keras_model(path)


def predict_logits(model, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """Logits (N, classes) from a Keras model, an akida.Model, a HybridModel or a TFLiteModel, all fed uint8 images."""
    from qana_keras.export import TFLiteModel

    if isinstance(model, keras.Model):
        return model.predict(images, batch_size=batch_size, verbose=0)
    if isinstance(model, (HybridModel, TFLiteModel)):
        return model.predict(images, batch_size=batch_size)
    return akida_logits(model, images, batch_size)


def load_converted(run_dir: str | Path, bits: int = 8) -> dict:
    """The converted artifacts of a run: {"report", "quantized", "akida" (akida.Model or HybridModel)}."""
    from qana_keras.config import load_config
    from qana_keras.safe_load import load_akida_model

    run_dir = Path(run_dir)
    variant = load_config(run_dir / "config.yaml").model.variant
    paths = artifact_paths(run_dir, variant, bits)
    missing = [str(p) for key, p in paths.items() if key != "float" and not p.exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: no converted model ({', '.join(missing)} missing); "
                                f"run `qana convert --run {run_dir}{'' if bits == 8 else ' --bits 4'}` first")
    report = read_json(paths["report"])
    qmodel = load_quantized(paths["quantized"])
    ak = load_akida_model(paths["akida"])
    if report.get("hybrid"):
        boundary = report["hybrid"]["boundary"]
        ak = HybridModel(ak, tail_model(qmodel, boundary), boundary)
    return {"report": report, "quantized": qmodel, "akida": ak, "paths": paths, "variant": variant}


# --------------------------------------------------------------------------------------------------
# Quantization-aware fine-tuning


def _val_scores(model, images, labels, reference_logits: np.ndarray | None = None, classes=CLASSES) -> dict:
    """top-1, macro-F1 and per-class recall; with ``reference_logits`` also the argmax agreement with them."""
    from qana_keras.metrics import macro_f1

    logits = predict_logits(model, images, batch_size=256)
    pred = logits.argmax(1)
    recall = {c: float(np.mean(pred[labels == i] == i)) if np.any(labels == i) else None
              for i, c in enumerate(classes)}
    scores = {"top1": float(np.mean(pred == labels)), "macro_f1": macro_f1(labels, pred, len(classes)), "recall": recall,
              "logits": logits}
    if reference_logits is not None:
        scores["argmax_agreement"] = float(np.mean(pred == reference_logits.argmax(1)))
    return scores


def _public(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if k != "logits"}


def target_gap(scores: dict, reference: dict) -> float:
    """How far ``scores`` miss the fidelity targets against ``reference`` (the float model), in target units.

    The largest of top-1 drop / 0.5 pt, macro-F1 drop / 1 pt, disagreement with the float argmax / 1 %
    and the worst per-class recall drop / 2 pt: <= 1 means all targets are met, lower is closer to
    the float model.
    """
    recall_drops = [reference["recall"][c] - scores["recall"][c] for c in reference["recall"]
                    if reference["recall"][c] is not None]
    return max((reference["top1"] - scores["top1"]) / TARGETS["top1_drop"],
               (reference["macro_f1"] - scores["macro_f1"]) / TARGETS["macro_f1_drop"],
               (1.0 - scores["argmax_agreement"]) / (1.0 - TARGETS["argmax_agreement"]),
               max(recall_drops, default=0.0) / TARGETS["class_recall_drop"])


class FitProgress(keras.callbacks.Callback):
    """A progress line every ``every_seconds`` inside one ``fit`` epoch (a QAT epoch on all images takes minutes)."""

    def __init__(self, label: str, n_images: int, batch_size: int, every_seconds: float = 30.0, log=print):
        super().__init__()
        self.label, self.n_images, self.batch_size = label, n_images, batch_size
        self.every_seconds, self.log = every_seconds, log

    def on_epoch_begin(self, epoch, logs=None):
        self.began = self.last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self.last >= self.every_seconds:
            done = min((batch + 1) * self.batch_size, self.n_images)
            self.log(f"{self.label}: {done}/{self.n_images} images, {now - self.began:.0f}s")
            self.last = now


def quantization_aware_finetune(qmodel: keras.Model, images: np.ndarray, teacher_logits: np.ndarray, val,
                                reference: dict, start: dict, epochs: int, learning_rate: float,
                                batch_size: int = 64, seed: int = 0, stop_when_met: bool = False, log=print) -> dict:
    """Fine-tune the quantized model in place by distillation from the float model; keep the best epoch.

    The loss is the cross-entropy between the quantized model's softmax and the float model's
    (``teacher_logits`` on the training images), so the integer model learns to reproduce the float
    model's decisions, rare classes included, rather than to chase the labels again. Constant low
    learning rate: weights move on their quantization grid while the calibrated activation ranges
    (non-trainable) stay fixed. Epoch 0 is the post-training-quantized model ``start``; the kept epoch
    has the smallest validation ``target_gap`` (ties: higher top-1). With ``stop_when_met``, training
    stops at the first epoch that meets every target on validation.
    """
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    soft_targets = tf.nn.softmax(teacher_logits.astype(np.float32)).numpy()
    qmodel.compile(optimizer=keras.optimizers.Adam(learning_rate),
                   loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(seed)

    def rank(scores):
        return (-target_gap(scores, reference), scores["top1"])

    best = {"epoch": 0, "scores": start, "weights": qmodel.get_weights()}
    history = []
    for epoch in range(epochs):
        began = time.perf_counter()
        order = rng.permutation(len(images))
        fit = qmodel.fit(images[order], soft_targets[order], batch_size=batch_size, epochs=1, verbose=0,
                         callbacks=[FitProgress(f"QAT epoch {epoch + 1}/{epochs}", len(images), batch_size, log=log)])
        scores = _val_scores(qmodel, val.images, val.labels, reference["logits"], classes=list(reference["recall"]))
        gap = target_gap(scores, reference)
        row = {"epoch": epoch + 1, "loss": float(fit.history["loss"][-1]), "val_top1": scores["top1"],
               "val_macro_f1": scores["macro_f1"], "val_argmax_agreement": scores["argmax_agreement"],
               "target_gap": gap, "seconds": round(time.perf_counter() - began, 1)}
        history.append(row)
        better = rank(scores) > rank(best["scores"])
        if better:
            best = {"epoch": epoch + 1, "scores": scores, "weights": qmodel.get_weights()}
        log(f"QAT epoch {epoch + 1}/{epochs}  distillation loss {row['loss']:.4f}  val top-1 {row['val_top1']:.4f}  "
            f"macro-F1 {row['val_macro_f1']:.4f}  agreement {row['val_argmax_agreement']:.4f}  "
            f"target gap {gap:.2f}{'  *best*' if better else ''}  {row['seconds']:.0f}s")
        if stop_when_met and gap <= 1.0:
            log("all fidelity targets met on validation: stopping quantization-aware fine-tuning")
            break
    qmodel.set_weights(best["weights"])
    return {"history": history, "selected_epoch": best["epoch"], "val": _public(best["scores"]),
            "learning_rate": learning_rate, "batch_size": batch_size, "ptq_target_gap": target_gap(start, reference),
            "loss": "cross-entropy to the float model's softmax on the training images (distillation, T=1)",
            "selection": "validation epoch (0 = post-training quantization) with the smallest target gap: the "
                         "largest of top-1 drop / 0.5 pt, macro-F1 drop / 1 pt, disagreement / 1 %, worst "
                         "class-recall drop / 2 pt against the float model; ties: top-1"}


# --------------------------------------------------------------------------------------------------
# The run-folder step


def variant_needs_4_bits(run_dir: Path, bits: int) -> bool:
    """True when ``run_dir`` holds an Akida 1.0 variant and ``bits`` is not 4 (checked before any work)."""
    from qana_keras.config import load_config

    config_file = Path(run_dir) / "config.yaml"
    return (bits != 4 and config_file.exists()
            and load_config(config_file).model.variant in AKIDA_V1_VARIANTS)


def _calibration_indices(n: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(count, n), replace=False))


def _refuse_overwrite(paths: dict[str, Path], overwrite: bool) -> None:
    existing = [str(p) for key, p in paths.items() if key != "float" and p.exists()]
    if existing and not overwrite:
        raise RunFolderError(f"conversion artifacts already exist ({', '.join(existing)}); pass --overwrite "
                             "(overwrite=True) to replace them")


def convert_run(run_dir: str | Path, bits: int = 8, num_calibration: int = 1024, batch_size: int = 32,
                calibration_epochs: int = 1, qat_epochs: int = 3, qat_learning_rate: float = 1e-5,
                qat_threshold: float = MAX_PTQ_TOP1_DROP, qat_stop_when_met: bool = False, seed: int = 0,
                overwrite: bool = False, data_config=None, spike_rate: float = 0.1, quick: bool = False,
                log=print) -> dict:
    """Quantize, (fine-tune,) convert and check the float model of ``run_dir``; returns conversion.json.

    Calibration uses ``num_calibration`` training images picked at random with ``seed``, in batches
    of ``batch_size``: quantizeml sets each activation range from the first batch and then follows a
    moving maximum, so smaller batches mean more updates; on the reference run, batches of 32 lost
    0.3 pt of validation top-1 where batches of 100 lost 0.8 pt (1024 images, 1 epoch). If
    post-training quantization misses a fidelity target on validation (top-1 drop > ``qat_threshold``,
    macro-F1 drop > 1 pt, argmax agreement with the float model < 99 %, a class losing > 2 pt recall)
    and ``qat_epochs`` > 0, quantization-aware fine-tuning runs (see ``quantization_aware_finetune``):
    all ``qat_epochs`` with the best on validation kept, or until validation meets every target with
    ``qat_stop_when_met`` (faster; on the reference run that first epoch had less margin on test). ``data_config``
    overrides the run's data settings (tests). Akida 1.0 variants (``AKIDA_V1_VARIANTS``) need bits=4; those with a
    spike layer (``AKIDA_V1_SPIKE_LAYERS``) first get it tuned to fire on ``spike_rate`` of its positions (``edge.tune_spike_rate``). ``quick``: the
    smoke profile (``QUICK_NOTE``): subsets of ``QUICK_MAX_IMAGES`` per split, at most ``QUICK_QAT_EPOCHS``.
    """
    if variant_needs_4_bits(run_dir, bits):
        raise ValueError(f"{run_dir} holds an Akida 1.0 variant, which runs 4-bit models: pass --bits 4")
    import akida

    from qana_keras.config import load_config
    from qana_keras.data.dataset import load_splits, run_classes

    began = time.perf_counter()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise RunFolderError(f"{run_dir}: no config.yaml; train a model there first (`qana train --run {run_dir}`)")
    config = load_config(run_dir / "config.yaml")
    if data_config is not None:
        config.data = data_config
    variant = config.model.variant
    paths = artifact_paths(run_dir, variant, bits)
    if not paths["float"].exists():
        raise FileNotFoundError(f"{paths['float']} not found; the run has not saved a float model yet")
    _refuse_overwrite(paths, overwrite)
    native = variant in HARDWARE_NATIVE

    if quick:
        log(QUICK_NOTE)
        qat_epochs = min(qat_epochs, QUICK_QAT_EPOCHS)
    model = load_quantized(paths["float"])
    data = load_splits(config.data, max_images=QUICK_MAX_IMAGES if quick else 0, seed=seed, log=log)
    train, val = data["train"], data["val"]
    classes = run_classes(config.data)
    float_val = _val_scores(model, val.images, val.labels, classes=classes)
    log(f"float {variant}: val top-1 {float_val['top1']:.4f}  macro-F1 {float_val['macro_f1']:.4f}")

    picked = _calibration_indices(len(train), num_calibration, seed)
    if len(picked) < num_calibration:
        log(f"calibrating on all {len(picked)} training images (fewer than the {num_calibration} asked)")
    spike_tuning = None
    to_quantize = model
    if variant in AKIDA_V1_SPIKE_LAYERS:
        from qana_keras.edge import tune_spike_rate

        to_quantize, spike_tuning = tune_spike_rate(model, train.images[picked], AKIDA_V1_SPIKE_LAYERS[variant],
                                                    rate=spike_rate)
        log(f"spike layer {spike_tuning['layer']}: firing rate {spike_tuning['rate_before']:.3f} -> "
            f"{spike_tuning['rate_after']:.3f} of positions (BN offsets shifted; target {spike_rate})")
    log(f"quantizing {variant} to {precision_tag(bits)} (quantizeml rebuilds the graph; a minute or more) ...")
    t0 = time.perf_counter()
    qmodel, cut = quantize_for_akida(to_quantize, train.images[picked], variant, bits, batch_size, calibration_epochs,
                                     hardware_native=native, log=log)
    quantize_seconds = time.perf_counter() - t0
    completeness = integer_completeness(qmodel)
    ptq_val = _val_scores(qmodel, val.images, val.labels, float_val["logits"], classes=classes)
    gap = target_gap(ptq_val, float_val)
    log(f"{precision_tag(bits)} PTQ: val top-1 {ptq_val['top1']:.4f} "
        f"({(ptq_val['top1'] - float_val['top1']) * 100:+.2f} pt vs float)  macro-F1 {ptq_val['macro_f1']:.4f} "
        f"({(ptq_val['macro_f1'] - float_val['macro_f1']) * 100:+.2f} pt)  argmax agreement "
        f"{ptq_val['argmax_agreement']:.4f}  target gap {gap:.2f}  r_succ {completeness['r_succ']:.3f}  "
        f"({quantize_seconds:.0f}s)")

    top1_drop = float_val["top1"] - ptq_val["top1"]
    qat = {"done": False, "epochs": 0, "ptq_target_gap": gap, "targets": TARGETS,
           "trigger": f"validation top-1 drop > {qat_threshold * 100:.2f} pt, or any other target missed "
                      "(target gap > 1)"}
    if top1_drop > qat_threshold or gap > 1.0:
        why = (f"PTQ misses the fidelity targets on validation (target gap {gap:.2f}, top-1 drop "
               f"{top1_drop * 100:.2f} pt)")
        if qat_epochs > 0:
            log(f"{why}: quantization-aware fine-tuning (distillation from the float model) for up to {qat_epochs} "
                f"epochs at learning rate {qat_learning_rate:g}")
            t0 = time.perf_counter()
            log(f"float model logits on {len(train)} training images (distillation targets) ...")
            teacher = predict_logits(model, train.images, batch_size=256)
            result = quantization_aware_finetune(qmodel, train.images, teacher, val, float_val, ptq_val, qat_epochs,
                                                 qat_learning_rate, batch_size=config.train.batch_size, seed=seed,
                                                 stop_when_met=qat_stop_when_met, log=log)
            qat.update(done=True, epochs=len(result["history"]), max_epochs=qat_epochs,
                       seconds=round(time.perf_counter() - t0, 1), **result)
        else:
            log(f"{why}, but quantization-aware fine-tuning is disabled (qat_epochs=0)")
    final_val = _val_scores(qmodel, val.images, val.labels, float_val["logits"], classes=classes)
    final_gap = target_gap(final_val, float_val)

    boundary = None
    if cut is not None:
        boundary = f"{cut}/dequantizer"
        if boundary not in {layer.name for layer in qmodel.layers}:
            raise ConversionError(f"{variant}: quantizing up to '{cut}' did not end in the Dequantizer '{boundary}'")
    log("converting to Akida (cnn2snn; a minute or more) ...")
    t0 = time.perf_counter()
    akida_model = to_akida(qmodel, strict=native or cut is None, variant=variant, expected_last=boundary, log=log)
    convert_seconds = time.perf_counter() - t0

    # A quick agreement check on validation images; deploy measures fidelity on the whole test split.
    check = val.images[:100]
    runner = HybridModel(akida_model, tail_model(qmodel, boundary), boundary) if boundary else akida_model
    q_logits, a_logits = predict_logits(qmodel, check), predict_logits(runner, check)
    agreement = float(np.mean(q_logits.argmax(1) == a_logits.argmax(1)))
    max_diff = float(np.max(np.abs(q_logits - a_logits)))
    log(f"Akida vs quantized Keras on {len(check)} validation images: argmax agreement {agreement:.3f}, "
        f"max |logit difference| {max_diff:.4g}")

    with atomic_path(paths["quantized"]) as tmp:
        qmodel.save(tmp, include_optimizer=False, save_format="h5")
    with atomic_path(paths["akida"]) as tmp:
        akida_model.save(str(tmp))
    report = {
        **quick_fields(quick),
        "variant": variant,
        "precision": precision_tag(bits),
        "hardware_native": native,
        "r_succ": completeness["r_succ"],
        "integer_layers": completeness["integer_layers"],
        "counted_layers": completeness["counted_layers"],
        "float_layers": completeness["float_layers"],
        "r_succ_definition": completeness["definition"],
        "hybrid": None if boundary is None else {
            "cut_after": cut, "boundary": boundary,
            "akida_output_shape": list(akida_model.output_shape),
            "host_layers": len(completeness["float_layers"]),
            "why": "an Akida model has one output; this is the last layer whose output alone feeds the rest"},
        "akida": {"layers": len(akida_model.layers), "output_shape": list(akida_model.output_shape),
                  "ip_version": str(akida_model.ip_version), "macs": int(akida_model.macs),
                  "akida_version": akida.__version__},
        "val": {"float": _public(float_val), "ptq": _public(ptq_val), "final": _public(final_val),
                "ptq_top1_drop_pt": round(top1_drop * 100, 3),
                "final_top1_drop_pt": round((float_val["top1"] - final_val["top1"]) * 100, 3),
                "final_macro_f1_drop_pt": round((float_val["macro_f1"] - final_val["macro_f1"]) * 100, 3),
                "final_target_gap": final_gap, "final_targets_met": final_gap <= 1.0},
        "qat": qat,
        "spike_tuning": spike_tuning,
        "calibration": {"images": int(len(picked)), "requested": num_calibration,
                        "source": "train split, seeded random subset", "seed": seed,
                        "batch_size": batch_size, "epochs": calibration_epochs},
        "akida_vs_quantized_val_check": {"images": int(len(check)), "argmax_agreement": agreement,
                                         "max_abs_logit_diff": max_diff},
        "artifacts": {k: p.name for k, p in paths.items()},
        # Checked whenever these files are loaded (safe_load.verify_recorded_checksum): a truncated copy is refused.
        "checksums": {p.name: file_record(p) for p in (paths["quantized"], paths["akida"])},
        "seconds": {"quantize": round(quantize_seconds, 1), "convert": round(convert_seconds, 1),
                    "total": round(time.perf_counter() - began, 1)},
    }
    write_json(paths["report"], report)
    log(f"wrote {paths['quantized'].name}, {paths['akida'].name}, {paths['report'].name} in {run_dir} "
        f"({report['seconds']['total']:.0f}s)")
    if quick:
        log(QUICK_NOTE)
    return report
