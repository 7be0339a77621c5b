"""One dataclass per pipeline stage, loaded from YAML and overridable from the command line.

A run folder keeps the exact config it was made with (``config.yaml``), so every figure can be
traced back to its settings.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from qana_keras.io import REPO_ROOT, atomic_write_text


def default_data_dir() -> str:
    """HAM10000 root: ``QANA_DATA_DIR`` if set, else ``data/ham10000`` in the repository."""
    return os.environ.get("QANA_DATA_DIR", str(REPO_ROOT / "data" / "ham10000"))


def source_folder(folder: str) -> str:
    """An ``extra_sources`` entry with its environment variables expanded; an unset one is an error (checked when
    the source is read, so a recorded config still loads where the variable is not set)."""
    expanded = os.path.expandvars(folder)
    if "$" in expanded:
        raise ConfigError(f"data.extra_sources: {folder} names an unset environment variable; set it (e.g. export "
                          "QANA_ISIC2019_DIR=/path/to/isic2019) or give the folder")
    return expanded


def source_name(folder: str) -> str:
    """The name an extra source's validation split goes by: its folder name (``val_isic2019_partial``)."""
    return Path(os.path.expandvars(folder)).expanduser().name


@dataclass
class DataConfig:
    data_dir: str = field(default_factory=default_data_dir)
    split_file: str = str(REPO_ROOT / "data" / "splits" / "ham10000_lesion_split.csv")
    cache_dir: str = field(default_factory=lambda: os.environ.get("QANA_CACHE_DIR", str(REPO_ROOT / "cache")))
    image_size: int = 64
    split_seed: int = 42
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # Lesion crops (qana_keras.crop): none = whole frame; saliency = a square crop around the class-activation
    # map of crop_model (a whole-image model, .h5 or .fbz); mask = around the official lesion mask (oracle).
    crop: str = "none"
    crop_model: str = ""
    crop_saliency: str = "head"  # head: forward-only map (runs from the Akida feature map); gradcam: float .h5 only
    crop_threshold: float = 0.5  # salient where the map is above this fraction of its range
    crop_margin: float = 0.15  # added on each side of the salient box, as a fraction of its longer side
    mask_dir: str = ""  # crop=mask: the official masks; "" = <data_dir>/HAM10000_segmentations_lesion_tschandl
    # A class subset (names from CLASSES, in output order) drops the other classes' images from every split:
    # a backbone that has never seen them, for the class-incremental protocol of `qana learn`. () = all 7.
    classes: tuple[str, ...] = ()
    # Extra training sources in the ISIC 2019 training layout (folders; $VARS expanded, e.g. $QANA_ISIC2019_DIR).
    # Their lesions split by hash into train and a per-source validation set (val_<folder name>); never test.
    extra_sources: tuple[str, ...] = ()


@dataclass
class ModelConfig:
    variant: str = "qana"
    widths: tuple[int, ...] = (32, 64, 128, 256)
    stem_filters: int = 32
    ghost_ratio: float = 0.5  # fraction of a Ghost block's channels made by the primary conv
    sa_eca_stages: tuple[int, ...] = (2, 3, 4)  # stages with SA-ECA; stage 1 too costs 4 NPs over one pass
    se: bool = True
    se_ratio: int = 16  # squeeze-and-excitation bottleneck
    head_channels: int = 128  # spike-transform width; 4x4x128 = 2048 = the hardware dense-layer limit
    # If the head would read > 2048 values from a map larger than head_grid x head_grid (inputs over 64),
    # the spike transform strides by 2 (96x96: 6x6x128 = 4608 -> 3x3x128 = 1152); see models.qana.head_stride.
    head_grid: int = 4
    dropout: float = 0.1
    # Pretrained variants (lite0-b*): start from the ImageNet weights; false = the same network from random weights.
    pretrained: bool = True


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 5e-5
    warmup_epochs: int = 2
    label_smoothing: float = 0.0
    loss: str = "cross_entropy"  # cross_entropy | balanced_softmax | ldam (qana_keras.training.losses)
    ldam_margin: float = 0.5  # train.loss=ldam: the rarest class's margin, in logits
    class_weighting: str = "sqrt"  # none | balanced | sqrt (square root of the balanced weights)
    balanced_sampling: bool = False
    augment_flips: bool = True
    augment_rot90: bool = True
    augment_color: float = 0.1  # brightness/contrast/saturation jitter amplitude; 0 disables
    augment_zoom: float = 0.1  # random crop-and-resize up to this fraction; 0 disables
    # Per-channel gain in [1 - a, 1 + a] (a white-balance shift: other cameras and illuminants); 0 disables.
    augment_channel_gain: float = 0.0
    seed: int = 0
    # Fine-tuning: start from the weights of this float model (.h5 of the same variant and input size) instead
    # of a random initialisation; "" = from scratch.
    init_from: str = ""
    # Pretrained variants: start the backbone (layers under lite0/) from this float model instead of ImageNet, e.g. a
    # deeper cut fine-tuned on skin lesions at another input size; the head starts from scratch. "" = ImageNet.
    init_backbone_from: str = ""
    # Distillation: a teacher-ensemble target file (qana_keras.training.distill; scripts/teacher_targets.py) and the
    # weight of its probabilities in the training target; "" = train on the labels alone.
    soft_targets: str = ""
    soft_target_weight: float = 0.5
    # Pretrained backbones: their layers (qana_keras.models.pretrained.PREFIX) learn at this fraction of the rate.
    backbone_lr_scale: float = 1.0
    # Weight averaging (qana_keras.training.averaging): validate, select and save an exponential moving average
    # of the weights with this decay per batch; 0 = the trained weights themselves.
    ema_decay: float = 0.0
    # Which validation epoch is kept: ``val_macro_f1`` (HAM10000 validation macro-F1) or ``source_mean``: the
    # mean of that and each extra source's validation balanced accuracy (qana_keras.training.train.selection_score).
    selection: str = "val_macro_f1"
    # Batch mixing (qana_keras.data.pipeline.mix_batch): ``mixup`` blends two images and their targets,
    # ``cutmix`` pastes a box of one into the other; the share comes from Beta(mix_alpha, mix_alpha).
    mix: str = "none"  # none | mixup | cutmix
    mix_alpha: float = 0.2
    max_images: int = 0  # 0 = all; > 0 keeps a class-stratified subset per split (quick profile)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message names the key, the value and what is allowed."""


