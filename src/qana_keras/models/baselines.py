"""Baselines for the ablation table, registered beside QANA so ``--set model.variant=NAME`` picks them.

Every baseline takes the same input as QANA (uint8 RGB, ``Rescaling(1/255)`` folded into the first
Akida layer, so the Akida model reads raw 0..255 pixels), outputs 7 logits, trains from scratch
with the same recipe, and is hardware-native on Akida 2.0 (8-bit, one dense layer <= 2048 inputs).

``akidanet-0.25``, ``akidanet-0.5``
    BrainChip's AkidaNet (``akida_models.akidanet_imagenet``, the ImageNet topology: 4 convs and 10
    separable convs, global average pooling, dense) at width ``alpha``. Needs the ``baselines``
    extra (``pip install -e '.[baselines]'``). It takes ``input_scaling=(255, 0)`` instead of its
    default ``(128, -1)``: an offset cannot fold into the input convolution (Akida needs zero padding
    value), and 1/255 is QANA's convention. Its own dropout (1e-3) and L2 (4e-5) are kept; the
    ``model.*`` widths, SE and SA-ECA settings do not apply to it.
``plain-cnn``
    One Conv3x3-BN-ReLU6-MaxPool stage per ``model.widths`` entry, a 1x1 Conv-BN-ReLU6 projection to
    ``model.head_channels``, then QANA's head (Flatten, Dropout, Dense): at the default widths and
    64x64, 4x4x128 = 2048 head inputs and about as many parameters as QANA (larger inputs are refused).
"""
from __future__ import annotations

from qana_keras import CLASSES
from qana_keras.config import ModelConfig
import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tf_keras as keras

from qana_keras.models import blocks
from qana_keras.models.registry import check_head_inputs, register

AKIDANET_ALPHAS = {"akidanet-0.25": 0.25, "akidanet-0.5": 0.5}


def _akidanet_builder():
    try:
        from akida_models import akidanet_imagenet
    except ImportError as error:
        raise ImportError(f"the AkidaNet baselines need akida-models ({error}); install the baselines extra: "
                          "pip install -e '.[baselines]' (akida-models==1.14.2, matching akida 2.19.3)") from error
    return akidanet_imagenet


def build_akidanet(config: ModelConfig, input_size: int = 64, num_classes: int = len(CLASSES),
                   alpha: float = 0.25) -> keras.Model:
    """AkidaNet from akida-models at ``alpha``, uint8 input scaled by 1/255, ``num_classes`` logits."""
    akidanet_imagenet = _akidanet_builder()
    if input_size % 32:
        raise ValueError(f"AkidaNet downsamples by 32: input size {input_size} must be a multiple of 32")
    return akidanet_imagenet(input_shape=(input_size, input_size, 3), alpha=alpha, include_top=True,
                             classes=num_classes, input_scaling=(255, 0))


for _name, _alpha in AKIDANET_ALPHAS.items():
    register(_name)(lambda config, input_size=64, num_classes=len(CLASSES), _alpha=_alpha:
                    build_akidanet(config, input_size, num_classes, alpha=_alpha))


@register("plain-cnn-v1")  # the same network, converted for Akida 1.0 (AKD1000, AKD1500) at 4 bits
@register("plain-cnn")
def build_plain_cnn(config: ModelConfig, input_size: int = 64, num_classes: int = len(CLASSES)) -> keras.Model:
    """Plain CNN: Conv-BN-ReLU6-MaxPool per width, 1x1 projection to ``head_channels``, Flatten -> Dense."""
    if not config.widths:
        raise ValueError("model.widths must name at least one stage width")
    if input_size % (2 ** len(config.widths)):
        raise ValueError(f"input size {input_size} is not divisible by 2**{len(config.widths)} (one pool per stage)")
    inputs = keras.Input((input_size, input_size, 3), name="image", dtype="uint8")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, width in enumerate(config.widths, start=1):
        x = blocks.plain_stage(x, width, f"stage{i}")
    x = blocks.conv_bn_act(x, config.head_channels, "project", kernel_size=1)
    check_head_inputs(x, config)
    outputs = blocks.classifier_head(x, num_classes, config.dropout)
    return keras.Model(inputs, outputs, name="plain_cnn")
