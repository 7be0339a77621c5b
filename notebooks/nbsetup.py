"""Where the notebooks read and write: quick mode (CI) or full mode (the real data and models/qana).

Quick mode (``QANA_NOTEBOOK_QUICK=1``, or ``QUICK = True`` in a notebook's parameters cell): a synthetic
HAM10000 copy (``qana_keras.data.synthetic``), a tiny-width QANA at 16x16 trained for one epoch, all under
runs/nb-quick/. It checks that every step runs, not how good the model is.

Full mode (the default): the real data (``QANA_DATA_DIR``), the committed split, and the committed
reference model models/qana. Nothing expensive is retrained: each notebook works in its own fresh copy of
models/qana (runs/nb-full/<notebook>/qana), so the committed files are never rewritten.
"""
from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from qana_keras.config import REPO_ROOT as REPO
from qana_keras.config import Config, DataConfig, ModelConfig, load_config
from qana_keras.io import display_path

# tf_keras warns on every .h5 save, naming its own file in the virtualenv: the format is chosen on purpose (the
# checked loader reads .h5 only), and the notebooks' outputs should not carry a machine's paths.
warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file", category=UserWarning)


def _warning_without_path(message, category, filename, lineno, line=None) -> str:
    """Other warnings (scikit-learn's convergence notes, ...) stay visible, without the library file's full path."""
    return f"{category.__name__} ({Path(filename).name}:{lineno}): {message}\n"


warnings.formatwarning = _warning_without_path

REFERENCE = REPO / "models" / "qana"
AKD1000_REFERENCE = REPO / "models" / "qana-akd1000"  # the 5-class Akida 1.0 model that learns on the chip
AKD1000_CLASSES = ("akiec", "bcc", "bkl", "mel", "nv")
AKD1000_QUICK_SIZE = 32  # the tiny qana-akd1000 pools more than QANA: 32x32 in, as in tests/test_edge.py
QUICK_ROOT = REPO / "runs" / "nb-quick"
FULL_ROOT = REPO / "runs" / "nb-full"
# Tiny widths as in the tests: the whole pipeline (quantize, convert, map) in seconds.
TINY_MODEL = dict(widths=(8, 16), stem_filters=8, head_channels=8, sa_eca_stages=(2,), se_ratio=4)
QUICK_SIZE = 16  # the tiny model's final map is then 4x4, as the head reads it (no pooling to the head grid)


def load_run_model(run: Path, name: str):
    """The model file ``name`` of the run folder ``run`` (.h5 or .fbz), through ``qana_keras.runtime.safe_load``: the name
    (often read from a run's JSON) must stay inside ``run``, and the file is checked before any library reads it."""
    from qana_keras.runtime.safe_load import inside_folder, load_model_file

    return load_model_file(inside_folder(run, name, run))


def quick_from_env(quick: bool | None = None) -> bool:
    """``quick`` if given (a papermill parameter), else ``QANA_NOTEBOOK_QUICK=1``."""
    if quick is not None:
        return bool(quick)
    return os.environ.get("QANA_NOTEBOOK_QUICK", "0").strip().lower() in ("1", "true", "yes")


