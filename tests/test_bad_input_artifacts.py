"""Issue 28, artifact half: model files that would run code or crash the process are refused in one line
(``qana_keras.runtime.safe_load``), and `qana evaluate` turns bad options into one-line errors, not tracebacks.

Every fixture is made here on the fly: tiny Keras models, copies (whole or cut) of the committed Akida model.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
from fixtures import REPO, tiny_model, write_run_fixture

import qana_keras
from qana_keras.runtime import safe_load
from qana_keras.cli import main
from qana_keras.runtime.load import load_model_any
from qana_keras.runtime.safe_load import ArtifactError

COMMITTED_FBZ = REPO / "models" / "qana" / "qana.fbz"
COMMITTED_QUANTIZED = REPO / "models" / "qana" / "qana_i8_w8_a8.h5"


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny HAM10000 fixture and a model folder: untrained tiny float QANA (16 px) + its config.yaml."""
    root = tmp_path_factory.mktemp("bad_input")
    run, config, data_dir = write_run_fixture(root, n_lesions_per_class=3, size=(32, 24), image_size=16,
                                              folder="model")
    tiny_model("qana").save(run / "qana_float.h5", save_format="h5")
    return run, data_dir


def _lambda_model(marker: Path, nested: bool = False):
    """A 7-class model whose Lambda layer creates ``marker`` when it runs: the payload of a malicious .h5."""
    import tf_keras as keras

    def payload(t, m=str(marker)):
        open(m, "w").close()
        return t

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Lambda(payload, name="payload")(inputs)
    if nested:
        inner = keras.Model(inputs, x, name="inner")
        inputs = keras.Input((16, 16, 3))
        x = inner(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(7)(x))


@pytest.fixture(scope="module")
def evil(model_dir, tmp_path_factory):
    """``evil.h5`` (a Lambda layer) beside a copy of a real config.yaml; the marker its payload would create."""
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "payload_ran"
    _lambda_model(marker).save(folder / "evil.h5", save_format="h5")
    _lambda_model(marker, nested=True).save(folder / "nested.h5", save_format="h5")
    shutil.copy(model_dir[0] / "config.yaml", folder / "config.yaml")
    marker.unlink()  # building the model ran the payload once; from here on it must never run
    return folder, marker


def _evaluate(model, data, tmp_path, *extra):
    return main(["evaluate", "--model", str(model), "--data", str(data), "--json", str(tmp_path / "out.json"),
                 "--no-figures", "--n-boot", "5", "--cache-dir", str(tmp_path / "cache"), *extra])


def _one_error_line(capsys) -> str:
    """The single ``error:`` line the CLI printed (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@contextmanager
def read_only(folder: Path):
    """``folder`` made unwritable, even for root (the immutable attribute), or the test is skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(folder)],
                                                     capture_output=True).returncode == 0
    try:
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError:
            yield folder
        else:
            pytest.skip(f"cannot make {folder} read-only here")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


# --------------------------------------------------------------------------------------------------
# 1. Keras .h5: refused before deserialising


def test_evaluate_refuses_a_lambda_h5_without_running_it(evil, model_dir, tmp_path, capsys):
    folder, marker = evil
    assert _evaluate(folder / "evil.h5", model_dir[1], tmp_path) == 2
    line = _one_error_line(capsys)
    assert str(folder / "evil.h5") in line and "'payload'" in line and "Lambda" in line
    assert "only the project's layer classes are allowed" in line
    assert not marker.exists(), "the Lambda payload ran"


def _init_from(path):
    from qana_keras.training.train import load_initial_weights

    load_initial_weights(None, path)  # the source model is loaded (or refused) before the target is touched


def _saliency(path):
    from qana_keras.crop.saliency import load_saliency

    load_saliency(path, "head")


def _crop_classifier(path):
    from qana_keras.evaluation.crop_study import load_classifier

    load_classifier(path)


@pytest.mark.parametrize("loader", [load_model_any, _init_from, _saliency, _crop_classifier,
                                    safe_load.load_keras_model])
