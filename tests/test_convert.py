"""Quantize + convert with the real quantizeml/cnn2snn/akida: completeness, loud failures, hybrid, artifacts."""
from __future__ import annotations

import numpy as np
import pytest
from fixtures import QUIET, TINY_QANA as TINY, random_images, tiny_model, write_ham10000_fixture

from qana_keras import CLASSES
from qana_keras.config import Config, ModelConfig
from qana_keras.conversion import ConversionError
from qana_keras.conversion.qat import target_gap
from qana_keras.conversion.quantize import (check_hardware_native, find_convertible_prefix, integer_completeness,
                                            quantize_for_akida, quantize_model, to_akida)
from qana_keras.conversion.run import convert_run
from qana_keras.data import ham10000, splits
from qana_keras.io import RunFolderError, read_json
from qana_keras.runs import RunFolder
from qana_keras.runtime.load import HybridModel, predict_logits, tail_model
from qana_keras.runtime.safe_load import file_record


def make_tiny_run(root, variant: str = "qana", epochs: int = 1, size: int = 32, classes: tuple[str, ...] = ()):
    """Train a tiny-width model for ``epochs`` on a synthetic HAM10000 fixture (on ``classes`` only, if given);
    returns (run_dir, config)."""
    from qana_keras.training.train import train

    data_dir = write_ham10000_fixture(root / "ham", n_lesions_per_class=6, images_per_lesion=(1, 2), size=(64, 48))
    split_file = root / "split.csv"
    splits.write_split(splits.make_lesion_split(ham10000.load_metadata(data_dir), seed=1), split_file)
    config = Config()
    config.data.data_dir, config.data.split_file = str(data_dir), str(split_file)
    config.data.cache_dir, config.data.image_size = str(root / "cache"), size
    config.data.classes = classes
    config.model = ModelConfig(variant=variant, **TINY)
    config.train.epochs, config.train.batch_size, config.train.warmup_epochs = epochs, 16, 0
    run = root / "run"
    train(run, config, **QUIET)
    return run, config


# --------------------------------------------------------------------------------------------------
# Hardware-native QANA


def test_tiny_qana_is_fully_integer_and_akida_matches_quantized_keras(tiny_qana):
    assert tiny_qana.cut is None
    qmodel, ak = tiny_qana.qmodel, tiny_qana.akida()
    report = integer_completeness(qmodel)
    assert report["r_succ"] == 1.0 and report["float_layers"] == [] and report["inner_dequantizers"] == []
    # BN is folded and identity convs inserted, so the counted graph is quantizeml's, not the float one.
    assert report["counted_layers"] > 20
    assert list(ak.output_shape) == [1, 1, 7]
    x = random_images(50, seed=1)
    q, a = predict_logits(qmodel, x), predict_logits(ak, x)
    assert a.shape == q.shape == (50, 7) and a.dtype == np.float32  # dense + dequantizer: float logits
    np.testing.assert_array_equal(a.argmax(1), q.argmax(1))
    assert np.max(np.abs(a - q)) < 1e-2


def test_channels_of_different_scales_before_flatten_are_made_per_tensor_so_akida_matches_keras():
    """cnn2snn drops QuantizedFlatten's alignment shifts: quantizeml's own quantize gives a model the
    converter turns into a wrong Akida model; ``quantize_model`` makes the layer before Flatten per-tensor."""
    from quantizeml.models import quantize

    from qana_keras.conversion.quantize import misaligned_flatten_inputs, quantization_params

    model = tiny_model("plain-cnn")
    (kernel,) = model.get_layer("project/conv").get_weights()
    kernel[..., ::2] *= 8.0  # half the channels 8x larger: 3 more integer bits, so fewer fractional bits
    model.get_layer("project/conv").set_weights([kernel])
    x = random_images(64, seed=2)
    raw = quantize(model, qparams=quantization_params(8), samples=x, num_samples=len(x), batch_size=16)
    assert misaligned_flatten_inputs(raw) == {"head/flatten": "project/relu"}
    with pytest.raises(ConversionError, match=r"head/flatten aligns channels of different fractional bits"):
        to_akida(raw, strict=True, variant="plain-cnn", **QUIET)
    qmodel = quantize_model(model, x, batch_size=16, **QUIET)
    assert misaligned_flatten_inputs(qmodel) == {}
    ak = to_akida(qmodel, strict=True, variant="plain-cnn", **QUIET)
    q, a = predict_logits(qmodel, x), predict_logits(ak, x)
    np.testing.assert_array_equal(a.argmax(1), q.argmax(1))
    assert np.max(np.abs(a - q)) < 1e-2


def test_whole_qana_is_its_own_convertible_prefix():
    model = tiny_model("qana")
    assert find_convertible_prefix(model) == model.layers[-1].name


# --------------------------------------------------------------------------------------------------
# qana-paper: loud failure when declared hardware-native, hybrid otherwise


