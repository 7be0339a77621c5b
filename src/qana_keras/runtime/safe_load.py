"""The one place model artifacts are loaded: Keras ``.h5`` files that would run code and Akida ``.fbz`` files
that would crash the process are refused with a one-line error before any library reads them.

Keras: a legacy ``.h5`` model stores its architecture as JSON (the ``model_config`` attribute); a ``Lambda``
layer in it carries marshalled Python bytecode that ``load_model`` executes, and an unknown custom class
would run whatever is registered under its name. So the JSON is read with h5py first and every layer class,
nested models included, must be in ``ALLOWED_LAYERS``: the tf_keras built-ins the project's models use
(``qana_keras.models``), the model containers, and the quantizeml classes quantizing them produces.

Akida: the akida library segfaults on a truncated ``.fbz``. ``conversion*.json`` records each artifact's
size and SHA-256 (``checksums``), verified when present; and every ``.fbz`` is first opened in a child
process, so a crash there becomes an error here. The result is cached per (path, size, mtime).

TFLite: a ``.tflite`` must be a TFLite flatbuffer (file identifier ``TFL3`` at bytes 4..8) and match the size and
SHA-256 that ``qana export`` records in ``export.json``, when it records one.
"""
from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from qana_keras.io import read_json, sha256_file


class ArtifactError(ValueError):
    """A model file is unreadable, corrupt, changed since it was recorded, or holds layers the project never makes."""


KERAS_LAYERS = frozenset({
    "InputLayer", "Activation", "Add", "BatchNormalization", "Concatenate", "Conv2D", "Dense", "DepthwiseConv2D",
    "Dropout", "Flatten", "GlobalAveragePooling2D", "MaxPooling2D", "MaxPool2D", "Multiply", "ReLU", "Rescaling",
    "SeparableConv2D"})
"""tf_keras built-in layers of ``qana_keras.models`` (MaxPool2D is saved as MaxPooling2D)."""

CONTAINERS = frozenset({"Functional", "Model", "Sequential"})
"""Model classes whose config lists further layers (checked recursively)."""

QUANTIZEML_LAYERS = frozenset(f"Custom>{name}" for name in (
    "QuantizedActivation", "QuantizedAdd", "QuantizedConcatenate", "QuantizedConv2D", "QuantizedDense",
    "QuantizedDepthwiseConv2D", "QuantizedDropout", "QuantizedFlatten", "QuantizedGlobalAveragePooling2D",
    "QuantizedMaxPool2D", "QuantizedReLU", "QuantizedRescaling", "QuantizedSeparableConv2D",
    "Dequantizer", "InputQuantizer", "OutputQuantizer"))
"""quantizeml's counterparts of ``KERAS_LAYERS`` and its interface layers, as saved in ``*_i8_w8_a8.h5``."""

ALLOWED_LAYERS = KERAS_LAYERS | CONTAINERS | QUANTIZEML_LAYERS


# --------------------------------------------------------------------------------------------------
# Keras .h5


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    if not path.is_file():
        raise ArtifactError(f"{path}: is a folder, not a {what} file; pass the model file itself")


def read_keras_config(path: str | Path) -> dict:
    """The ``model_config`` JSON of a Keras ``.h5``, read with h5py (nothing is deserialised)."""
    with _open_h5(path) as f:
        return _parse_config(f.attrs.get("model_config"), Path(path))


@contextmanager
def _open_h5(path: str | Path):
    """An h5py handle on the Keras ``.h5`` at ``path``; one-line errors for a missing or non-HDF5 file."""
    import h5py

    path = Path(path)
    _require_file(path, "Keras .h5 model")
    if not h5py.is_hdf5(str(path)):
        raise ArtifactError(f"{path}: not an HDF5 file; expected a Keras .h5 model saved by qana train/convert")
    try:
        f = h5py.File(path, "r")
    except OSError as error:  # a truncated HDF5 file still has the signature
        raise ArtifactError(f"{path}: unreadable HDF5 file ({error}); re-create it with qana train/convert") from None
    with f:
        yield f


def _parse_config(raw, path: Path) -> dict:
    if raw is None:
        raise ArtifactError(f"{path}: no Keras model config in this .h5 (weights only?); pass a whole model "
                            "saved by qana train/convert")
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path}: its model config is not valid JSON ({error})") from None
    except TypeError:  # an attribute that is no string (a number, an array)
        raise ArtifactError(f"{path}: its model config is a {type(raw).__name__}, not JSON text; not a Keras "
                            "model file") from None
    except RecursionError:
        raise ArtifactError(f"{path}: its model config is nested too deeply to read; not a Keras model "
                            "file") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ArtifactError(f"{path}: its model config has no class_name; not a Keras model file")
    return config