@pytest.mark.parametrize("name, layer", [("evil.h5", "Lambda"), ("nested.h5", "Lambda")])
def test_every_entry_point_refuses_lambda_layers(evil, loader, name, layer):
    folder, marker = evil
    with pytest.raises(ArtifactError, match=rf"{re.escape(str(folder / name))}: layer 'payload' is a {layer}"):
        loader(folder / name)
    assert not marker.exists(), "the Lambda payload ran"


def test_unknown_custom_layer_is_refused(tmp_path):
    import tf_keras as keras

    @keras.saving.register_keras_serializable(package="Evil")
    class Payload(keras.layers.Layer):
        def call(self, x):
            return x

    inputs = keras.Input((16, 16, 3))
    keras.Model(inputs, Payload(name="odd")(inputs)).save(tmp_path / "custom.h5", save_format="h5")
    with pytest.raises(ArtifactError, match=r"layer 'odd' is a Evil>Payload layer"):
        safe_load.load_keras_model(tmp_path / "custom.h5")


def test_project_models_pass_the_allow_list(model_dir):
    """The committed quantized model (quantizeml layers) and a float QANA are allowed; the float one loads."""
    safe_load.check_keras_artifact(COMMITTED_QUANTIZED)
    model = safe_load.load_keras_model(model_dir[0] / "qana_float.h5")
    assert model.output_shape == (None, 7)


def _h5_zip_polyglot(h5: Path, out: Path, module: str) -> Path:
    """``h5`` with a Keras v3 zip appended: h5py still reads it as HDF5, zipfile as a zip whose config.json
    names ``module`` (the zip loader imports it: CVE-2025-1550 class)."""
    import io
    import json
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "2.19.0"}))
        z.writestr("config.json", json.dumps({"module": module, "class_name": "Payload", "config": {},
                                              "registered_name": "Payload"}))
        z.writestr("model.weights.h5", b"")
    out.write_bytes(h5.read_bytes() + buffer.getvalue())
    assert h5py.is_hdf5(str(out)) and zipfile.is_zipfile(out)
    return out


