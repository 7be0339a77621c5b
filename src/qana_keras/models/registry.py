"""The model registry: every variant registers its builder under a name, so a config string picks one.

The variant modules (``qana``, ``baselines``, ``pretrained``) register themselves when ``qana_keras.models`` is
imported; this module imports none of them, so there is no import cycle.
"""
from __future__ import annotations

from typing import Callable

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tf_keras as keras

from qana_keras import CLASSES
from qana_keras.config import ModelConfig

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


AKIDA_DENSE_INPUTS = 2048
"""A hardware Akida 2.0 dense layer (FNP) reads at most this many values: 4x4x256 = 4096 does not map."""


def check_head_inputs(x, config: ModelConfig) -> None:
    """Refuse a head whose Flatten -> Dense would read more values than one Akida hardware dense layer."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    if h * w * c > AKIDA_DENSE_INPUTS:
        fit = AKIDA_DENSE_INPUTS // (h * w)
        raise ValueError(f"head reads {h}x{w}x{c} = {h * w * c} values, over the {AKIDA_DENSE_INPUTS} inputs of an Akida "
                         f"hardware dense layer: lower model.head_channels (at most {fit} on a {h}x{w} map) or "
                         f"the input size (a map over model.head_grid={config.head_grid} is halved once by a stride-2 "
                         "depthwise conv, never more)")