def test_strict_path_refuses_sigmoid_gates_naming_the_layer():
    with pytest.raises(ConversionError, match=r"stage1/sa_eca/sigmoid.*Activation sigmoid"):
        quantize_for_akida(tiny_model("qana-paper"), random_images(32), "qana-paper", batch_size=16,
                           hardware_native=True, **QUIET)


def test_float_layers_after_quantization_and_converter_truncation_are_errors():
    model = tiny_model("qana-paper")
    qmodel = quantize_model(model, random_images(32), batch_size=16, **QUIET)  # quantizeml's default: stops at the gate
    report = integer_completeness(qmodel)
    assert 0 < report["r_succ"] < 1 and "stage1/sa_eca/sigmoid" in report["float_layers"]
    with pytest.raises(ConversionError, match="stage1/sa_eca/sigmoid"):
        check_hardware_native(qmodel, "qana-paper")
    # The converter only warns ("Conversion stops at layer ..."); the strict path makes it an error.
    with pytest.raises(ConversionError, match="Conversion stops"):
        to_akida(qmodel, strict=True, variant="qana-paper", **QUIET)


def test_hybrid_cut_is_the_last_single_tensor_boundary():
    # The last quantizable layer before the first gate is stage1/sa_eca/proj/conv, but the stage's
    # residual and the gate's other input also cross there; only the stem output feeds everything after it.
    assert find_convertible_prefix(tiny_model("qana-paper")) == "stem/relu"


def test_hybrid_predict_matches_quantized_prefix_plus_float_tail():
    model = tiny_model("qana-paper")
    qmodel, cut = quantize_for_akida(model, random_images(64), "qana-paper", batch_size=16, **QUIET)
    assert cut == "stem/relu"
    boundary = f"{cut}/dequantizer"
    ak = to_akida(qmodel, strict=False, variant="qana-paper", expected_last=boundary, **QUIET)
    assert ak.layers[-1].name == boundary
    hybrid = HybridModel(ak, tail_model(qmodel, boundary), boundary)
    x = random_images(40, seed=2)
    h, q = hybrid.predict(x), predict_logits(qmodel, x)
    assert h.shape == (40, 7)
    np.testing.assert_array_equal(h.argmax(1), q.argmax(1))
    assert np.max(np.abs(h - q)) < 1e-3
    assert 0 < integer_completeness(qmodel)["r_succ"] < 0.5


# --------------------------------------------------------------------------------------------------
# The run-folder step


def test_target_gap_is_the_worst_target_in_target_units():
    recall = dict.fromkeys(CLASSES, 0.8)
    reference = {"top1": 0.80, "macro_f1": 0.60, "recall": recall}
    same = {"top1": 0.80, "macro_f1": 0.60, "recall": recall, "argmax_agreement": 1.0}
    assert target_gap(same, reference) == 0.0
    # 0.25 pt top-1 (0.5), 0.5 pt macro-F1 (0.5), 98.5 % agreement (1.5), 'df' recall -1 pt (0.5)
    worse = {"top1": 0.7975, "macro_f1": 0.595, "recall": {**recall, "df": 0.79}, "argmax_agreement": 0.985}
    assert target_gap(worse, reference) == pytest.approx(1.5)
    worse["argmax_agreement"] = 0.995
    assert target_gap(worse, reference) == pytest.approx(0.5)  # all targets met
    worse["recall"]["mel"] = 0.75  # 5 pt recall lost on one class
    assert target_gap(worse, reference) == pytest.approx(2.5)



_SHARED: dict = {}


def converted_tiny_run(tmp_path_factory):
    """One tiny trained and converted ``qana`` run for the whole session (convert, deploy and evaluate tests).

    Conversion forces quantization-aware fine-tuning (threshold below any drop, one epoch) so that
    path runs too. Returns (run_dir, config, conversion report).
    """
    if "run" not in _SHARED:
        run, config = make_tiny_run(tmp_path_factory.mktemp("tiny_qana_run"), "qana")
        report = convert_run(run, num_calibration=32, batch_size=16, qat_epochs=1, qat_threshold=-1.0, **QUIET)
        _SHARED["run"] = (run, config, report)
    return _SHARED["run"]


@pytest.fixture(scope="module")
def qana_run(tmp_path_factory):
    return converted_tiny_run(tmp_path_factory)


def test_convert_run_writes_artifacts_and_reports(qana_run):
    run, config, report = qana_run
    for name in ("qana_i8_w8_a8.h5", "qana.fbz", "conversion.json"):
        assert (run / name).exists(), name
    saved = read_json(run / "conversion.json")
    assert saved == report
    assert saved["r_succ"] == 1.0 and saved["float_layers"] == [] and saved["hybrid"] is None
    assert saved["calibration"]["images"] == 32 and saved["calibration"]["batch_size"] == 16
    assert saved["qat"]["done"] and saved["qat"]["epochs"] == 1 and len(saved["qat"]["history"]) == 1
    assert saved["qat"]["selected_epoch"] in (0, 1)
    assert set(saved["val"]) >= {"float", "ptq", "final", "ptq_top1_drop_pt"}
    assert saved["akida"]["output_shape"] == [1, 1, 7]
    assert saved["akida_vs_quantized_val_check"]["argmax_agreement"] == 1.0
    # Size and SHA-256 of both artifacts, checked by safe_load whenever they are loaded.
    assert saved["checksums"] == {name: file_record(run / name) for name in ("qana_i8_w8_a8.h5", "qana.fbz")}

    # What was saved runs the same after reloading: .fbz against the reloaded quantized .h5.
    loaded = RunFolder(run).converted()
    x = random_images(20, size=config.data.image_size, seed=3)
    q, a = predict_logits(loaded["quantized"], x), predict_logits(loaded["akida"], x)
    np.testing.assert_array_equal(q.argmax(1), a.argmax(1))
    assert np.max(np.abs(q - a)) < 1e-2


