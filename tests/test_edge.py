"""qana-akd1000 on Akida 1.0: 4-bit conversion with a 1-bit spike layer, AKD1000 mapping, on-chip learning."""
from __future__ import annotations

import numpy as np
import pytest
from fixtures import QUIET, random_images, tiny_model, write_pad_ufes_fixture
from test_convert import make_tiny_run

from qana_keras.conversion.quantize import integer_completeness, quantize_for_akida, to_akida
from qana_keras.onchip.edge import EdgeConfig, EdgeError, backbone, choose_num_weights, edge_learn_run
from qana_keras.io import RunFolderError, read_json, write_json


@pytest.fixture(scope="module")
def tiny_akd1000():
    model = tiny_model("qana-akd1000", size=32)
    qmodel, cut = quantize_for_akida(model, random_images(32, size=32), "qana-akd1000", bits=4, batch_size=16, **QUIET)
    return model, qmodel, cut, to_akida(qmodel, strict=True, variant="qana-akd1000", **QUIET)


def test_akd1000_variant_is_sequential_and_fully_integer_on_akida_v1(tiny_akd1000):
    import akida

    model, qmodel, cut, ak = tiny_akd1000
    kinds = {type(layer).__name__ for layer in model.layers}
    assert not kinds & {"Add", "Concatenate", "DepthwiseConv2D", "Multiply"}
    assert cut is None and integer_completeness(qmodel)["r_succ"] == 1.0
    assert "v1" in str(ak.ip_version)
    assert list(ak.output_shape) == [1, 1, 7]
    ak.map(akida.AKD1000(), hw_only=True)  # raises if any layer cannot run on the chip
    assert len(ak.sequences) == 1 and len(ak.sequences[0].passes) == 1
    ak.map(None)
    # The spike layer is binary: the backbone's outputs are 0/1 only.
    spikes = backbone(ak).forward(random_images(8, size=32))
    assert set(np.unique(spikes)) <= {0, 1}


def test_akd1000_refuses_8_bits():
    with pytest.raises(ValueError, match="pass --bits 4"):
        quantize_for_akida(tiny_model("qana-akd1000", size=32), random_images(16, size=32), "qana-akd1000",
                           bits=8, batch_size=16, **QUIET)


def test_v2_model_and_silent_spike_layer_are_refused(tiny_qana):
    with pytest.raises(EdgeError, match="needs an Akida 1.0 model"):
        backbone(tiny_qana.akida())
    with pytest.raises(EdgeError, match="fires 0.00 spikes per image"):
        choose_num_weights(np.zeros(10), EdgeConfig(), "model.fbz")
    assert choose_num_weights(np.array([10, 30]), EdgeConfig(weight_factor=1.2), "m") == 24


@pytest.fixture(scope="module")
def edge_run(tmp_path_factory):
    from qana_keras.config import load_config
    from qana_keras.conversion.run import convert_run

    root = tmp_path_factory.mktemp("edge")
    run, config = make_tiny_run(root, variant="qana-akd1000", epochs=2, size=32,
                                classes=("akiec", "bcc", "bkl", "mel", "nv"))
    assert load_config(run / "config.yaml").data.classes == ("akiec", "bcc", "bkl", "mel", "nv")
    convert_run(run, bits=4, num_calibration=64, batch_size=16, qat_epochs=0, **QUIET)
    pad = write_pad_ufes_fixture(root / "pad", per_diagnostic=6, missing_per_diagnostic=1, size=(40, 40))
    return run, pad


def test_edge_learning_protocols_end_to_end(edge_run):
    run, pad = edge_run
    config = EdgeConfig(neurons_per_class=2, max_per_class=20, shots=(2, 0), batch_size=16)
    result = edge_learn_run(run, pad_root=pad, config=config, **QUIET)
    saved = read_json(run / "edge_learning.json")
    assert saved == result
    assert (run / "edge_learning.md").read_text().startswith("# Akida 1.0 on-chip learning")
    assert result["mapping"]["single_pass"] and result["mapping"]["device"] == "AKD1000"
    assert result["mean_spikes"] >= 1 and result["num_weights"] >= 1
    assert result["trained_head_test"]["classes"] == ["akiec", "bcc", "bkl", "mel", "nv"]
    assert 0.0 <= result["trained_head_test"]["accuracy"] <= 1.0
    ci = result["protocols"]["class-incremental"]
    assert ci["chip_class_order"] == ["akiec", "bcc", "bkl", "mel", "nv", "vasc", "df"]
    assert [(r["shots"], r["step"]) for r in ci["rows"]] == [(2, "+vasc"), (2, "+df"), ("all", "+vasc"), ("all", "+df")]
    assert ci["rows"][0]["train_images_new_class"] == 2
    for row in ci["rows"]:
        assert 0.0 <= row["accuracy_known"] <= 1.0 and 0.0 <= row["new_class_recall"] <= 1.0
    domain, grown = result["protocols"]["domain"], result["protocols"]["new-class"]
    assert len(domain["classes"]) == 7 and grown["classes"][-1] == "scc"
    assert "scc" in next(iter(grown["rows"].values()))["pad_test"]["recall"]
    assert domain["pad_split"]["train_patients"] > 0 and domain["pad_split"]["test_patients"] > 0
    assert not (run / "edge_tmp").exists()
    with pytest.raises(RunFolderError, match="pass --overwrite"):
        edge_learn_run(run, pad_root=pad, config=config, **QUIET)


def test_class_incremental_needs_a_backbone_without_vasc_and_df(edge_run):
    run, pad = edge_run
    write_json(run / "classes.json", {"classes": ["akiec", "bcc", "bkl", "mel", "nv", "vasc", "df"]})
    try:
        with pytest.raises(Exception, match="outputs but classes.json names 7"):
            edge_learn_run(run, protocols=("class-incremental",), overwrite=True, **QUIET)
    finally:
        write_json(run / "classes.json", {"classes": ["akiec", "bcc", "bkl", "mel", "nv"]})
