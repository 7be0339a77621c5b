"""quantizeml quantization and cnn2snn conversion with the silent-loss checks made loud: r_succ, float layers,
hybrid cuts (an Akida prefix and a float host tail), Flatten channel alignment."""
from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tf_keras as keras

from qana_keras.conversion import AKIDA_V1_VARIANTS, HARDWARE_NATIVE, ConversionError
from qana_keras.conversion.spike import AKIDA_V1_SPIKE_LAYERS, spike_config
from qana_keras.runs import precision_tag


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
                              "quantize with qana_keras.conversion.quantize.quantize_model, which makes the layer "
                              "before Flatten per-tensor")
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
