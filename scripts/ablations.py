#!/usr/bin/env python
"""Train, convert and evaluate the ablations and baselines on one split, seed and recipe; one JSON row each.

usage: python scripts/ablations.py NAME [NAME ...] [--epochs 60] [--out runs/ablations]
       [--reference qana | --reference-run RUN] [--data DIR] [--set SECTION.KEY=VALUE ...]
       python scripts/ablations.py --list

NAME is a key of ``MODELS`` in qana_keras.evaluation.hardware_cost (`qana hardware-cost --list`): qana,
qana-no-sa-eca, qana-no-se, qana-no-attention, qana-32, qana-48, qana-96, akidanet-0.25, akidanet-0.5, plain-cnn,
plain-cnn-96, plain-cnn-128, plain-cnn-24np. Each is the reference recipe configs/qana.yaml plus that model's
``--set`` overrides, plus ``--epochs`` and ``--set``.
Every model uses the same lesion-level split file and training seed.

Steps per model, each skipped when its output already exists (so a killed job reruns cheaply):
  1. ``qana_keras.training.train.train`` into ``OUT/NAME/`` (resumed if it was interrupted)
  2. ``qana_keras.conversion.run.convert_run`` (8-bit quantization, strict conversion; QAT as ``qana convert``)
  3. the Akida model (simulator) on the test split -> ``OUT/NAME/test_logits_akida.npz``
  4. mapping on the Akida 2.0 virtual devices (weights do not change it)
  5. ``OUT/NAME.json``: the row below

Row fields (``OUT/NAME.json``; ``*`` = fractions in [0, 1]):
  name, variant, overrides, epochs, image_size, seed, split_file, run_dir
  params, macs, head_inputs              as `qana hardware-cost` (MACs of the float Keras graph)
  hardware                               qana_keras.evaluation.hardware_cost ``mapping_cost`` of the trained .fbz:
                                         r_succ, min_device, one_pass, nps, nps_by_type, program_bytes,
                                         akida_macs, compute_min_device, devices (``compute_min_device.nps``
                                         is the smallest footprint; ``nps`` is what ``min_device`` uses)
  conversion                             r_succ, validation top-1 float / PTQ / final, QAT epochs run
  selected_epoch                         training epoch kept (best validation macro-F1)
  test.n_images, test.n_lesions
  test.akida, test.float                 top1*, balanced_accuracy*, macro_f1*, macro_auc*, recall per class*,
                                         bootstrap_95 {metric: {low, high}} (lesion bootstrap, n_boot)
  paired_vs_reference                    null for the reference itself or when its predictions are missing;
                                         else {reference, reference_source, n_boot, metrics:
                                         {top1|balanced_accuracy|macro_f1: {difference, low, high, real}}},
                                         difference = this model - reference (Akida test predictions,
                                         paired lesion bootstrap; ``real`` = the 95 % interval excludes 0)
  seconds                                {train, convert, evaluate} of this invocation (0 when skipped)
  versions                               package versions (qana_keras.provenance)
A report generator can glob ``OUT/*.json`` (ignoring ``hardware_cost.json``) and render one table row per file.

The reference (default ``--reference qana``) is the ``qana`` row trained here with the same
``--epochs``; ``--reference-run RUN`` instead pairs against the converted Akida model of an existing
run folder (read only; its predictions are cached in ``OUT/_reference_<RUN name>.npz``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from qana_keras import CLASSES  # qana_keras first: it sets TF_USE_LEGACY_KERAS for tf_keras
from qana_keras.evaluation import hardware_cost
from qana_keras.config import REPO_ROOT, Config, load_config
from qana_keras.failures import run_main
from qana_keras.io import RunFolderError, read_json, write_json
from qana_keras.runs import artifact_paths
from qana_keras.runtime.safe_load import load_akida_model, load_keras_model

MODELS = hardware_cost.MODELS
AKIDA_LOGITS = "test_logits_akida.npz"


def ablation_config(name: str, epochs: int | None = None, extra: list[str] | None = None,
                    data_dir: str | None = None) -> Config:
    extra = list(extra or []) + ([f"train.epochs={epochs}"] if epochs else [])
    config = hardware_cost.model_config(name, extra)
    if data_dir:
        config.data.data_dir = data_dir
    return config


def _same_config(run_dir: Path, config: Config) -> bool:
    return load_config(run_dir / "config.yaml").to_dict() == config.to_dict()


def train_step(run_dir: Path, config: Config, log=print) -> float:
    """Train (or resume, or skip when finished) the run; refuse a folder trained with other settings."""
    from qana_keras.training.train import train

    began = time.perf_counter()
    if (run_dir / "config.yaml").exists():
        if not _same_config(run_dir, config):
            raise RunFolderError(f"{run_dir} holds a run with other settings (see its config.yaml); remove it or "
                                 "pick another --out")
        if (run_dir / "metrics.json").exists():
            log(f"{run_dir.name}: already trained")
            return 0.0
        train(run_dir, resume=True, log=log)
    else:
        train(run_dir, config, log=log)
    return time.perf_counter() - began


def convert_step(run_dir: Path, calibration: int, qat_epochs: int, log=print) -> tuple[dict, float]:
    from qana_keras.conversion.run import convert_run

    from qana_keras.runs import RunFolder

    report_path = RunFolder(run_dir).artifacts()["report"]
    if report_path.exists():
        log(f"{run_dir.name}: already converted")
        return read_json(report_path), 0.0
    began = time.perf_counter()
    report = convert_run(run_dir, num_calibration=calibration, batch_size=32, qat_epochs=qat_epochs,
                         qat_stop_when_met=True, log=log)
    return report, time.perf_counter() - began


def akida_test_predictions(run_dir: Path, test, cache: Path, log=print) -> np.ndarray:
    """Akida (simulator) logits of ``run_dir``'s converted model on the test split, cached in ``cache``.

    The cache also holds the test image ids, so a cache made on another split or data set is refused.
    """
    from qana_keras.runs import RunFolder
    from qana_keras.runtime.load import predict_logits

    ids = test.frame["image_id"].to_numpy().astype(str)
    if cache.exists():
        saved = np.load(cache)
        if not np.array_equal(saved["image_ids"], ids):
            raise ValueError(f"{cache} holds predictions for other test images; delete it to recompute")
        return saved["logits"]
    ak = RunFolder(run_dir).converted()["akida"]
    began = time.perf_counter()
    logits = predict_logits(ak, test.images, batch_size=100)
    log(f"{run_dir.name}: Akida on {len(ids)} test images in {time.perf_counter() - began:.0f}s")
    np.savez_compressed(cache, logits=logits, image_ids=ids, labels=test.labels)
    return logits


def _metrics(labels, logits, groups, n_boot: int, seed: int) -> dict:
    from qana_keras.metrics import bootstrap_intervals, classification_metrics

    m = classification_metrics(labels, logits)
    return {"top1": m["top1"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "macro_auc": m["macro_auc"], "recall": {c: m["per_class"][c]["recall"] for c in CLASSES},
            "bootstrap_95": bootstrap_intervals(labels, logits.argmax(1), groups, n_boot=n_boot, seed=seed)}


def reference_predictions(args, out: Path, config: Config, test, log=print) -> tuple[np.ndarray | None, str | None]:
    """(Akida test logits of the reference, where they came from), or (None, None) if not available yet.

    The reference may read another image size than the model it is paired with: its own test images
    are loaded at its own size (same split, same image ids, checked).
    """
    from dataclasses import replace

    from qana_keras.runs import load_splits

    if args.reference_run:
        run = Path(args.reference_run)
        cache, source = out / f"_reference_{run.name}.npz", str(run)
    else:
        run = out / args.reference
        cache, source = run / AKIDA_LOGITS, str(run)
        if not cache.exists():
            return None, None
    size = load_config(run / "config.yaml").data.image_size
    if size != config.data.image_size and not cache.exists():
        test = load_splits(replace(config.data, image_size=size), log=lambda *_: None)["test"]
    return akida_test_predictions(run, test, cache, log=log), source


def run_one(name: str, args, log=print) -> dict:

    from qana_keras.runs import load_splits
    from qana_keras.metrics import paired_bootstrap_difference
    from qana_keras.provenance import versions

    out = Path(args.out)
    run_dir = out / name
    config = ablation_config(name, args.epochs, args.set, args.data)
    t_train = train_step(run_dir, config, log=log)
    conversion, t_convert = convert_step(run_dir, args.calibration, args.qat_epochs, log=log)

    began = time.perf_counter()
    test = load_splits(config.data, log=lambda *_: None)["test"]
    groups = test.frame["lesion_id"].to_numpy()
    logits = akida_test_predictions(run_dir, test, run_dir / AKIDA_LOGITS, log=log)
    float_model = load_keras_model(artifact_paths(run_dir, config.model.variant)["float"])
    float_logits = float_model.predict(test.images, batch_size=256, verbose=0)
    seed = config.train.seed
    test_row = {"n_images": int(len(test)), "n_lesions": int(len(np.unique(groups))),
                "akida": _metrics(test.labels, logits, groups, args.n_boot, seed),
                "float": _metrics(test.labels, float_logits, groups, args.n_boot, seed)}

    paired = None
    is_reference = not args.reference_run and name == args.reference
    if not is_reference:
        ref_logits, source = reference_predictions(args, out, config, test, log=log)
        if ref_logits is None:
            log(f"{name}: no reference predictions yet ({out / args.reference / AKIDA_LOGITS}); paired bootstrap "
                f"left out; run `scripts/ablations.py {args.reference}` then this again")
        else:
            paired = {"reference": args.reference_run or args.reference, "reference_source": source,
                      "n_boot": args.n_boot, "model": "akida",
                      "metrics": paired_bootstrap_difference(test.labels, ref_logits.argmax(1), logits.argmax(1),
                                                             groups, n_boot=args.n_boot, seed=seed)}

    ak = load_akida_model(artifact_paths(run_dir, config.model.variant)["akida"])
    hardware = hardware_cost.mapping_cost(ak, r_succ=conversion["r_succ"], log=log)
    t_eval = time.perf_counter() - began

    row = {"name": name, "variant": config.model.variant, "overrides": MODELS[name] + list(args.set or []),
           "epochs": config.train.epochs, "image_size": config.data.image_size, "seed": seed,
           "split_file": config.data.split_file, "run_dir": str(run_dir),
           "params": int(float_model.count_params()), "macs": hardware_cost.count_macs(float_model),
           "head_inputs": hardware_cost.head_inputs(float_model),
           "hardware": hardware,
           "conversion": {"r_succ": conversion["r_succ"], "val_top1_float": conversion["val"]["float"]["top1"],
                          "val_top1_ptq": conversion["val"]["ptq"]["top1"],
                          "val_top1_final": conversion["val"]["final"]["top1"],
                          "qat_epochs": conversion["qat"]["epochs"]},
           "selected_epoch": read_json(run_dir / "metrics.json")["selected_epoch"],
           "test": test_row, "paired_vs_reference": paired,
           "seconds": {"train": round(t_train, 1), "convert": round(t_convert, 1), "evaluate": round(t_eval, 1)},
           "versions": versions()}
    write_json(out / f"{name}.json", row)
    a = test_row["akida"]
    log(f"{name}: Akida test top-1 {a['top1']:.4f}  macro-F1 {a['macro_f1']:.4f}  balanced acc "
        f"{a['balanced_accuracy']:.4f}; {row['params']:,} params, {row['macs'] / 1e6:.1f} M MACs, "
        f"{hardware['nps']} NPs on {hardware['min_device']}; wrote {out / (name + '.json')}")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"models: {', '.join(MODELS)}")
    parser.add_argument("--epochs", type=int, help="override train.epochs of configs/qana.yaml (60)")
    parser.add_argument("--out", default=str(REPO_ROOT / "runs" / "ablations"),
                        help="rows OUT/NAME.json, run folders OUT/NAME/")
    parser.add_argument("--reference", default="qana", help="row the paired bootstrap compares against (in OUT)")
    parser.add_argument("--reference-run", help="pair against this existing converted run folder instead (read only)")
    parser.add_argument("--data", help="HAM10000 root (default: $QANA_DATA_DIR or data/ham10000)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra override for every model (e.g. model.widths=8,16 for a smoke run)")
    parser.add_argument("--calibration", type=int, default=1024, help="training images calibrating quantization")
    parser.add_argument("--qat-epochs", type=int, default=3, help="quantization-aware fine-tuning epochs if needed")
    parser.add_argument("--n-boot", type=int, default=1000, help="lesion bootstrap resamples")
    parser.add_argument("--list", action="store_true", help="print the models and their overrides, then stop")
    args = parser.parse_args(argv)
    if args.list or not args.names:
        for name, overrides in MODELS.items():
            print(f"{name:20s} {' '.join(overrides) or '(reference recipe)'}")
        return 0
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    # The reference first, so the others can be paired with it in the same invocation.
    names = sorted(dict.fromkeys(args.names), key=lambda n: n != args.reference)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in names:
        run_one(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
