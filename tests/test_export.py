"""`qana export`: a tiny run's float model as a fully-int8 TFLite model, its evaluation, and the guards around it."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures import QUIET, tiny_model, write_run_fixture

from qana_keras.cli import main
from qana_keras.io import RunFolderError, read_json, write_json
from qana_keras.runtime.safe_load import ArtifactError, load_model_file


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run folder with an untrained tiny qana (16 px, seeded) exported with 32 representative images."""
    import tf_keras

    from qana_keras.evaluation.export import export_run

    run, config, _ = write_run_fixture(tmp_path_factory.mktemp("export"), n_lesions_per_class=6, size=(64, 48),
                                       image_size=16)
    tf_keras.utils.set_random_seed(0)
    tiny_model("qana", 16).save(run / "qana_float.h5")
    return run, config, export_run(run, representative=32, **QUIET)


def test_export_writes_a_fully_int8_tflite_that_agrees_with_the_float_model(exported):
    run, config, report = exported
    content = (run / "qana_int8.tflite").read_bytes()
    assert content[4:8] == b"TFL3" and report["bytes"] == len(content)
    assert read_json(run / "export.json") == report
    assert report["input"]["dtype"] == report["output"]["dtype"] == "int8"
    assert report["input"]["shape"][1:] == [16, 16, 3] and report["output"]["shape"][-1] == 7
    assert report["float_tensors"] == []  # no float op left: weights int8, biases int32, activations int8
    n_train = int((read_json_split(config) == "train").sum())
    assert report["representative"] == {**report["representative"], "images": min(32, n_train), "seed": 0}
    test = report["test"]
    assert test["n_images"] == int((read_json_split(config) == "test").sum())
    assert test["argmax_agreement"] >= 0.8, test
    for name in ("float", "tflite_int8"):
        ci = test[name]["bootstrap_95"]["top1"]
        assert ci["low"] <= test[name]["top1"] <= ci["high"]


def read_json_split(config):
    from qana_keras.data import splits

    return splits.read_split(config.data.split_file)["split"]


def test_the_tflite_model_evaluates_and_predicts_like_the_other_models(exported, tmp_path):
    run, config, report = exported
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(run / "qana_int8.tflite"), "--data", config.data.data_dir, "--split",
                 "test", "--json", str(out), "--no-figures", "--n-boot", "20"]) == 0
    evaluation = read_json(out)
    assert evaluation["model_type"] == "TFLiteModel"
    assert evaluation["top1"] == pytest.approx(report["test"]["tflite_int8"]["top1"])

    from qana_keras.evaluation.predict import predict_images

    images = sorted(Path(config.data.data_dir).glob("*/*.jpg"))[:3]
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in images:
        shutil.copy(image, folder)
    result = predict_images(folder, run / "qana_int8.tflite")
    assert len(result.rows) == 3 and result.image_size == 16


def test_export_refuses_to_overwrite(exported, capsys):
    run, _, _ = exported
    before = (run / "qana_int8.tflite").stat().st_mtime_ns
    assert main(["export", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "export artifacts already exist" in err and "--overwrite" in err and err.count("\n") == 1
    assert (run / "qana_int8.tflite").stat().st_mtime_ns == before


def test_bad_input_is_one_line_naming_the_file(exported, tmp_path, capsys):
    run, _, _ = exported
    assert main(["export", "--run", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "pass a run folder" in err and err.count("\n") == 1
    empty = tmp_path / "no-float"
    empty.mkdir()
    shutil.copy(run / "config.yaml", empty)
    assert main(["export", "--run", str(empty)]) == 2
    err = capsys.readouterr().err
    assert str(empty / "qana_float.h5") in err and "qana train" in err and err.count("\n") == 1
    assert main(["export", "--run", str(run), "--format", "onnx", "--overwrite"]) == 2
    assert "unknown export format 'onnx'; use --format tflite" in capsys.readouterr().err
    other = run / "qana_calibrated_float.h5"  # another .h5 of the run is not its float model
    shutil.copy(run / "qana_float.h5", other)
    try:
        assert main(["export", "--run", str(other), "--overwrite"]) == 2
    finally:
        other.unlink()
    err = capsys.readouterr().err
    assert "export reads the run's float model qana_float.h5" in err and err.count("\n") == 1


def test_safe_load_refuses_what_is_no_recorded_tflite_model(exported, tmp_path, capsys):
    run, config, _ = exported
    fake = tmp_path / "model.tflite"
    shutil.copy(run / "qana_float.h5", fake)  # an HDF5 file renamed .tflite
    with pytest.raises(ArtifactError, match="not a TFLite model .no TFL3 flatbuffer identifier"):
        load_model_file(fake)
    content = (run / "qana_int8.tflite").read_bytes()
    fake.write_bytes(content[:len(content) // 2])  # the identifier, but truncated
    with pytest.raises(ArtifactError, match="not a readable TFLite model"):
        load_model_file(fake)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "qana_int8.tflite").write_bytes(content[:-1] + bytes([content[-1] ^ 1]))  # changed since export
    with pytest.raises(ArtifactError, match="recorded in .*export.json: changed or truncated since export"):
        load_model_file(copy / "qana_int8.tflite")
    assert main(["evaluate", "--model", str(fake), "--data", config.data.data_dir, "--json",
                 str(tmp_path / "e.json")]) == 2
    assert "not a readable TFLite model" in capsys.readouterr().err


def test_hardware_table_shows_the_export_beside_the_converted_akida_model(exported, tmp_path):
    from qana_keras.reporting.hardware import TFLITE_LABEL, _tflite, tflite_export

    run, _, report = exported
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    for name in ("export.json", "qana_int8.tflite"):
        shutil.copy(run / name, folder)
    for name in ("qana.fbz", "qana_learn_domain.fbz"):
        (folder / name).write_bytes(b"fbz")  # not opened here
    write_json(folder / "conversion.json", {"artifacts": {"float": "qana_float.h5", "akida": "qana.fbz"}})
    row = tflite_export(folder / "qana.fbz")
    assert row["label"] == TFLITE_LABEL and row["bytes"] == report["bytes"]
    assert row["top1"] == report["test"]["tflite_int8"]["top1"]
    assert _tflite(row).endswith(f"{report['bytes']:,} B (`qana_int8.tflite`; argmax = float on "
                                 f"{report['test']['argmax_agreement']:.1%})")
    assert tflite_export(folder / "qana_learn_domain.fbz") is None and _tflite(None) == "—"
    (folder / "qana_int8.tflite").write_bytes(b"short")
    with pytest.raises(ValueError, match=r"export.json: records qana_int8.tflite of .* its size differs; re-run"):
        tflite_export(folder / "qana.fbz")


def test_the_int8_input_is_the_pixel_minus_128(exported):
    from qana_keras.runtime.safe_load import load_tflite_model

    model = load_tflite_model(exported[0] / "qana_int8.tflite")
    info = model.tensor_info("input")
    assert (info["scale"], info["zero_point"]) == (1.0, -128)  # the whole pixel range, whatever the images span
    pixels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(model.quantize_input(pixels), (pixels.astype(np.int16) - 128).astype(np.int8))
