"""Issue 28, data/config/run-folder half: bad input gives a one-line error naming the culprit, never a wrong
result, a traceback or lost files. Every fixture is made on the fly."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures import blob_image, write_ham10000_fixture
from PIL import Image

from qana_keras.cli import main
from qana_keras.config import ConfigError, load_config

# ---------------------------------------------------------------------------------------------------
# Config values: type- and range-checked at load, every error names the key, the value and what is allowed


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", r"train.epochs=0 is out of range; allowed: a number >= 1"),
    ("train.epochs=-2", r"train.epochs=-2 is out of range"),
    ("train.epochs=abc", r"train.epochs='abc' is not an integer"),
    ("train.batch_size=0", r"train.batch_size=0 is out of range"),
    ("train.batch_size=-4", r"train.batch_size=-4 is out of range"),
    ("data.image_size=0", r"data.image_size=0 is out of range"),
    ("model.widths=a,b", r"model.widths='a' is not an integer"),
    ("train.class_weighting=inverse", r"train.class_weighting='inverse' is out of range; allowed: one of none, "
                                      r"balanced, sqrt"),
    ("data.crop=center", r"data.crop='center' is out of range; allowed: one of none, saliency, mask"),
    ("train.learning_rate=0", r"train.learning_rate=0.0 is out of range"),
])
def test_bad_override_names_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(None, [override])
    assert f"override {override!r}" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("model:\n  widths: 32\n", r"\[model\]: model.widths=32 is not a list"),
    ("train:\n  epochs: \"2\"\n", r"\[train\]: train.epochs='2' is not an integer \(quoted in YAML"),
    ("train:\n  epochs: 0\n", r"\[train\]: train.epochs=0 is out of range"),
    ("- train\n- model\n", r"expected a mapping of sections .* got a list"),
    ("train: 5\n", r"section 'train' must be a mapping"),
    ("train:\n  augment_flips: 1\n", r"train.augment_flips=1 is not true or false"),
])
def test_bad_yaml_value_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: [8\n  seed: 1\n")
    with pytest.raises(ConfigError, match=rf"{path} line \d+: YAML syntax error"):
        load_config(path)


def test_yaml_exponent_is_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 2e-3\n")  # PyYAML reads this as a string
    assert load_config(path).train.learning_rate == pytest.approx(2e-3)


def test_cli_reports_a_bad_value_in_one_line(tmp_path, capsys):
    assert main(["train", "--run", str(tmp_path / "run"), "--set", "train.epochs=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.epochs=0" in err and "\n" not in err
    assert not (tmp_path / "run").exists()
