"""Quantize a trained float model with quantizeml, convert it with cnn2snn, and check nothing was lost.

Modules: ``quantize`` (quantizeml and cnn2snn, r_succ, hybrid cuts), ``spike`` (the Akida 1.0 spike layer),
``qat`` (fidelity scores and quantization-aware fine-tuning), ``run`` (``convert_run``, the run-folder step).

Run folder artifacts: see ``conversion.run`` (names in ``qana_keras.runs``).

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

from qana_keras.models.pretrained import LITE0_CUTS

HARDWARE_NATIVE = frozenset({"qana", "plain-cnn", "plain-cnn-v1", "akidanet-0.25", "akidanet-0.5", "qana-akd1000",
                             *(f"lite0-b{block}" for block in LITE0_CUTS)})
"""Variants declared to run entirely on Akida: conversion fails loudly if any layer stays float."""

AKIDA_V1_VARIANTS = frozenset({"qana-akd1000", "plain-cnn-v1"})
"""Variants for Akida 1.0 (AKD1000, AKD1500: the chips people own): 4 bits, per-tensor activations, converted
with cnn2snn's ``AkidaVersion.v1``."""

class ConversionError(RuntimeError):
    """A model declared hardware-native would lose layers (left float or dropped) on the way to Akida."""
