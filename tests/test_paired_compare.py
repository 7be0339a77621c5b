"""scripts/paired_compare.py refuses what it cannot score right: lesion-crop models and models of other classes."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures import random_images, tiny_model

from qana_keras.data.dataset import SplitData

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("paired_compare", REPO / "scripts" / "paired_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _folder(tmp_path: Path, name: str, data_lines: str, classes: int = 7) -> Path:
    import tf_keras as keras

    folder = tmp_path / name
    folder.mkdir()
    model = tiny_model(size=16)
    if classes != 7:  # the same body with a head of another width
        model = keras.Model(model.input, keras.layers.Dense(classes)(model.layers[-2].output))
    model.save(folder / "qana_float.h5")
    (folder / "config.yaml").write_text(f"data:\n  image_size: 16\n{data_lines}")
    return folder / "qana_float.h5"


def test_a_crop_model_and_a_five_class_model_are_one_line_errors(tmp_path):
    script = _script()
    frame = pd.DataFrame({"lesion_id": [f"L{i}" for i in range(4)]})
    data = {size: {"train": None, "val": SplitData(random_images(4), np.arange(4), frame)} for size in (16,)}
    crop = _folder(tmp_path, "crop", "  crop: mask\n")
    with pytest.raises(ValueError, match=r"crop/qana_float.h5 was trained on lesion crops \(data.crop=mask\)"):
        script.predictions(str(crop), 1, (), data)
    five = _folder(tmp_path, "five", "", classes=5)
    with pytest.raises(ValueError, match=r"five/qana_float.h5 outputs 5 values per image, not the 7 classes"):
        script.predictions(str(five), 1, (), data)
    whole = _folder(tmp_path, "whole", "")
    out, _ = script.predictions(str(whole), 1, (), data)
    assert out["val"].shape == (4,) and set(out) == {"val"}
