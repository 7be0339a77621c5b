#!/usr/bin/env python
"""Compare two float models on the committed lesion split: metrics of each, and B - A paired by lesion.

For matched experiments (same start, same schedule, one change), e.g. fine-tuning with and without
teacher soft targets. Validation figures are what a user would choose by; test differences count only
when the paired lesion-bootstrap interval excludes zero (marked *).

usage: python scripts/paired_compare.py A.h5 B.h5 [--tta] [--json OUT]
"""
import argparse

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from qana_keras.config import DataConfig
from qana_keras.data.dataset import load_splits
from qana_keras.distill import model_probabilities
from qana_keras.io import write_json
from qana_keras.metrics import format_difference, headline_metrics, paired_bootstrap_difference
from qana_keras.safe_load import load_keras_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="baseline float Keras .h5 (64x64 uint8 input)")
    parser.add_argument("b", help="the changed model")
    parser.add_argument("--tta", action="store_true", help="average each model over 8 flips/rotations")
    parser.add_argument("--json")
    args = parser.parse_args()
    data = load_splits(DataConfig())
    models = {key: load_keras_model(path) for key, path in (("a", args.a), ("b", args.b))}
    result = {"a": args.a, "b": args.b, "tta": args.tta}
    for split in ("val", "test"):
        labels, groups = data[split].labels, data[split].frame["lesion_id"].to_numpy()
        predictions = {}
        for key, model in models.items():
            predictions[key] = model_probabilities(model, data[split].images, args.tta).argmax(1)
            result[f"{key}_{split}"] = headline_metrics(labels, predictions[key])
        difference = paired_bootstrap_difference(labels, predictions["a"], predictions["b"], groups)
        result[f"b_minus_a_{split}"] = difference
        print(f"{split}: A {result[f'a_{split}']}  B {result[f'b_{split}']}")
        for name, d in difference.items():
            print(f"  B - A {name}: {format_difference(d)}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
