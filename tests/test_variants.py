"""Ablations and baselines: config switches, resolution-adaptive head, MAC counting, hardware cost, ablation rows.

The conversion/mapping and end-to-end tests are slow (quantizeml + cnn2snn + akida mapping, training on
the synthetic fixture): ``pytest -m slow tests/test_variants.py``.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_ham10000_fixture

import qana_keras  # noqa: F401
from qana_keras.evaluation import hardware_cost
from qana_keras.config import ModelConfig, load_config
from qana_keras.models import keras
from qana_keras.models.qana import MODEL_BUILDERS, build_model

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module




def layer_names(model) -> set[str]:
    return {layer.name for layer in model.layers}


def test_ablation_switches_from_the_command_line():
    config = load_config(REPO / "configs" / "qana.yaml", ["model.sa_eca_stages=", "model.se=false"])
    assert config.model.sa_eca_stages == () and config.model.se is False
    assert load_config(None, ["model.sa_eca_stages=[]"]).model.sa_eca_stages == ()
    full = build_model(ModelConfig())
    plain = build_model(config.model)
    assert not any("sa_eca" in n or n.startswith("se/") for n in layer_names(plain))
    assert {"stage4/sa_eca/add", "se/add"} <= layer_names(full)
    no_se = build_model(ModelConfig(se=False))
    assert "se/add" not in layer_names(no_se) and "stage2/sa_eca/add" in layer_names(no_se)
    # SE costs 3x3x128x8 + 8x128 conv weights + BN; SA-ECA stages 2-4 cost more.
    assert full.count_params() - no_se.count_params() == 128 * 8 * 9 + 8 * 4 + 8 * 128 + 128 * 4
    assert plain.count_params() < no_se.count_params()


@pytest.mark.parametrize("size, head, stride", [(32, (2, 2, 128), 1), (48, (3, 3, 128), 1), (64, (4, 4, 128), 1),
                                                (96, (3, 3, 128), 2), (128, (4, 4, 128), 2)])
def test_head_adapts_to_the_input_resolution(size, head, stride):
    model = build_model(ModelConfig(), input_size=size)
    assert model.get_layer("head/flatten").input_shape[1:] == head
    assert model.get_layer("spike/dw/dw").strides == (stride, stride)
    assert int(np.prod(head)) <= 2048


def test_head_that_cannot_fit_is_refused_with_what_to_change():
    with pytest.raises(ValueError, match=r"6x6x128 = 4608 .* \(at most 56 on a 6x6 map\)"):
        build_model(ModelConfig(), input_size=192)  # 12x12 -> one stride-2 halving -> 6x6
    assert build_model(ModelConfig(head_channels=56), input_size=192).get_layer("head/flatten").output_shape[1] == 2016


def test_plain_cnn_baseline():
    model = build_model(ModelConfig(variant="plain-cnn"))
    assert model.inputs[0].dtype.name == "uint8" and model.output_shape == (None, 7)
    assert model.get_layer("head/flatten").output_shape == (None, 2048)
    # 4 conv stages 3*32, 32*64, 64*128, 128*256 (3x3) + 1x1 projection 256*128, BN 4/channel, dense 2048*7+7
    convs = 9 * (3 * 32 + 32 * 64 + 64 * 128 + 128 * 256) + 256 * 128
    assert model.count_params() == convs + 4 * (32 + 64 + 128 + 256 + 128) + 2048 * 7 + 7


def test_akidanet_baselines_take_uint8_pixels_scaled_by_1_over_255():
    pytest.importorskip("akida_models", reason="the baselines extra: pip install -e '.[baselines]'")
    assert {"akidanet-0.25", "akidanet-0.5", "plain-cnn"} <= set(MODEL_BUILDERS)
    small = build_model(ModelConfig(variant="akidanet-0.25"))
    wide = build_model(ModelConfig(variant="akidanet-0.5"))
    assert small.input_shape == (None, 64, 64, 3) and small.inputs[0].dtype.name == "uint8"
    assert small.output_shape == wide.output_shape == (None, 7)
    rescale = small.get_layer("rescaling")
    assert rescale.scale == pytest.approx(1 / 255) and rescale.offset == 0
    assert small.count_params() < wide.count_params()
    assert small.get_layer("classifier").input_shape == (None, 256)  # 1024 * alpha after global pooling
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model(ModelConfig(variant="akidanet-0.25"), input_size=48)


def test_count_macs_by_hand():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = keras.layers.Conv2D(6, 1)(x)
    x = keras.layers.MaxPool2D(2)(x)
    outputs = keras.layers.Dense(7)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    assert hardware_cost.count_macs(model) == 8 * 8 * 9 * 3 * 4 + 4 * 4 * 9 * 4 + 4 * 4 * 4 * 6 + 2 * 2 * 6 * 7
    assert hardware_cost.head_inputs(model) == 24


def test_every_listed_model_has_a_config():
    for name in hardware_cost.MODELS:
        config = hardware_cost.model_config(name, hardware_cost.TINY_OVERRIDES)
        assert config.model.variant in MODEL_BUILDERS
        assert all(s <= len(config.model.widths) for s in config.model.sa_eca_stages)
    assert hardware_cost.model_config("qana-96").data.image_size == 96
    with pytest.raises(ValueError, match="unknown ablation"):
        hardware_cost.model_config("nope")


# --------------------------------------------------------------------------------------------------
# Slow: conversion and mapping, end-to-end ablation rows


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qana-no-sa-eca", "qana-no-se", "qana-96", "plain-cnn", "akidanet-0.25"])
def test_variant_converts_fully_and_maps_in_one_pass(name):
    if name.startswith("akidanet"):
        pytest.importorskip("akida_models")
    row = hardware_cost.cost_row(name, hardware_cost.TINY_OVERRIDES, calibration=16, log=lambda *_: None)
    assert row["error"] is None
    assert row["r_succ"] == 1.0
    assert row["one_pass"] and row["min_device"] is not None and row["nps"] > 0 and row["program_bytes"] > 0
    assert row["macs"] > 0 and row["head_inputs"] <= 2048


@pytest.mark.slow
def test_ablations_script_end_to_end_on_the_fixture(tmp_path):
    from qana_keras.data import ham10000, splits

    data = write_ham10000_fixture(tmp_path / "ham", n_lesions_per_class=6, images_per_lesion=(1, 2), size=(64, 48))
    split_file = tmp_path / "split.csv"
    splits.write_split(splits.make_lesion_split(ham10000.load_metadata(data), seed=1), split_file)
    out = tmp_path / "ablations"
    overrides = [f"data.split_file={split_file}", f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=32",
                 "train.batch_size=16", "train.warmup_epochs=0", *hardware_cost.TINY_OVERRIDES]
    ablations = _script("ablations")
    argv = ["qana-no-se", "qana", "--epochs", "1", "--out", str(out), "--data", str(data), "--calibration", "32",
            "--qat-epochs", "0", "--n-boot", "50"] + [f"--set={o}" for o in overrides]
    assert ablations.main(argv) == 0
    rows = {name: json.loads((out / f"{name}.json").read_text()) for name in ("qana", "qana-no-se")}
    for name, row in rows.items():
        assert row["epochs"] == 1 and row["image_size"] == 32 and row["params"] > 0 and row["macs"] > 0
        assert row["hardware"]["r_succ"] == 1.0 and row["hardware"]["one_pass"]
        for model in ("akida", "float"):
            m = row["test"][model]
            assert 0 <= m["top1"] <= 1 and 0 <= m["macro_f1"] <= 1
            assert m["bootstrap_95"]["macro_f1"]["low"] <= m["macro_f1"] <= m["bootstrap_95"]["macro_f1"]["high"]
        assert (out / name / "test_logits_akida.npz").exists()
    assert rows["qana"]["paired_vs_reference"] is None
    paired = rows["qana-no-se"]["paired_vs_reference"]
    assert paired["reference"] == "qana" and set(paired["metrics"]) == {"top1", "balanced_accuracy", "macro_f1"}
    diff = rows["qana-no-se"]["test"]["akida"]["top1"] - rows["qana"]["test"]["akida"]["top1"]
    assert paired["metrics"]["top1"]["difference"] == pytest.approx(diff)
    assert rows["qana-no-se"]["params"] < rows["qana"]["params"]
    # A second invocation skips training and conversion and rewrites the same metrics.
    assert ablations.main(argv[:1] + argv[2:]) == 0
    again = json.loads((out / "qana-no-se.json").read_text())
    assert again["seconds"]["train"] == 0 and again["test"] == rows["qana-no-se"]["test"]


def test_hardware_cost_verb_lists_the_models_and_renders_a_table(tmp_path, capsys):
    from qana_keras.cli import main
    from qana_keras.reporting.studies import hardware_cost_table

    assert main(["hardware-cost", "--list"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list(hardware_cost.MODELS)
    rows = json.loads((REPO / "models" / "hardware_cost.json").read_text())
    markdown = tmp_path / "cost.md"
    assert main(["hardware-cost", "--render", str(REPO / "models" / "hardware_cost.json"),
                 "--markdown", str(markdown)]) == 0
    assert markdown.read_text() == hardware_cost_table(rows) + "\n"
    assert main(["hardware-cost", "no-such-model"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown model(s) no-such-model; known: qana,")