# Allowed values of the settings that need more than their type: (check, what is allowed). Settings not
# listed accept any value of their annotated type.
def _at_least(low):
    return (lambda v: v >= low), f"a number >= {low}"


def _between(low, high, high_open=False):
    if high_open:
        return (lambda v: low <= v < high), f"a number in [{low}, {high})"
    return (lambda v: low <= v <= high), f"a number in [{low}, {high}]"


def _one_of(*names):
    return (lambda v: v in names), "one of " + ", ".join(names)


def _all_at_least(low):
    return (lambda v: all(x >= low for x in v)), f"a list of integers >= {low}"


RULES = {
    "data.image_size": _at_least(8),
    "data.val_fraction": _between(0.0, 1.0, high_open=True),
    "data.test_fraction": _between(0.0, 1.0, high_open=True),
    "data.crop": _one_of("none", "saliency", "mask"),
    "data.crop_saliency": _one_of("head", "gradcam"),
    "data.crop_threshold": _between(0.0, 1.0),
    "data.crop_margin": _at_least(0.0),
    "model.widths": ((lambda v: len(v) > 0 and all(x >= 1 for x in v)), "a non-empty list of integers >= 1"),
    "model.stem_filters": _at_least(1),
    "model.ghost_ratio": ((lambda v: 0.0 < v <= 1.0), "a number in (0, 1]"),
    "model.sa_eca_stages": _all_at_least(1),
    "model.se_ratio": _at_least(1),
    "model.head_channels": _at_least(1),
    "model.head_grid": _at_least(1),
    "model.dropout": _between(0.0, 1.0, high_open=True),
    "train.epochs": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.learning_rate": ((lambda v: v > 0), "a number > 0"),
    "train.weight_decay": _at_least(0.0),
    "train.warmup_epochs": _at_least(0),
    "train.label_smoothing": _between(0.0, 1.0, high_open=True),
    "train.class_weighting": _one_of("none", "balanced", "sqrt"),
    "train.loss": _one_of("cross_entropy", "balanced_softmax", "ldam"),
    "train.ldam_margin": ((lambda v: v > 0), "a number > 0"),
    "train.augment_color": _at_least(0.0),
    "train.augment_zoom": _between(0.0, 1.0, high_open=True),
    "train.augment_channel_gain": _between(0.0, 1.0, high_open=True),
    "train.soft_target_weight": _between(0.0, 1.0),
    "train.max_images": _at_least(0),
    "train.backbone_lr_scale": _between(0.0, 1.0),
    "train.ema_decay": _between(0.0, 1.0, high_open=True),
    "train.mix": _one_of("none", "mixup", "cutmix"),
    "train.selection": _one_of("val_macro_f1", "source_mean"),
    "train.mix_alpha": ((lambda v: v > 0), "a number > 0"),
}

_YAML_EXPONENT = re.compile(r"^[-+]?\d+(\.\d*)?[eE][-+]?\d+$")
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _field_types(section) -> dict:
    """The annotated type of every field of a config section (resolved from the dataclass annotations)."""
    return typing.get_type_hints(type(section))


def _element_type(annotation):
    """``int`` for ``tuple[int, ...]``; None when ``annotation`` is not a tuple type."""
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0]
    return None


