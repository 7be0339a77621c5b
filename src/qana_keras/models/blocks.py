"""QANA building blocks: each a small function that adds named tf_keras layers to a graph.

Every block is written for Akida 2.0 (cnn2snn ``IpVersion.v2``): convolutions are followed by
BatchNormalization (folded into the conv at quantization) and a bounded ReLU, BN never follows a
Concatenate or an Add (that makes the converter stop silently), max-pooling uses ``padding="same"``
and never follows an Add directly. The ``*_gated`` blocks are the paper's multiplicative sigmoid
forms; they do not run on Akida and exist only for the ``qana-paper`` comparison.
"""
from __future__ import annotations

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tf_keras as keras

layers = keras.layers


def conv_bn_act(x, filters: int, name: str, kernel_size: int = 3, strides: int = 1, max_value: float | None = 6.0):
    """Conv2D -> BN -> bounded ReLU: one Akida convolutional layer."""
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}/conv")(x)
    x = layers.BatchNormalization(name=f"{name}/BN")(x)
    if max_value is not None:
        x = layers.ReLU(max_value=max_value, name=f"{name}/relu")(x)
    return x


def depthwise_bn_act(x, name: str, max_value: float | None = 6.0, strides: int = 1):
    """DepthwiseConv2D 3x3 -> BN -> bounded ReLU: one Akida depthwise layer."""
    x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}/dw")(x)
    x = layers.BatchNormalization(name=f"{name}/BN")(x)
    if max_value is not None:
        x = layers.ReLU(max_value=max_value, name=f"{name}/relu")(x)
    return x


def ghost_block(x, filters: int, name: str, ratio: float = 0.5):
    """Ghost module: a primary conv makes ``ratio`` of the channels, a cheap depthwise conv the rest.

    Each branch carries its own BN and ReLU6 because a BN after the Concatenate would not fold.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"{name}: ghost ratio must be in (0, 1), got {ratio}")
    primary_filters = max(1, int(round(filters * ratio)))
    cheap_filters = filters - primary_filters
    if cheap_filters > primary_filters:
        raise ValueError(f"{name}: ratio {ratio} needs {cheap_filters} cheap channels from {primary_filters} primary "
                         "ones; a depthwise conv cannot make more channels than it reads (use ratio >= 0.5)")
    primary = conv_bn_act(x, primary_filters, f"{name}/primary")
    cheap = depthwise_bn_act(primary, f"{name}/cheap")
    if cheap_filters < primary_filters:
        # Keep only as many cheap maps as needed: a 1x1 conv selects/mixes them on hardware.
        cheap = conv_bn_act(cheap, cheap_filters, f"{name}/cheap_select", kernel_size=1)
    return layers.Concatenate(name=f"{name}/concat")([primary, cheap])


def sa_eca_additive(x, name: str):
    """Spatial efficient channel attention, additive form (runs on Akida).

    The paper gates ``x * sigmoid(proj(dw(x)))``; Akida has no Multiply or sigmoid. This keeps the
    same spatial aggregation (depthwise 3x3) and channel projection (1x1), but adds a bounded
    refinement ``ReLU1(BN(proj))`` to ``x`` instead of multiplying, so channels are still
    re-weighted per location, with integer-only layers.
    """
    channels = x.shape[-1]
    r = depthwise_bn_act(x, f"{name}/spatial")
    r = conv_bn_act(r, channels, f"{name}/proj", kernel_size=1, max_value=1.0)
    return layers.Add(name=f"{name}/add")([x, r])


def sa_eca_gated(x, name: str):
    """The paper's SA-ECA: depthwise spatial aggregation and 1x1 projection, then a sigmoid gate."""
    channels = x.shape[-1]
    g = layers.DepthwiseConv2D(3, padding="same", name=f"{name}/spatial/dw")(x)
    g = layers.Conv2D(channels, 1, name=f"{name}/proj/conv")(g)
    g = layers.Activation("sigmoid", name=f"{name}/sigmoid")(g)
    return layers.Multiply(name=f"{name}/gate")([x, g])