def test_convert_run_refuses_to_overwrite(qana_run):
    run, _, _ = qana_run
    before = (run / "qana.fbz").stat().st_mtime_ns
    with pytest.raises(RunFolderError, match="--overwrite"):
        convert_run(run, num_calibration=32, batch_size=16, qat_epochs=0, **QUIET)
    assert (run / "qana.fbz").stat().st_mtime_ns == before


@pytest.mark.slow  # the 8-bit path is covered by the default tests
def test_four_bit_conversion_has_its_own_artifacts(qana_run):
    run, _, _ = qana_run
    report = convert_run(run, bits=4, num_calibration=32, batch_size=16, qat_epochs=1, qat_threshold=-1.0,
                         qat_loss="logits", **QUIET)
    assert report["precision"] == "i8_w4_a4" and report["r_succ"] == 1.0
    assert report["qat"]["done"] and "squared error to the float model's logits" in report["qat"]["loss"]
    for name in ("qana_i8_w4_a4.h5", "qana_i8_w4_a4.fbz", "conversion_i8_w4_a4.json"):
        assert (run / name).exists(), name


def test_convert_run_of_qana_paper_is_a_hybrid(tmp_path):
    run, config = make_tiny_run(tmp_path, "qana-paper")
    report = convert_run(run, num_calibration=32, batch_size=16, qat_epochs=0, **QUIET)
    assert report["hybrid"]["cut_after"] == "stem/relu" and 0 < report["r_succ"] < 0.5
    assert "head/dense" in report["float_layers"]
    loaded = RunFolder(run).converted()
    assert isinstance(loaded["akida"], HybridModel)
    x = random_images(20, size=config.data.image_size, seed=4)
    h, q = loaded["akida"].predict(x), predict_logits(loaded["quantized"], x)
    np.testing.assert_array_equal(h.argmax(1), q.argmax(1))
    assert np.max(np.abs(h - q)) < 1e-3


def test_fit_progress_reports_images_done_within_an_epoch():
    import tf_keras as keras

    from qana_keras.conversion.qat import FitProgress

    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    lines = []
    progress = FitProgress("QAT epoch 1/1", 40, 8, every_seconds=0.0, log=lines.append)
    model.fit(np.zeros((40, 4)), np.zeros((40, 2)), batch_size=8, epochs=1, verbose=0, callbacks=[progress])
    assert lines[0].startswith("QAT epoch 1/1: 8/40 images") and lines[-1].startswith("QAT epoch 1/1: 40/40 images")


def test_qat_on_logits_pulls_the_logits_to_the_float_models_and_the_cli_offers_each_loss():
    from types import SimpleNamespace

    import tf_keras as keras

    from qana_keras import cli
    from qana_keras.conversion.qat import QAT_LOSSES, _val_scores, quantization_aware_finetune

    rng = np.random.default_rng(0)
    x, x_val = rng.normal(size=(256, 4)).astype("float32"), rng.normal(size=(64, 4)).astype("float32")
    teacher = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)])
    classes = ["a", "b", "c"]
    val = SimpleNamespace(images=x_val, labels=predict_logits(teacher, x_val).argmax(1))
    reference = _val_scores(teacher, val.images, val.labels, classes=classes)
    start = _val_scores(student, val.images, val.labels, reference["logits"], classes=classes)
    before = np.mean((predict_logits(student, x_val) - reference["logits"]) ** 2)
    result = quantization_aware_finetune(student, x, predict_logits(teacher, x), val, reference, start, epochs=5,
                                         learning_rate=0.05, batch_size=32, loss="logits", log=lambda *_: None)
    after = np.mean((predict_logits(student, x_val) - reference["logits"]) ** 2)
    assert after < 0.1 * before and result["loss"] == QAT_LOSSES["logits"]
    assert result["val"]["argmax_agreement"] > start["argmax_agreement"]
    with pytest.raises(ValueError, match="QAT loss 'kl': use one of softmax, logits"):
        quantization_aware_finetune(student, x, x[:, :3], val, reference, start, 1, 0.01, loss="kl")
    convert = cli.build_parser()._subparsers._group_actions[0].choices["convert"]
    offered = next(a for a in convert._actions if a.dest == "qat_loss").choices
    assert tuple(offered) == tuple(QAT_LOSSES)
