"""A run folder ``runs/<name>/``: its config, classes, artifact names, overwrite guard, splits and converted model.

Every stage after training reads the previous stage's files through :class:`RunFolder`, so the file names
below are written in one place:

  config.yaml classes.json <variant>_float.h5                                 (qana train)
  <variant>_i8_w8_a8.h5 <variant>.fbz conversion.json                          (qana convert)
  <variant>_i8_w4_a4.h5 <variant>_i8_w4_a4.fbz conversion_i8_w4_a4.json        (qana convert --bits 4)
  deploy.json fidelity.json fidelity.md board.json (4-bit: deploy_i8_w4_a4.json ...)  (qana deploy)
  calibration.json/.md/_reliability.png <variant>_calibrated_float.h5 ...    (qana calibrate)
  learn_<protocol>.json/.md <variant>_learn_<protocol>.fbz                     (qana learn)
  edge_learning.json/.md                                                       (qana edge-learn)

No TensorFlow at import: the report and hardware tables read names from here.
"""
from __future__ import annotations

from pathlib import Path

from qana_keras.io import RunFolderError

# The smoke profile (`make all QUICK=1`, `qana convert/deploy --quick`): the pipeline runs end to end in minutes on
# class-stratified subsets of each split, so its numbers test the plumbing, not the model.
QUICK_MAX_IMAGES = 600
QUICK_QAT_EPOCHS = 1
QUICK_NOTE = ("SMOKE PROFILE (--quick): a few-minute run on small subsets of each split (at most "
              f"{QUICK_MAX_IMAGES} images) with at most {QUICK_QAT_EPOCHS} QAT epoch; its figures mean nothing about "
              "the model. Run without QUICK=1 / --quick for real numbers.")


def quick_fields(quick: bool) -> dict:
    """What every report of a run made with ``--quick`` starts with: ``quick`` and, if set, ``QUICK_NOTE``."""
    return {"quick": quick, **({"note": QUICK_NOTE} if quick else {})}


# --------------------------------------------------------------------------------------------------
# Artifact names


def precision_tag(bits: int) -> str:
    """``i8_w8_a8`` / ``i8_w4_a4``: input-layer weight bits, weight bits, activation bits."""
    if bits not in (8, 4):
        raise ValueError(f"bits must be 8 (Akida 2.0 default) or 4 (Akida 1.0 style), not {bits}")
    return f"i8_w{bits}_a{bits}"


def precision_suffix(bits: int) -> str:
    """What the file names of a non-default precision carry: "" for 8 bits, "_i8_w4_a4" for 4."""
    tag = precision_tag(bits)
    return "" if bits == 8 else f"_{tag}"


def artifact_paths(run_dir: str | Path, variant: str, bits: int = 8) -> dict[str, Path]:
    """Where ``convert_run`` writes (and ``deploy_run`` reads) the artifacts of one precision."""
    run_dir, tag, suffix = Path(run_dir), precision_tag(bits), precision_suffix(bits)
    return {"float": run_dir / f"{variant}_float.h5",
            "quantized": run_dir / f"{variant}_{tag}.h5",
            "akida": run_dir / f"{variant}{suffix}.fbz",
            "report": run_dir / f"conversion{suffix}.json"}


def calibration_paths(run_dir: str | Path, variant: str, bits: int = 8) -> dict[str, Path]:
    """Where ``calibrate_run`` writes its report and the calibrated models of one precision."""
    run_dir, tag, suffix = Path(run_dir), precision_tag(bits), precision_suffix(bits)
    return {"json": run_dir / f"calibration{suffix}.json", "md": run_dir / f"calibration{suffix}.md",
            "png": run_dir / f"calibration{suffix}_reliability.png",
            "float": run_dir / f"{variant}_calibrated_float.h5",
            "quantized": run_dir / f"{variant}_calibrated_{tag}.h5",
            "akida": run_dir / f"{variant}_calibrated{suffix}.fbz"}


# --------------------------------------------------------------------------------------------------
# Splits


def calibration_indices(n: int, count: int, seed: int = 0):
    """Sorted indices of ``min(count, n)`` training images drawn without replacement with ``seed``: the images that
    calibrate a quantization (``qana convert``, and the head, calibration and export steps that must match it)."""
    import numpy as np

    return np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))


def load_splits(data_config, max_images: int = 0, seed: int = 0, log=print, extra_sources: bool = False) -> dict:
    """The train/val/test splits of ``data_config`` as the model sees them: whole images, or lesion crops
    (``data.crop``, made by the saliency model or the masks; ``crop.cache.load_cached_crops``)."""
    from qana_keras.data import dataset

    load_images = None
    if getattr(data_config, "crop", "none") != "none":
        from qana_keras.crop.cache import load_cached_crops

        load_images = load_cached_crops
    return dataset.load_splits(data_config, max_images=max_images, seed=seed, log=log, extra_sources=extra_sources,
                               load_images=load_images)


