"""QANA variants, registered by name so the CLI and config pick one with a string.

``qana`` (default, hardware-native) differs from the paper in three places, all because Akida
has no Multiply or sigmoid and a hardware dense layer reads at most 2048 inputs:
  * SA-ECA is additive: ``x + ReLU1(BN(conv1x1(ReLU6(BN(dw3x3(x))))))`` instead of a sigmoid gate,
    and only in stages 2-4 by default (``model.sa_eca_stages``): every Add costs the converter an
    identity layer, and at 64x64 those of stage 1 alone push the model from 48 to 52 NPs, past the
    largest standard Akida 2.0 device (TwelveNodesIPv2, 48 NPs) in one hardware pass;
  * SE is additive: a 3x3 squeeze to C/16 and a 1x1 excite, added and clipped to [0, 1];
  * the spike transform has 128 channels, so the head reads 4x4x128 = 2048 values; over 64x64
    inputs its depthwise conv gets stride 2 (``head_stride``: 96x96 reads 3x3x128 = 1152).
``qana-paper`` keeps the paper's multiplicative gates and its 4x4x256 = 4096-input head; only its
prefix up to the first gate can run on Akida.
"""
from __future__ import annotations

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tf_keras as keras

from qana_keras import CLASSES
from qana_keras.config import ModelConfig
from qana_keras.models import blocks
from qana_keras.models.registry import (AKIDA_DENSE_INPUTS, MODEL_BUILDERS, build_model,  # noqa: F401 (public here too)
                                        check_head_inputs, register)

def _stem(config: ModelConfig, input_size: int):
    """Input uint8 pixels -> Rescaling -> stem conv, after checking the size fits one pool per stage."""
    if not config.widths:
        raise ValueError("model.widths must name at least one stage width")
    if input_size % (2 ** len(config.widths)):
        raise ValueError(f"input size {input_size} is not divisible by 2**{len(config.widths)} (one pool per stage)")
    inputs = keras.Input((input_size, input_size, 3), name="image", dtype="uint8")
    # The scale folds into the first Akida layer, which then reads raw 0..255 pixels.
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    return inputs, blocks.conv_bn_act(x, config.stem_filters, "stem")


def _backbone(config: ModelConfig, input_size: int, attention: str, attention_stages):
    """Input uint8 pixels -> Rescaling -> stem -> 4 QANA stages. Returns (inputs, features)."""
    inputs, x = _stem(config, input_size)
    for i, width in enumerate(config.widths, start=1):
        stage_attention = attention if i in attention_stages else "none"
        x = blocks.qana_stage(x, width, f"stage{i}", config.ghost_ratio, stage_attention)
    return inputs, x


@register("qana")
def build_qana(config: ModelConfig, input_size: int = 64, num_classes: int = len(CLASSES)) -> keras.Model:
    """Hardware-native QANA: every layer quantizes to 8 bits and maps on Akida 2.0."""
    inputs, x = _backbone(config, input_size, "additive", config.sa_eca_stages)
    x = blocks.spike_transform(x, config.head_channels, strides=head_stride(x.shape[1], config))
    if config.se:
        x = blocks.se_additive(x, "se", ratio=config.se_ratio)
    check_head_inputs(x, config)
    outputs = blocks.classifier_head(x, num_classes, config.dropout)
    return keras.Model(inputs, outputs, name="qana")


def head_stride(side: int, config: ModelConfig) -> int:
    """Stride of the spike transform's depthwise conv for a ``side`` x ``side`` backbone output.

    1 unless the head would read more than 2048 values *and* the map is larger than
    ``model.head_grid`` (4: the 64x64 reference); then 2, which halves the map (96x96 input:
    6x6x128 = 4608 -> 3x3x128 = 1152). A max-pool cannot do this on Akida: a pooled layer must feed a
    convolution, not the SE Add or the dense head. Channels are never changed automatically, so
    a too wide ``head_channels`` at 64x64 is still refused by ``check_head_inputs``.
    """
    if side * side * config.head_channels > AKIDA_DENSE_INPUTS and side > config.head_grid:
        return 2
    return 1


@register("qana-paper")
def build_qana_paper(config: ModelConfig, input_size: int = 64, num_classes: int = len(CLASSES)) -> keras.Model:
    """The paper's QANA: sigmoid-gated SA-ECA and SE, 256-channel spike transform (4096-input head)."""
    inputs, x = _backbone(config, input_size, "gated", range(1, len(config.widths) + 1))
    x = blocks.spike_transform(x, config.widths[-1])
    x = blocks.se_gated(x, "se", ratio=config.se_ratio)
    outputs = blocks.classifier_head(x, num_classes, config.dropout)
    return keras.Model(inputs, outputs, name="qana_paper")


SPIKE_LAYER = "spike/relu"
"""The 1-bit spike layer of ``qana-akd1000``: its binary output is what Akida 1.0 on-chip learning reads."""


@register("qana-akd1000")
def build_qana_akd1000(config: ModelConfig, input_size: int = 64, num_classes: int = len(CLASSES)) -> keras.Model:
    """The closest QANA that runs on Akida 1.0 (AKD1000) and learns on the chip.

    Akida 1.0 has no Add, Concatenate or unfused depthwise conv, so the Ghost blocks, residuals and
    the additive SA-ECA/SE of ``qana`` are gone: stem conv, then per stage one fused separable conv
    3x3 -> max-pool -> BN -> ReLU6 (same widths), then the spike transform as a fused separable conv
    -> BN -> ReLU1 quantized to **1 bit** (``SPIKE_LAYER``) and a Flatten -> Dense head for training.
    On the chip that head is replaced by an ``akida.FullyConnected`` layer trained with
    ``AkidaUnsupervised`` (qana_keras.onchip.edge). Quantized to 4 bits (8-bit first layer); the default
    widths map on ``akida.AKD1000()`` in one hardware pass (74 of 78 NPs at 64x64).
    """
    inputs, x = _stem(config, input_size)
    for i, width in enumerate(config.widths, start=1):
        x = blocks.separable_bn_act(x, width, f"stage{i}")
    x = blocks.separable_bn_act(x, config.widths[-1], SPIKE_LAYER.split("/")[0], pool=False, max_value=1.0)
    outputs = blocks.classifier_head(x, num_classes, config.dropout)
    return keras.Model(inputs, outputs, name="qana_akd1000")
