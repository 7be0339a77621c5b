#!/usr/bin/env python
"""How far 64x64 float models go on the lesion split: single models, test-time flips, and ensembles.

A ceiling probe for the accuracy targets (issue 3), not a deployable model: an ensemble of N models
costs N Akida passes. Each model's softmax is averaged over the 8 flips/rotations (the training
augmentation's symmetries) when ``--tta``; the ensemble averages the models' probabilities. Every
figure is on the committed lesion-level split; the ensemble is compared with the first model by a
paired lesion bootstrap.

usage: python scripts/ensemble_probe.py MODEL.h5 [MODEL.h5 ...] [--tta] [--json OUT]
"""
import argparse
import sys
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from qana_keras.config import DataConfig
from qana_keras.data.dataset import load_splits
from qana_keras.failures import run_main
from qana_keras.training.distill import model_probabilities
from qana_keras.io import write_json
from qana_keras.metrics import bootstrap_intervals, format_difference, headline_metrics, paired_bootstrap_difference
from qana_keras.runtime.safe_load import load_keras_model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="float Keras .h5 models with 64x64 uint8 input")
    parser.add_argument("--tta", action="store_true", help="average each model over 8 flips/rotations")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    data = load_splits(DataConfig())
    probabilities = {split: [] for split in ("val", "test")}
    rows = []
    for path in args.models:
        model = load_keras_model(path)
        row = {"model": path}
        for split in probabilities:
            p = model_probabilities(model, data[split].images, args.tta)
            probabilities[split].append(p)
            row[split] = headline_metrics(data[split].labels, p.argmax(1))
        rows.append(row)
        print(f"{path}: val {row['val']}  test {row['test']}", flush=True)
    ensemble = {split: headline_metrics(data[split].labels, np.mean(ps, axis=0).argmax(1))
                for split, ps in probabilities.items()}
    test = data["test"]
    groups = test.frame["lesion_id"].to_numpy()
    ensemble_pred = np.mean(probabilities["test"], axis=0).argmax(1)
    first_pred = probabilities["test"][0].argmax(1)
    result = {
        "tta": args.tta, "models": rows, "ensemble": ensemble,
        "ensemble_test_bootstrap_95": bootstrap_intervals(test.labels, ensemble_pred, groups, n_boot=1000),
        "ensemble_minus_first_test": paired_bootstrap_difference(test.labels, first_pred, ensemble_pred, groups),
    }
    print(f"ensemble of {len(rows)}{' with 8-view TTA' if args.tta else ''}: val {ensemble['val']}  "
          f"test {ensemble['test']}")
    for name, d in result["ensemble_minus_first_test"].items():
        print(f"  ensemble - {Path(args.models[0]).name} on test {name}: {format_difference(d)}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    sys.exit(run_main(main))