def test_hdf5_zip_polyglot_never_reaches_the_zip_loader(model_dir, tmp_path, monkeypatch):
    marker = tmp_path / "payload_ran"
    (tmp_path / "qana_polyglot_payload.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    keras_named = _h5_zip_polyglot(model_dir[0] / "qana_float.h5", tmp_path / "model.keras", "qana_polyglot_payload")
    with pytest.raises(ArtifactError, match=rf"^{re.escape(str(keras_named))}: not a \.h5 file"):
        safe_load.load_keras_model(keras_named)
    h5_named = tmp_path / "model.h5"
    shutil.copy(keras_named, h5_named)
    assert safe_load.load_keras_model(h5_named).output_shape == (None, 7)  # the HDF5 model, by the HDF5 loader
    assert not marker.exists(), "the zip loader imported the payload module"


def test_committed_quantized_model_loads_with_its_quantizeml_layers():
    model = safe_load.load_keras_model(COMMITTED_QUANTIZED)
    assert model.output_shape == (None, 7)
    assert any(type(layer).__module__.startswith("quantizeml") for layer in model.layers)


def _h5_with_config(path: Path, raw) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = raw
    return path


@pytest.mark.parametrize("raw, says", [(7, "is a int64, not JSON text"), (np.arange(3), "is a ndarray, not JSON"),
                                       ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
                                       ('{"class_name": "Functional", "config": ' + '{"a": [' * 3000 + "1"
                                        + "]}" * 3000 + "}", "nested too deeply")],
                         ids=["int", "array", "deep-json", "deep-config"])
def test_odd_model_config_is_an_artifact_error(tmp_path, raw, says):
    path = _h5_with_config(tmp_path / "odd.h5", raw)
    with pytest.raises(ArtifactError, match=rf"^{re.escape(str(path))}: .*{says}"):
        safe_load.check_keras_artifact(path)


def _text_h5(path: Path) -> Path:
    path.write_text("not a model\n")
    return path


def _folder_h5(path: Path) -> Path:
    path.mkdir()
    return path


def _weights_only_h5(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("kernel", data=np.zeros(3))
    return path


@pytest.mark.parametrize("make, says", [(_text_h5, "not an HDF5 file"), (_folder_h5, "is a folder"),
                                        (_weights_only_h5, "no Keras model config")])
def test_h5_that_is_no_model_is_a_one_line_error(model_dir, tmp_path, capsys, make, says):
    path = make(tmp_path / "x.h5")
    assert _evaluate(path, model_dir[1], tmp_path) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {path}: ") and says in line


def test_every_model_load_in_src_goes_through_safe_load():
    """No direct ``load_model`` / ``akida.Model(path)`` in src/ or the notebooks outside safe_load (new loaders
    must use it too; notebooks call ``nbsetup.load_run_model``)."""
    direct = re.compile(r"\bload_model\(|akida\.Model\((?!layers=)")
    files = [*sorted((REPO / "src" / "qana_keras").rglob("*.py")), *sorted((REPO / "notebooks").glob("*.ipynb")),
             REPO / "notebooks" / "nbsetup.py"]
    offenders = [f"{f.relative_to(REPO)}:{n}: {line.strip()}" for f in files if f.name != "safe_load.py"
                 for n, line in enumerate(f.read_text().splitlines(), 1)
                 if direct.search(line) and "just written by this process" not in line]
    assert offenders == []


# --------------------------------------------------------------------------------------------------
# 2. Run-file pointers stay inside the model's folder


@pytest.mark.parametrize("pointer", ["../outside.h5", "ABSOLUTE"])
def test_conversion_json_cannot_point_outside_the_model_folder(model_dir, tmp_path, pointer):
    from qana_keras.io import write_json

    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(COMMITTED_FBZ, folder / "qana.fbz")
    shutil.copy(model_dir[0] / "qana_float.h5", tmp_path / "outside.h5")
    pointer = str(tmp_path / "outside.h5") if pointer == "ABSOLUTE" else pointer
    write_json(folder / "conversion.json", {"artifacts": {"akida": "qana.fbz", "quantized": pointer},
                                            "hybrid": {"boundary": "dense/dequantizer"}})
    with pytest.raises(ArtifactError, match=r"conversion\.json: artifact .* (absolute path|points outside)"):
        load_model_any(folder / "qana.fbz")


def test_inside_folder_accepts_plain_names(tmp_path):
    assert safe_load.inside_folder(tmp_path, "qana_i8_w8_a8.h5", "x.json") == tmp_path / "qana_i8_w8_a8.h5"


def test_notebook_helper_keeps_names_inside_the_run(tmp_path):
    sys.path.insert(0, str(REPO / "notebooks"))
    try:
        from nbsetup import load_run_model
    finally:
        sys.path.remove(str(REPO / "notebooks"))
    shutil.copy(COMMITTED_FBZ, tmp_path / "qana.fbz")
    assert type(load_run_model(tmp_path, "qana.fbz")).__name__ == "Model"
    with pytest.raises(ArtifactError, match="points outside its folder"):
        load_run_model(tmp_path / "sub", "../qana.fbz")


# --------------------------------------------------------------------------------------------------
# 3. Akida .fbz: checksum record and a child-process probe


def test_truncated_fbz_is_a_clear_error_not_a_segfault(tmp_path):
    """Run in a child: on unprotected code akida kills the process (exit 139), which must not take pytest."""
    cut = tmp_path / "qana.fbz"
    cut.write_bytes(COMMITTED_FBZ.read_bytes()[:3000])
    env = {**os.environ, "PYTHONPATH": str(Path(qana_keras.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "qana_keras.cli", "evaluate", "--model", str(cut), "--data",
                           str(tmp_path), "--json", str(tmp_path / "out.json")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert (f"error: {cut}: not a readable Akida model (truncated or corrupt); re-run qana convert"
            in done.stderr.splitlines()[-1])


def test_text_file_named_fbz_is_the_same_clear_error(tmp_path):
    path = tmp_path / "model.fbz"
    path.write_text("hello\n")
    with pytest.raises(ArtifactError, match=r"not a readable Akida model \(truncated or corrupt\); re-run qana"):
        load_model_any(path)


def test_probe_result_is_cached_per_file_state(tmp_path):
    path = tmp_path / "qana.fbz"
    shutil.copy(COMMITTED_FBZ, path)
    safe_load.check_akida_artifact(path)
    stat = path.stat()
    assert safe_load._READABLE[(str(path.resolve()), stat.st_size, stat.st_mtime_ns)] is None
    path.write_bytes(COMMITTED_FBZ.read_bytes()[:3000])  # a new size and mtime: probed again, and refused
    with pytest.raises(ArtifactError, match="not a readable Akida model"):
        safe_load.check_akida_artifact(path)


def test_probe_child_ignores_an_akida_py_in_the_current_folder(tmp_path, monkeypatch):
    """``python -c`` puts the current folder first on sys.path; the probe runs isolated (``-I``)."""
    marker = tmp_path / "shadow_ran"
    (tmp_path / "akida.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "qana.fbz"
    shutil.copy(COMMITTED_FBZ, path)
    safe_load.check_akida_artifact(path)
    assert not marker.exists(), "the probe imported ./akida.py"


def test_recorded_checksum_is_verified(tmp_path):
    from qana_keras.io import write_json

    path = tmp_path / "qana.fbz"
    shutil.copy(COMMITTED_FBZ, path)
    report = {"artifacts": {"akida": "qana.fbz"}, "hybrid": None, "checksums": {"qana.fbz": safe_load.file_record(path)}}
    write_json(tmp_path / "conversion.json", report)
    assert type(load_model_any(path)).__name__ == "Model"
    report["checksums"]["qana.fbz"]["sha256"] = "0" * 64  # the file no longer matches its record
    write_json(tmp_path / "conversion.json", report)
    with pytest.raises(ArtifactError, match=r"SHA-256 recorded in .*conversion\.json.*re-run qana convert"):
        load_model_any(path)


# --------------------------------------------------------------------------------------------------
# 4. `qana evaluate` bad options and inputs


@pytest.mark.parametrize("n_boot", ["0", "-5"])
def test_n_boot_must_be_positive(model_dir, tmp_path, capsys, n_boot):
    run, data = model_dir
    assert main(["evaluate", "--model", str(run / "qana_float.h5"), "--data", str(data), "--json",
                 str(tmp_path / "out.json"), "--n-boot", n_boot]) == 2
    assert f"--n-boot {n_boot}: " in _one_error_line(capsys)


def test_json_onto_an_existing_folder(model_dir, tmp_path, capsys):
    (tmp_path / "out.json").mkdir()
    assert _evaluate(model_dir[0] / "qana_float.h5", model_dir[1], tmp_path) == 2
    line = _one_error_line(capsys)
    assert f"--json {tmp_path / 'out.json'}: is an existing folder" in line


def test_json_into_a_read_only_folder(model_dir, tmp_path, capsys):
    with read_only(tmp_path / "ro") as folder:
        assert main(["evaluate", "--model", str(model_dir[0] / "qana_float.h5"), "--data", str(model_dir[1]),
                     "--json", str(folder / "out.json"), "--cache-dir", str(tmp_path / "cache")]) == 2
    line = _one_error_line(capsys)
    assert f"--json {folder / 'out.json'}: cannot write into {folder}" in line and "writable folder" in line


def test_read_only_cache_dir(model_dir, tmp_path, capsys):
    with read_only(tmp_path / "cache") as cache:
        assert _evaluate(model_dir[0] / "qana_float.h5", model_dir[1], tmp_path) == 2
    line = _one_error_line(capsys)
    assert f"--cache-dir {cache}: cannot write the image cache there" in line and "QANA_CACHE_DIR" in line


def test_truncated_cache_file(model_dir, tmp_path, capsys):
    from qana_keras.data import ham10000
    from qana_keras.data.cache import load_cached_images

    paths = ham10000.load_metadata(model_dir[1])["path"].tolist()
    load_cached_images(paths, 16, tmp_path / "cache", name="ham10000", log=lambda *_: None)
    (npy,) = (tmp_path / "cache").glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:500])
    assert _evaluate(model_dir[0] / "qana_float.h5", model_dir[1], tmp_path) == 2
    line = _one_error_line(capsys)
    assert f"{npy}: truncated or corrupt cache file" in line and "delete it" in line


def test_one_channel_model(model_dir, tmp_path, capsys):
    import tf_keras as keras

    inputs = keras.Input((16, 16, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(7)(x)).save(tmp_path / "gray.h5", save_format="h5")
    shutil.copy(model_dir[0] / "config.yaml", tmp_path / "config.yaml")
    assert _evaluate(tmp_path / "gray.h5", model_dir[1], tmp_path) == 2
    line = _one_error_line(capsys)
    assert f"{tmp_path / 'gray.h5'} takes 1-channel inputs" in line and "RGB" in line


def test_user_cache_dir_wins_over_the_recorded_one(model_dir, tmp_path, monkeypatch):
    """The model's config.yaml records a cache folder (maybe another checkout's): $QANA_CACHE_DIR, and then
    --cache-dir, take precedence."""
    run, data = model_dir
    from qana_keras.config import load_config

    recorded = Path(load_config(run / "config.yaml").data.cache_dir)
    before = set(recorded.glob("*")) if recorded.exists() else set()
    monkeypatch.setenv("QANA_CACHE_DIR", str(tmp_path / "env"))
    common = ["evaluate", "--model", str(run / "qana_float.h5"), "--data", str(data), "--no-figures", "--n-boot", "5"]
    assert main([*common, "--json", str(tmp_path / "a.json")]) == 0
    assert list((tmp_path / "env").glob("*.npy"))
    assert main([*common, "--json", str(tmp_path / "b.json"), "--cache-dir", str(tmp_path / "flag")]) == 0
    assert list((tmp_path / "flag").glob("*.npy"))
    assert (set(recorded.glob("*")) if recorded.exists() else set()) == before


# --------------------------------------------------------------------------------------------------
# 5. CLI: one line, or the traceback on request


def test_debug_flag_shows_the_traceback(model_dir, tmp_path):
    path = _text_h5(tmp_path / "x.h5")
    with pytest.raises(ArtifactError, match="not an HDF5 file"):
        main(["--debug", "evaluate", "--model", str(path), "--data", str(model_dir[1]), "--json",
              str(tmp_path / "out.json")])


# --------------------------------------------------------------------------------------------------
# 6. classes.json: one reader (io.read_classes) for predict, learn and the hardware table


@pytest.mark.parametrize("content", [{"classes": ["bcc", "akiec"]}, ["bcc", "akiec"]], ids=["object", "list"])
def test_classes_json_as_written_or_as_a_bare_list(tmp_path, content):
    from qana_keras.io import read_classes, write_json
    from qana_keras.onchip.learn import _check_classes
    from qana_keras.evaluation.predict import model_classes

    write_json(tmp_path / "classes.json", content)
    assert read_classes(tmp_path) == model_classes(tmp_path / "m.fbz") == ("bcc", "akiec")
    assert _check_classes(tmp_path, 2) == ["bcc", "akiec"]
    assert read_classes(tmp_path / "elsewhere") is None


@pytest.mark.parametrize("content, says", [({"classes": ["akiec", "cat"]}, "unknown class(es) ['cat']"),
                                           (["nv", "nv"], "a class named twice"),
                                           ({"names": ["nv"]}, "expected {\"classes\": [names in output order]}"),
                                           ({"classes": []}, "expected {\"classes\"")])
def test_bad_classes_json_is_one_line_naming_the_file(tmp_path, content, says):
    from qana_keras.io import write_json
    from qana_keras.onchip.learn import LearnError, _check_classes
    from qana_keras.evaluation.predict import model_classes

    write_json(tmp_path / "classes.json", content)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'classes.json'))}: {re.escape(says)}"):
        model_classes(tmp_path / "m.fbz")
    with pytest.raises(LearnError, match=rf"^{re.escape(str(tmp_path / 'classes.json'))}: {re.escape(says)}"):
        _check_classes(tmp_path, 2)


@pytest.mark.parametrize("content", [b'{"artifacts": ', b"\xff\xfe{}"], ids=["cut", "not-utf8"])
def test_corrupt_conversion_json_is_named_once(tmp_path, content):
    shutil.copy(COMMITTED_FBZ, tmp_path / "qana.fbz")
    (tmp_path / "conversion.json").write_bytes(content)
    with pytest.raises(ArtifactError) as error:
        load_model_any(tmp_path / "qana.fbz")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'conversion.json'}: not valid JSON (")
    assert message.count("conversion.json") == 1
    assert message.endswith("; fix or re-create it; or re-run qana convert")