# --------------------------------------------------------------------------------------------------
# The run folder


class RunFolder:
    """One run folder: its ``config.yaml`` (loaded), the run's output classes, artifact names and splits."""

    def __init__(self, path: str | Path, config=None):
        from qana_keras.config import load_config

        self.path = Path(path)
        self.config = config if config is not None else load_config(self.path / "config.yaml")

    @classmethod
    def open(cls, run_dir: str | Path, todo: str, data_config=None) -> "RunFolder":
        """The run in ``run_dir``; a RunFolderError saying ``todo`` if it has no config.yaml.

        ``data_config`` replaces the run's data settings (tests, other data folders)."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").exists():
            raise RunFolderError(f"{run_dir}: no config.yaml; {todo}")
        folder = cls(run_dir)
        if data_config is not None:
            folder.config.data = data_config
        return folder

    @property
    def variant(self) -> str:
        return self.config.model.variant

    @property
    def classes(self) -> tuple[str, ...]:
        """The output classes of the run's models, in output order (``data.classes`` or all of CLASSES)."""
        from qana_keras.data.dataset import run_classes

        return run_classes(self.config.data)

    def artifacts(self, bits: int = 8) -> dict[str, Path]:
        return artifact_paths(self.path, self.variant, bits)

    def calibration_artifacts(self, bits: int = 8) -> dict[str, Path]:
        return calibration_paths(self.path, self.variant, bits)

    def head_artifacts(self) -> dict[str, Path]:
        """What ``qana head`` reads (``float``) and writes (the head's npz/json and the refitted float model)."""
        return {"float": self.artifacts()["float"], "npz": self.path / "head.npz", "json": self.path / "head.json",
                "model": self.path / f"{self.variant}_head_float.h5"}

    def learn_artifacts(self, protocol: str) -> dict[str, Path]:
        """Report and model of one ``qana learn`` protocol."""
        return {"json": self.path / f"learn_{protocol}.json", "md": self.path / f"learn_{protocol}.md",
                "akida": self.path / f"{self.variant}_learn_{protocol}.fbz"}

    def tagged(self, name: str, bits: int = 8) -> Path:
        """``deploy.json`` -> ``deploy_i8_w4_a4.json`` for 4 bits: the reports of one precision."""
        stem, dot, ext = name.partition(".")
        return self.path / f"{stem}{precision_suffix(bits)}{dot}{ext}"

    def float_model(self) -> Path:
        """The trained float model; FileNotFoundError before any work if training has not saved one."""
        path = self.artifacts()["float"]
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; the run has not saved a float model yet")
        return path

    def akida_model(self, bits: int = 8) -> Path:
        """The converted Akida model; FileNotFoundError saying how to make it."""
        path = self.artifacts(bits)["akida"]
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; run `qana convert --run {self.path}"
                                    f"{'' if bits == 8 else f' --bits {bits}'}` first")
        return path

    @staticmethod
    def refuse_overwrite(paths, overwrite: bool, what: str, flag: str = "--overwrite") -> None:
        """Raise RunFolderError listing the ``paths`` that exist, unless ``overwrite``."""
        existing = [str(p) for p in paths if Path(p).exists()]
        if existing and not overwrite:
            raise RunFolderError(f"{what} artifacts already exist ({', '.join(existing)}); pass {flag} to replace "
                                 "them")

    def splits(self, max_images: int = 0, seed: int = 0, all_classes: bool = False, log=print) -> dict:
        """The run's splits (``load_splits``); ``all_classes``: every HAM10000 class, also for a class-subset run."""
        data = self.config.data
        if all_classes:
            import dataclasses

            data = dataclasses.replace(data, classes=())
        return load_splits(data, max_images=max_images, seed=seed, log=log)

    def converted(self, bits: int = 8) -> dict:
        """The converted artifacts: {"report", "quantized", "akida" (akida.Model or HybridModel), "paths", "variant"}."""
        from qana_keras.io import read_json
        from qana_keras.runtime.load import HybridModel, load_akida_model, load_keras_model, tail_model

        paths = self.artifacts(bits)
        missing = [str(p) for key, p in paths.items() if key != "float" and not p.exists()]
        if missing:
            raise FileNotFoundError(f"{self.path}: no converted model ({', '.join(missing)} missing); "
                                    f"run `qana convert --run {self.path}{'' if bits == 8 else ' --bits 4'}` first")
        report = read_json(paths["report"])
        qmodel = load_keras_model(paths["quantized"])
        ak = load_akida_model(paths["akida"])
        if report.get("hybrid"):
            boundary = report["hybrid"]["boundary"]
            ak = HybridModel(ak, tail_model(qmodel, boundary), boundary)
        return {"report": report, "quantized": qmodel, "akida": ak, "paths": paths, "variant": self.variant}