def layer_classes(config: dict, path: Path):
    """Yield (layer name, class name) of the model ``config`` and, recursively, of every layer it contains."""
    if not isinstance(config, dict) or not isinstance(config.get("config", {}), dict):
        raise ArtifactError(f"{path}: malformed model config (a layer entry is not an object)")
    inner = config.get("config", {})
    yield str(inner.get("name", config.get("name", "?"))), str(config.get("class_name"))
    if config.get("class_name") in CONTAINERS:
        layers = inner.get("layers")
        if not isinstance(layers, list):
            raise ArtifactError(f"{path}: malformed model config ({config.get('class_name')} without a layer list)")
        for layer in layers:
            yield from layer_classes(layer, path)


def _has_lambda(obj) -> bool:
    """Any serialised Python function anywhere in the config (e.g. an activation given as a lambda)."""
    if isinstance(obj, dict):
        if obj.get("class_name") in ("__lambda__", "Lambda") or "function_type" in obj:
            return True
        return any(_has_lambda(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_lambda(v) for v in obj)
    return False


def check_keras_artifact(path: str | Path) -> dict:
    """Refuse ``path`` unless every layer class is in ``ALLOWED_LAYERS``; returns its model config."""
    return _check_config(read_keras_config(path), Path(path))


def _check_config(config: dict, path: Path) -> dict:
    try:
        classes = list(layer_classes(config, path))
        lambdas = _has_lambda(config)
    except RecursionError:
        raise ArtifactError(f"{path}: its model config is nested too deeply to check; not a Keras model "
                            "file") from None
    for name, class_name in classes:
        if class_name not in ALLOWED_LAYERS:
            raise ArtifactError(f"{path}: layer {name!r} is a {class_name} layer; refused before loading: only the "
                                "project's layer classes are allowed (tf_keras built-ins of qana_keras.models and "
                                "their quantizeml versions; see qana_keras.runtime.safe_load.ALLOWED_LAYERS)")
    if lambdas:
        raise ArtifactError(f"{path}: its model config holds a serialised Python function; refused before loading: "
                            "only the project's layer classes are allowed")
    return config


def load_keras_model(path: str | Path):
    """A float or quantized Keras model from ``path``, checked first (``check_keras_artifact``), not compiled.

    The config is checked and the model loaded through one h5py handle: no window to swap the file between
    the two, and Keras takes its legacy HDF5 loader whatever else the file looks like (a file both HDF5 and
    zip, named ``*.keras``, would go to the zip loader, which imports the modules its ``config.json`` names)."""
    path = Path(path)
    if path.suffix != ".h5":
        raise ArtifactError(f"{path}: not a .h5 file; qana loads Keras models only from the .h5 files that "
                            "qana train/convert write")
    with _open_h5(path) as f:
        config = _check_config(_parse_config(f.attrs.get("model_config"), path), path)
        verify_recorded_checksum(path)
        if any(c.startswith("Custom>") for _, c in layer_classes(config, path)):
            import quantizeml  # noqa: F401  (registers its layers with Keras; ~3 s, so only when needed)
        import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
        import tf_keras as keras

        return keras.models.load_model(f, compile=False)


# --------------------------------------------------------------------------------------------------
# Run-file pointers and recorded checksums


def inside_folder(folder: str | Path, name: str, source: str | Path) -> Path:
    """``folder / name`` for a file name read from the run file ``source``; refused if it leaves ``folder``."""
    folder = Path(folder)
    if not isinstance(name, str) or not name:
        raise ArtifactError(f"{source}: artifact entry {name!r} is not a file name")
    if Path(name).is_absolute():
        raise ArtifactError(f"{source}: artifact {name!r} is an absolute path; run files may only name files in "
                            f"their own folder {folder}")
    target = (folder / name).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise ArtifactError(f"{source}: artifact {name!r} points outside its folder {folder}; run files may only "
                            "name files in their own folder")
    return folder / name


def file_record(path: str | Path) -> dict:
    """Size and SHA-256 of an artifact, as ``conversion*.json`` records them under ``checksums``."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def conversion_reports(folder: Path):
    """Yield (path, report) of every ``conversion*.json`` in ``folder``."""
    for candidate in sorted(Path(folder).glob("conversion*.json")):
        try:
            report = read_json(candidate)
        except ValueError as error:  # read_json names the file
            raise ArtifactError(f"{error}; or re-run qana convert") from None
        if not isinstance(report, dict):
            raise ArtifactError(f"{candidate}: not a conversion report (a JSON object); re-run qana convert")
        yield candidate, report


def reports_naming(fbz: str | Path) -> list[tuple[Path, dict]]:
    """(path, report) of each ``conversion*.json`` beside ``fbz`` whose Akida artifact is ``fbz``."""
    fbz = Path(fbz)
    return [(path, report) for path, report in conversion_reports(fbz.parent)
            if isinstance(report.get("artifacts"), dict) and report["artifacts"].get("akida") == fbz.name]


def verify_recorded_checksum(path: Path) -> None:
    """If a ``conversion*.json`` beside ``path`` records its size and SHA-256, the file must still match."""
    path = Path(path)
    for source, report in conversion_reports(path.parent):
        record = (report.get("checksums") or {}).get(path.name)
        if not isinstance(record, dict):
            continue
        size = path.stat().st_size
        if size != record.get("bytes") or sha256_file(path) != record.get("sha256"):
            raise ArtifactError(f"{path}: {size} bytes, not the {record.get('bytes')} bytes and SHA-256 recorded in "
                                f"{source}: changed or truncated since conversion; re-run qana convert")


# --------------------------------------------------------------------------------------------------
# Akida .fbz

_READABLE: dict[tuple[str, int, int], str | None] = {}  # (path, size, mtime_ns) -> None if readable, else why

_CHILD = "import sys, akida; akida.Model(sys.argv[1])"


def _child_failure(path: Path) -> str | None:
    """Open ``path`` with akida in a child process; None if it loads, else how the child ended."""
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return "akida did not finish reading it in 600 s"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        return f"akida crashed reading it (signal {-done.returncode})"
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return f"akida: {lines[-1].strip()}" if lines else f"akida exited with status {done.returncode}"


def check_akida_artifact(path: str | Path) -> None:
    """Refuse an ``.fbz`` that does not match its recorded checksum or that akida cannot read without dying."""
    path = Path(path)
    _require_file(path, "Akida .fbz model")
    verify_recorded_checksum(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _READABLE:
        _READABLE[key] = _child_failure(path)
    if _READABLE[key] is not None:
        raise ArtifactError(f"{path}: not a readable Akida model (truncated or corrupt); re-run qana convert "
                            f"[{_READABLE[key]}]")


def load_akida_model(path: str | Path):
    """An ``akida.Model`` from ``path``, checked first (``check_akida_artifact``)."""
    import akida

    check_akida_artifact(path)
    return akida.Model(str(path))


# --------------------------------------------------------------------------------------------------
# TFLite .tflite

TFLITE_IDENTIFIER = b"TFL3"
"""The flatbuffer file identifier of a TFLite model, at bytes 4..8."""


def check_tflite_artifact(path: str | Path, verify: bool = True) -> bytes:
    """The bytes of the TFLite model at ``path``; refused unless it is a TFLite flatbuffer and (``verify``) matches
    the size and SHA-256 recorded in the ``export.json`` beside it."""
    path = Path(path)
    _require_file(path, "TFLite .tflite model")
    content = path.read_bytes()
    if content[4:8] != TFLITE_IDENTIFIER:
        raise ArtifactError(f"{path}: not a TFLite model (no {TFLITE_IDENTIFIER.decode()} flatbuffer identifier at "
                            "bytes 4..8); re-create it with qana export")
    record = None
    if verify and (path.parent / "export.json").is_file():
        try:
            record = (read_json(path.parent / "export.json").get("checksums") or {}).get(path.name)
        except (ValueError, AttributeError):
            raise ArtifactError(f"{path.parent / 'export.json'}: not an export report (a JSON object); re-run "
                                "qana export --overwrite") from None
    if isinstance(record, dict) and (len(content) != record.get("bytes") or _sha256(content) != record.get("sha256")):
        raise ArtifactError(f"{path}: {len(content)} bytes, not the {record.get('bytes')} bytes and SHA-256 recorded "
                            f"in {path.parent / 'export.json'}: changed or truncated since export; re-run qana export "
                            "--overwrite")
    return content


def _sha256(content: bytes) -> str:
    import hashlib

    return hashlib.sha256(content).hexdigest()


def load_tflite_model(path: str | Path, verify: bool = True):
    """A ``qana_keras.runtime.tflite.TFLiteModel`` from ``path``, checked first (``check_tflite_artifact``)."""
    from qana_keras.runtime.tflite import TFLiteModel

    path = Path(path)
    content = check_tflite_artifact(path, verify)
    try:
        return TFLiteModel(content, path.name)
    except (ValueError, RuntimeError) as error:  # the interpreter verifies the flatbuffer
        raise ArtifactError(f"{path}: not a readable TFLite model ({' '.join(str(error).split())}); re-create it "
                            "with qana export") from None


def load_model_file(path: str | Path):
    """A Keras model from ``.h5``, an ``akida.Model`` from ``.fbz`` or a ``TFLiteModel`` from ``.tflite``, checked
    first (no hybrid reassembly)."""
    path = Path(path)
    if path.suffix == ".h5":
        return load_keras_model(path)
    if path.suffix == ".fbz":
        return load_akida_model(path)
    if path.suffix == ".tflite":
        return load_tflite_model(path)
    raise ArtifactError(f"{path}: unknown model format {path.suffix!r}; expected .h5 (Keras), .fbz (Akida) or "
                        ".tflite (TFLite, from qana export)")