@dataclass
class Setup:
    quick: bool
    data: DataConfig  # where the images, the split file and the cache are
    root: Path  # this mode's scratch folder (figures, run folders)
    notebook: str = ""  # full mode: each notebook works in its own copy of models/qana (they may run at once)

    @property
    def mode(self) -> str:
        return "quick (synthetic fixture, tiny model)" if self.quick else "full (real data, committed models/)"

    def describe(self) -> str:
        """Mode, data, split file and scratch folder, shown by ``display_path``: the outputs a notebook keeps must
        not carry one machine's paths."""
        return (f"mode: {self.mode}\ndata: {display_path(self.data.data_dir)}\n"
                f"split file: {display_path(self.data.split_file)}\nscratch: {display_path(self.root)}")

    def figure(self, name: str) -> Path:
        (self.root / "figures").mkdir(parents=True, exist_ok=True)
        return self.root / "figures" / name

    @property
    def run(self) -> Path:
        """The run folder the notebooks read: the quick run (shared, in pipeline order), or this notebook's copy
        of models/qana."""
        return self.root / "run" if self.quick else self.root / (self.notebook or "notebook") / "qana"

    def quick_config(self) -> Config:
        """The quick run's config: tiny widths, one epoch, the fixture."""
        config = Config(data=self.data, model=ModelConfig(**TINY_MODEL))
        config.train.epochs, config.train.batch_size, config.train.warmup_epochs = 1, 16, 0
        return config

    def trained_run(self) -> Path:
        """A run folder with a float model: trains the quick run if it is missing; copies models/qana in full mode."""
        if self.quick:
            if not (self.run / "metrics.json").exists():
                from qana_keras.training.train import train

                train(self.run, self.quick_config(), overwrite=True)
            return self.run
        return reference_copy(self.run, self.data)

    def write_fixture_masks(self) -> None:
        """Quick mode: lesion masks of the fixture's blobs in the official layout."""
        from qana_keras.crop.geometry import MASK_DIR

        if self.quick and not (Path(self.data.data_dir) / MASK_DIR).is_dir():
            from qana_keras.data.synthetic import write_lesion_masks

            write_lesion_masks(self.data.data_dir, MASK_DIR)

    def pad_ufes_dir(self) -> Path:
        """PAD-UFES-20: a synthetic copy in quick mode; else QANA_PAD_UFES_DIR or the shared copy beside the repository."""
        if self.quick:
            root = self.root / "pad_ufes_20"
            if not (root / "metadata.csv").exists():
                from qana_keras.data.synthetic import write_pad_ufes_fixture

                write_pad_ufes_fixture(root)
            return root
        for candidate in (os.environ.get("QANA_PAD_UFES_DIR"), REPO.parent / "shared" / "data" / "pad_ufes_20_partial"):
            if candidate and (Path(candidate) / "metadata.csv").is_file():
                return Path(candidate)
        raise FileNotFoundError("PAD-UFES-20 not found: set QANA_PAD_UFES_DIR (see data/README.md)")

    def converted_run(self) -> Path:
        """A run folder with quantized and Akida models (converts the quick run if needed)."""
        run = self.trained_run()
        if self.quick and not (run / "conversion.json").exists():
            from qana_keras.conversion.run import convert_run

            convert_run(run, num_calibration=64, batch_size=16, qat_epochs=0, overwrite=True)
        return run


    def akd1000_run(self) -> Path:
        """A converted (4-bit, Akida 1.0) qana-akd1000 run: a tiny one trained and converted on the fixture in quick
        mode, a fresh copy of models/qana-akd1000 in full mode."""
        run = self.root / ("run-akd1000" if self.quick else f"{self.notebook or 'notebook'}/qana-akd1000")
        if not self.quick:
            return reference_copy(run, self.data, AKD1000_REFERENCE)
        if not (run / "conversion_i8_w4_a4.json").exists():
            from qana_keras.conversion.run import convert_run
            from qana_keras.training.train import train

            config = self.quick_config()
            config.model = ModelConfig(variant="qana-akd1000", **TINY_MODEL)
            config.data = DataConfig(**{**vars(self.data), "image_size": AKD1000_QUICK_SIZE,
                                        "classes": AKD1000_CLASSES})
            config.train.epochs = 2
            train(run, config, overwrite=True)
            convert_run(run, bits=4, num_calibration=64, batch_size=16, qat_epochs=0, overwrite=True)
        return run


def reference_copy(dest: Path, data: DataConfig, reference: Path = REFERENCE) -> Path:
    """A fresh copy of a committed model folder (default models/qana) in ``dest``, its config pointed at ``data``.

    Fresh on every call, so artifacts a notebook writes (head.json, fidelity.json, ...) come from the
    committed model of now, never from an earlier one. The committed config.yaml names the absolute paths of
    the machine it was trained on; the copy reads this machine's data, split file and cache instead (model and
    training settings unchanged).
    """
    if not (reference / "config.yaml").exists() or not list(reference.glob("*_float.h5")):
        raise FileNotFoundError(f"{reference}: no config.yaml or float model; the reference models are part of the "
                                "repository (models/README.md)")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(reference, dest)
    config = load_config(reference / "config.yaml")
    # Keep the model's own input size and class subset; only where the data lives changes.
    config.data = DataConfig(**{**vars(data), "image_size": config.data.image_size, "classes": config.data.classes})
    config.save(dest / "config.yaml")
    return dest


def setup(quick: bool | None = None, notebook: str = "") -> Setup:
    """The set-up of ``notebook`` for ``quick`` (None: from QANA_NOTEBOOK_QUICK). Quick mode writes the fixture once."""
    quick = quick_from_env(quick)
    if not quick:
        shared = REPO.parent / "shared" / "data" / "ham10000"  # the copy beside the repository, as the Makefile
        found = "QANA_DATA_DIR" not in os.environ and (shared / "HAM10000_metadata.csv").is_file()
        data = DataConfig(data_dir=str(shared)) if found else DataConfig()  # DataConfig reads QANA_DATA_DIR
        if not (Path(data.data_dir) / "HAM10000_metadata.csv").is_file():
            raise FileNotFoundError(f"full mode needs the real HAM10000 in {data.data_dir} (set QANA_DATA_DIR), "
                                    "or run the notebook in quick mode: QANA_NOTEBOOK_QUICK=1")
        FULL_ROOT.mkdir(parents=True, exist_ok=True)
        return Setup(False, data, FULL_ROOT, notebook)
    from qana_keras.data import ham10000, splits
    from qana_keras.data.synthetic import write_ham10000_fixture

    root = QUICK_ROOT
    data_dir, split_file = root / "ham10000", root / "ham10000_lesion_split.csv"
    if not (data_dir / "HAM10000_metadata.csv").exists():
        write_ham10000_fixture(data_dir, n_lesions_per_class=6, images_per_lesion=(1, 2), size=(64, 48))
    if not split_file.exists():
        splits.write_split(splits.make_lesion_split(ham10000.load_metadata(data_dir), seed=42), split_file)
    data = DataConfig(data_dir=str(data_dir), split_file=str(split_file), cache_dir=str(root / "cache"),
                      image_size=QUICK_SIZE)
    return Setup(True, data, root, notebook)