def _typed(value, kind, key: str, where: str):
    """``value`` as ``kind`` (bool/int/float/str), refusing anything else; ints are accepted as floats."""
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(kind, lambda v: True)
    if kind is float and isinstance(value, str) and _YAML_EXPONENT.match(value):
        return float(value)  # PyYAML (YAML 1.1) reads an unquoted 2e-3 as a string, not a number
    if not ok(value):
        hint = " (quoted in YAML: write it without quotes)" if isinstance(value, str) else ""
        raise ConfigError(f"{where}: {key}={value!r} is not {_TYPE_NAMES.get(kind, kind)}{hint}")
    return float(value) if kind is float else value


def _check_value(section_name: str, key: str, value, annotation, where: str):
    """Type-check a value read from YAML (or set in code) against the field's annotation; returns it normalised."""
    dotted = f"{section_name}.{key}"
    element = _element_type(annotation)
    if element is None:
        return _typed(value, annotation, dotted, where)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: {dotted}={value!r} is not a list; write a list of {_TYPE_NAMES[element]}s "
                          f"like [{'8, 16' if element is int else 'a, b'}]")
    return tuple(_typed(v, element, dotted, where) for v in value)


def _parse_scalar(text: str, kind, key: str, where: str):
    """Parse one command-line string as ``kind``."""
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: {key}={text!r}: expected a boolean (true/false)")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{where}: {key}={text!r} is not {_TYPE_NAMES.get(kind, kind)}") from None


def _coerce(text: str, annotation, key: str, where: str):
    """Parse a command-line string into the annotated type of the field it overrides."""
    element = _element_type(annotation)
    if element is None:
        return _parse_scalar(text, annotation, key, where)
    items = [v.strip() for v in text.strip().strip("[]()").split(",") if v.strip()]  # '' or '[]' -> ()
    return tuple(_parse_scalar(v, element, key, where) for v in items)


def validate_config(config: Config, origins: dict | None = None) -> Config:
    """Check every value of ``config`` against its type and allowed range; raise ConfigError naming the first bad one.

    ``origins`` maps ``section.key`` to where the value came from (a file or an override), for the message.
    """
    origins = origins or {}
    for section_name in ("data", "model", "train"):
        section = getattr(config, section_name)
        for key, annotation in _field_types(section).items():
            dotted = f"{section_name}.{key}"
            where = origins.get(dotted, "config")
            value = _check_value(section_name, key, getattr(section, key), annotation, where)
            setattr(section, key, value)
            rule = RULES.get(dotted)
            if rule and not rule[0](value):
                raise ConfigError(f"{where}: {dotted}={value!r} is out of range; allowed: {rule[1]}")
    d = config.data
    names = [source_name(folder) for folder in d.extra_sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"{origins.get('data.extra_sources', 'config')}: data.extra_sources: two sources share a "
                          f"folder name ({', '.join(names)}); their validation splits are named after it: rename one")
    if d.extra_sources and d.crop != "none":
        raise ConfigError(f"{origins.get('data.extra_sources', 'config')}: data.extra_sources works with data.crop=none "
                          f"only (extra sources have no lesion crops); got data.crop={d.crop}")
    if d.val_fraction + d.test_fraction >= 1.0:
        raise ConfigError(f"{origins.get('data.val_fraction', 'config')}: data.val_fraction + data.test_fraction = "
                          f"{d.val_fraction + d.test_fraction:g}; allowed: below 1 (training needs images)")
    return config


def _read_yaml(path: str | Path) -> dict:
    """The YAML mapping at ``path``; a syntax error or a non-mapping names the file (and the line)."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}{line}: YAML syntax error ({problem}); fix the file") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read ({error.strerror or error})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data:, model:, train:), got a "
                          f"{type(raw).__name__}")
    return raw


def _update(section, section_name: str, values, where: str, origins: dict) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: section {section_name!r} must be a mapping of key: value, got {values!r}")
    types = _field_types(section)
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"{where}: unknown setting {key!r}; known: {sorted(types)}")
        setattr(section, key, _check_value(section_name, key, value, types[key], where))
        origins[f"{section_name}.{key}"] = where


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides; validated as a whole.

    Raises ConfigError (a ValueError) naming the file or override, the key, the bad value and what is allowed.
    """
    config = Config()
    origins: dict[str, str] = {}
    if path:
        for section_name, values in _read_yaml(path).items():
            if section_name not in ("data", "model", "train"):
                raise ConfigError(f"{path}: unknown section {section_name!r}; known: data, model, train")
            _update(getattr(config, section_name), section_name, values or {}, f"{path} [{section_name}]", origins)
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.epochs=5")
        dotted, value = item.split("=", 1)
        section_name, key = dotted.split(".", 1)
        section = getattr(config, section_name, None) if section_name in ("data", "model", "train") else None
        if section is None or key not in _field_types(section):
            raise ConfigError(f"override {item!r}: no setting {dotted!r}")
        setattr(section, key, _coerce(value, _field_types(section)[key], dotted, f"override {item!r}"))
        origins[dotted] = f"override {item!r}"
    return validate_config(config, origins)