def qana_stage(x, filters: int, name: str, ghost_ratio: float, attention: str):
    """Ghost -> (BN, ReLU6 inside) -> SA-ECA -> residual -> ReLU6 -> max-pool 2x2."""
    if x.shape[-1] == filters:
        shortcut = x
    else:
        shortcut = conv_bn_act(x, filters, f"{name}/shortcut", kernel_size=1, max_value=None)
    y = ghost_block(x, filters, f"{name}/ghost", ratio=ghost_ratio)
    if attention == "additive":
        y = sa_eca_additive(y, f"{name}/sa_eca")
    elif attention == "gated":
        y = sa_eca_gated(y, f"{name}/sa_eca")
    elif attention != "none":
        raise ValueError(f"{name}: unknown attention {attention!r} (additive, gated, none)")
    y = layers.Add(name=f"{name}/residual")([y, shortcut])
    # Akida cannot pool straight after an Add; the ReLU6 makes Add -> ReLU -> MaxPool, which maps.
    y = layers.ReLU(max_value=6.0, name=f"{name}/relu")(y)
    return layers.MaxPool2D(2, padding="same", name=f"{name}/pool")(y)


def spike_transform(x, filters: int, name: str = "spike", strides: int = 1):
    """Separable conv 3x3 (depthwise + pointwise, unfused for Akida 2.0) -> BN -> clip to [0, 1].

    ``strides=2`` halves the map in the depthwise conv (how QANA fits inputs over 64x64 in the head).
    """
    x = depthwise_bn_act(x, f"{name}/dw", max_value=None, strides=strides)
    return conv_bn_act(x, filters, f"{name}/pw", kernel_size=1, max_value=1.0)


def se_additive(x, name: str, ratio: int = 16):
    """Squeeze-and-excitation, additive form (runs on Akida).

    The paper squeezes by global pooling and gates with a sigmoid; Akida has no Multiply, and a
    broadcast of a pooled vector is not an Akida layer. Here a 3x3 conv squeezes the channels to
    ``C / ratio`` (with spatial context, which at 4x4 spans most of the map), a 1x1 conv excites
    them back, and the bounded result is added to ``x`` and clipped to [0, 1] again, so the
    output stays spike-compatible.
    """
    channels = x.shape[-1]
    s = conv_bn_act(x, max(1, channels // ratio), f"{name}/squeeze", kernel_size=3)
    s = conv_bn_act(s, channels, f"{name}/excite", kernel_size=1, max_value=1.0)
    y = layers.Add(name=f"{name}/add")([x, s])
    return layers.ReLU(max_value=1.0, name=f"{name}/relu")(y)


def se_gated(x, name: str, ratio: int = 16):
    """The paper's squeeze-and-excitation: global average pool, bottleneck MLP, sigmoid gate."""
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}/squeeze")(x)
    s = layers.Conv2D(max(1, channels // ratio), 1, activation="relu", name=f"{name}/reduce")(s)
    s = layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}/expand")(s)
    return layers.Multiply(name=f"{name}/gate")([x, s])


def separable_bn_act(x, filters: int, name: str, pool: bool = True, max_value: float = 6.0):
    """Fused SeparableConv2D 3x3 -> (max-pool 2x2) -> BN -> bounded ReLU: one Akida 1.0 layer.

    Akida 1.0 runs a separable conv only fused (Akida 2.0 only unfused), and pools inside the layer,
    before the BN (the order akida_models uses for v1 blocks).
    """
    x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}/sep")(x)
    if pool:
        x = layers.MaxPool2D(2, padding="same", name=f"{name}/pool")(x)
    x = layers.BatchNormalization(name=f"{name}/BN")(x)
    return layers.ReLU(max_value=max_value, name=f"{name}/relu")(x)


def plain_stage(x, filters: int, name: str):
    """Conv 3x3 -> BN -> ReLU6 -> max-pool 2x2: one stage of the plain CNN baseline (one Akida layer)."""
    x = conv_bn_act(x, filters, name)
    return layers.MaxPool2D(2, padding="same", name=f"{name}/pool")(x)


def classifier_head(x, num_classes: int, dropout: float, name: str = "head"):
    """Flatten -> Dense: the quantization-aware linear readout (logits, no softmax)."""
    x = layers.Flatten(name=f"{name}/flatten")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}/dropout")(x)
    return layers.Dense(num_classes, name=f"{name}/dense")(x)
