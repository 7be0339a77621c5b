"""QANA variants, registered by name so the CLI and config pick one with a string.

``qana`` (default, hardware-native) differs from the paper in three places, all because Akida
has no Multiply or sigmoid and a hardware dense layer reads at most 2048 inputs:
  * SA-ECA is additive: ``x + ReLU1(BN(conv1x1(ReLU6(BN(dw3x3(x))))))`` instead of a sigmoid gate,
    and only in stages 2-4 by default (``model.sa_eca_stages``): every Add costs the converter an
    identity layer, and at 64x64 those of stage 1 alone push the model from 48 to 52 NPs, past the
    largest standard Akida 2.0 device (TwelveNodesIPv2, 48 NPs) in one hardware pass;
  * SE is additive: a 3x3 squeeze to C/16 and a 1x1 excite, added and clipped to [0, 1];
  * the spike transform has 128 channels, so the head reads 4x4x128 = 2048 values.
``qana-paper`` keeps the paper's multiplicative gates and its 4x4x256 = 4096-input head; only its
prefix up to the first gate can run on Akida.
"""
from __future__ import annotations

from typing import Callable

from qana_keras import CLASSES
from qana_keras.config import ModelConfig
from qana_keras.models import blocks, keras

MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {}


def register(name: str):
    def wrap(builder):
        MODEL_BUILDERS[name] = builder
        return builder
    return wrap


def build_model(config: ModelConfig, input_size: int = 64, num_classes: int = len(CLASSES)) -> keras.Model:
    """Build the variant named by ``config.variant``."""
    try:
        builder = MODEL_BUILDERS[config.variant]
    except KeyError:
        raise ValueError(f"unknown model variant {config.variant!r}; known: {sorted(MODEL_BUILDERS)}") from None
    return builder(config, input_size=input_size, num_classes=num_classes)


def _backbone(config: ModelConfig, input_size: int, attention: str, attention_stages):
    """Input uint8 pixels -> Rescaling -> stem -> 4 QANA stages. Returns (inputs, features)."""
    if not config.widths:
        raise ValueError("model.widths must name at least one stage width")
    if input_size % (2 ** len(config.widths)):
        raise ValueError(f"input size {input_size} is not divisible by 2**{len(config.widths)} (one pool per stage)")
    inputs = keras.Input((input_size, input_size, 3), name="image", dtype="uint8")
    # The scale folds into the first Akida layer, which then reads raw 0..255 pixels.
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = blocks.conv_bn_act(x, config.stem_filters, "stem")
    for i, width in enumerate(config.widths, start=1):
        stage_attention = attention if i in attention_stages else "none"
        x = blocks.qana_stage(x, width, f"stage{i}", config.ghost_ratio, stage_attention)
    return inputs, x


@register("qana")
def build_qana(config: ModelConfig, input_size: int = 64, num_classes: int = len(CLASSES)) -> keras.Model:
    """Hardware-native QANA: every layer quantizes to 8 bits and maps on Akida 2.0."""
    inputs, x = _backbone(config, input_size, "additive", config.sa_eca_stages)
    x = blocks.spike_transform(x, config.head_channels)
    if config.se:
        x = blocks.se_additive(x, "se", ratio=config.se_ratio)
    flat_inputs = x.shape[1] * x.shape[2] * x.shape[3]
    if flat_inputs > 2048:
        raise ValueError(f"head reads {x.shape[1]}x{x.shape[2]}x{x.shape[3]} = {flat_inputs} values, over the 2048 "
                         "inputs of an Akida hardware dense layer: lower model.head_channels or the input size")
    outputs = blocks.classifier_head(x, num_classes, config.dropout)
    return keras.Model(inputs, outputs, name="qana")


@register("qana-paper")
def build_qana_paper(config: ModelConfig, input_size: int = 64, num_classes: int = len(CLASSES)) -> keras.Model:
    """The paper's QANA: sigmoid-gated SA-ECA and SE, 256-channel spike transform (4096-input head)."""
    inputs, x = _backbone(config, input_size, "gated", range(1, len(config.widths) + 1))
    x = blocks.spike_transform(x, config.widths[-1])
    x = blocks.se_gated(x, "se", ratio=config.se_ratio)
    outputs = blocks.classifier_head(x, num_classes, config.dropout)
    return keras.Model(inputs, outputs, name="qana_paper")
