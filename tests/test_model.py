"""QANA variants: shapes, parameter counts and the hardware-native guarantee on tiny widths."""
import warnings

import numpy as np
import pytest

import qana_keras  # noqa: F401
from fixtures import TINY_QANA as TINY, random_images
from qana_keras.config import ModelConfig
from qana_keras.models.qana import MODEL_BUILDERS, build_model



def tiny(variant="qana", **kw):
    return ModelConfig(variant=variant, **{**TINY, **kw})


def test_variants_are_registered():
    assert {"qana", "qana-paper"} <= set(MODEL_BUILDERS)
    with pytest.raises(ValueError, match="unknown model variant 'nope'"):
        build_model(ModelConfig(variant="nope"))


def test_tiny_qana_shapes_and_parameters():
    model = build_model(tiny(), input_size=16)
    assert model.input_shape == (None, 16, 16, 3)
    assert model.inputs[0].dtype.name == "uint8"
    assert model.output_shape == (None, 7)
    # 16 -> 8 -> 4 after two pooled stages; the head reads 4*4*8 = 128 values.
    assert model.get_layer("head/flatten").output_shape == (None, 128)
    # stem 248 + stage1 356 + stage2 1432 (shortcut 192, ghost 712, SA-ECA 528) + spike 368 + SE 200
    # + head 903 (128*7+7); BN counts 4 per channel (2 of them non-trainable).
    assert model.count_params() == 3507
    names = {layer.name for layer in model.layers}
    assert {"stage2/sa_eca/add", "se/add", "spike/pw/relu", "stage1/ghost/concat"} <= names
    assert "stage1/sa_eca/add" not in names  # SA-ECA only where configured


def test_default_qana_fits_one_akida_dense_layer():
    model = build_model(ModelConfig())
    assert model.get_layer("head/flatten").output_shape == (None, 2048)
    assert model.count_params() == 403383


def test_paper_variant_keeps_multiplicative_gates_and_4096_head():
    model = build_model(ModelConfig(variant="qana-paper"))
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "Multiply" in kinds
    assert model.get_layer("head/flatten").output_shape == (None, 4096)


def test_bn_never_follows_concatenate_or_add():
    model = build_model(ModelConfig())
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            parent = layer.inbound_nodes[0].inbound_layers
            assert type(parent).__name__ not in ("Concatenate", "Add"), layer.name


def test_head_over_2048_inputs_is_refused():
    with pytest.raises(ValueError, match="2048 inputs of an Akida hardware dense layer"):
        build_model(ModelConfig(head_channels=256))


def test_bad_ghost_ratio_is_refused():
    with pytest.raises(ValueError, match="ghost ratio"):
        build_model(tiny(ghost_ratio=1.5), input_size=16)


def test_tiny_qana_quantizes_converts_and_maps_in_one_hardware_pass(tiny_qana):
    import akida
    from cnn2snn import convert

    quantized = tiny_qana.qmodel  # quantizeml.models.quantize with 8-bit QuantizationParams (conftest)
    # Every layer is quantized; the only Dequantizer is the model output (float logits for the host).
    dequantizers = [l for l in quantized.layers if type(l).__name__ == "Dequantizer"]
    assert [l.name for l in dequantizers] == [quantized.layers[-1].name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Conversion stops at layer ..." would be a UserWarning
        akida_model = convert(quantized)  # cnn2snn itself, not the project's wrapper
    assert tuple(akida_model.output_shape) == (1, 1, 7)
    akida_model.map(akida.TwelveNodesIPv2(), hw_only=True)
    assert len(akida_model.sequences) == 1
    assert sum(len(s.passes) for s in akida_model.sequences) == 1
    akida_model.map(None)
    samples = random_images(16, seed=7)
    ak = akida_model.predict(samples).reshape(len(samples), -1)
    qk = quantized.predict(samples, verbose=0)
    np.testing.assert_array_equal(ak.argmax(1), qk.argmax(1))
