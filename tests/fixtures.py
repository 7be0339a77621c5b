"""Test helpers: the synthetic data sets of ``qana_keras.data.synthetic``, a tiny QANA, a run folder on a fixture.

Import with ``from fixtures import write_ham10000_fixture``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from qana_keras.data.synthetic import (CLASS_COLORS, PAD_COLUMNS, blob_image, write_ham10000_fixture,  # noqa: F401
                                       write_isic2018_fixture, write_isic2019_fixture, write_pad_ufes_fixture)

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """The real HAM10000 copy: QANA_DATA_DIR, else shared/data/ham10000 beside the repository (as CI lays
    it out), else /work/shared/data/ham10000; None when none has the metadata CSV."""
    for c in (os.environ.get("QANA_DATA_DIR"), REPO.parent / "shared" / "data" / "ham10000",
              "/work/shared/data/ham10000"):
        if c and (Path(c) / "HAM10000_metadata.csv").is_file():
            return Path(c)
    return None


# Widths of a QANA that builds, quantizes and converts in seconds.
TINY_QANA = dict(widths=(8, 16), stem_filters=8, head_channels=8, sa_eca_stages=(2,), se_ratio=4)


def write_run_fixture(root: Path, n_lesions_per_class: int, size: tuple[int, int], image_size: int,
                      folder: str = "run"):
    """HAM10000 fixture + lesion split + ``root/folder/config.yaml`` for a tiny QANA: (folder, config, data_dir)."""
    from qana_keras.config import Config, ModelConfig
    from qana_keras.data import ham10000, splits

    data_dir = write_ham10000_fixture(root / "ham", n_lesions_per_class=n_lesions_per_class,
                                      images_per_lesion=(1, 2), size=size)
    split_file = root / "split.csv"
    splits.write_split(splits.make_lesion_split(ham10000.load_metadata(data_dir), seed=1), split_file)
    config = Config()
    config.data.data_dir, config.data.split_file = str(data_dir), str(split_file)
    config.data.cache_dir, config.data.image_size = str(root / "cache"), image_size
    config.model = ModelConfig(**TINY_QANA)
    run = root / folder
    run.mkdir()
    config.save(run / "config.yaml")
    return run, config, data_dir


QUIET = dict(log=lambda *_: None)


def tiny_model(variant: str = "qana", size: int = 16):
    """An untrained tiny-width model of ``variant`` at ``size`` x ``size``."""
    from qana_keras.config import ModelConfig
    from qana_keras.models.qana import build_model

    return build_model(ModelConfig(variant=variant, **TINY_QANA), input_size=size)


def random_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
