"""One dataclass per pipeline stage, loaded from YAML and overridable from the command line.

A run folder keeps the exact config it was made with (``config.yaml``), so every figure can be
traced back to its settings.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> str:
    """HAM10000 root: ``QANA_DATA_DIR`` if set, else ``data/ham10000`` in the repository."""
    return os.environ.get("QANA_DATA_DIR", str(REPO_ROOT / "data" / "ham10000"))


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
    class_weighting: str = "sqrt"  # none | balanced | sqrt (square root of the balanced weights)
    balanced_sampling: bool = False
    augment_flips: bool = True
    augment_rot90: bool = True
    augment_color: float = 0.1  # brightness/contrast/saturation jitter amplitude; 0 disables
    augment_zoom: float = 0.1  # random crop-and-resize up to this fraction; 0 disables
    seed: int = 0
    # Fine-tuning: start from the weights of this float model (.h5 of the same variant and input size) instead
    # of a random initialisation; "" = from scratch.
    init_from: str = ""
    # Distillation: a teacher-ensemble target file (qana_keras.distill; scripts/teacher_targets.py) and the
    # weight of its probabilities in the training target; "" = train on the labels alone.
    soft_targets: str = ""
    soft_target_weight: float = 0.5
    # Pretrained backbones: their layers (qana_keras.models.pretrained.PREFIX) learn at this fraction of the rate.
    backbone_lr_scale: float = 1.0
    max_images: int = 0  # 0 = all; > 0 keeps a class-stratified subset per split (quick profile)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from qana_keras.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _coerce(value: str, current):
    """Parse a command-line string into the type of the field it overrides."""
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if isinstance(current, tuple):
        items = [v.strip() for v in value.strip().strip("[]()").split(",") if v.strip()]  # '' or '[]' -> ()
        return tuple(int(v) if v.lstrip("-").isdigit() else v for v in items)
    if current is None:
        return value
    return type(current)(value)


def _update(section, values: dict, where: str) -> None:
    known = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{where}: unknown setting {key!r}; known: {sorted(known)}")
        current = getattr(section, key)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        setattr(section, key, value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides."""
    config = Config()
    if path:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        for section_name, values in raw.items():
            if not hasattr(config, section_name):
                raise ValueError(f"{path}: unknown section {section_name!r}; known: data, model, train")
            _update(getattr(config, section_name), values or {}, f"{path} [{section_name}]")
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r}: expected section.key=value, e.g. train.epochs=5")
        dotted, value = item.split("=", 1)
        section_name, key = dotted.split(".", 1)
        section = getattr(config, section_name, None)
        if section is None or not hasattr(section, key):
            raise ValueError(f"override {item!r}: no setting {dotted!r}")
        setattr(section, key, _coerce(value, getattr(section, key)))
    return config
