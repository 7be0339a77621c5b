#!/usr/bin/env python
"""Teacher-ensemble soft targets for distillation (``train.soft_targets``; see qana_keras.training.distill).

Each image of the split file (every split, so the file also serves analysis) gets the mean softmax of
the teachers, each averaged over the 8 flips/rotations. Refuses to replace an existing file unless
--overwrite.

With --extra-source DIR (an ISIC 2019-layout folder, as in ``data.extra_sources``), that source's
images get targets too, so a run training on HAM10000 plus that source can be distilled.

usage: python scripts/teacher_targets.py TEACHER.h5 [TEACHER.h5 ...] --out FILE.npz
       [--extra-source DIR ...] [--overwrite]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from qana_keras import CLASSES
from qana_keras.config import DataConfig
from qana_keras.data.dataset import load_splits
from qana_keras.failures import run_main
from qana_keras.training.distill import model_probabilities, write_soft_targets
from qana_keras.runtime.safe_load import load_keras_model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teachers", nargs="+", help="float Keras .h5 models over the 7 classes (any input size)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--extra-source", action="append", default=[],
                        help="an extra training source (ISIC 2019 layout) whose images also get targets")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if Path(args.out).exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    start = time.perf_counter()
    data_by_size = {}
    total = None
    for path in args.teachers:
        model = load_keras_model(path)
        if model.output_shape[-1] != len(CLASSES):
            raise SystemExit(f"{path}: {model.output_shape[-1]} outputs; teachers must predict the {len(CLASSES)} "
                             f"classes {', '.join(CLASSES)}")
        size = model.input_shape[1]  # each teacher sees the images at its own input size
        if size not in data_by_size:
            config = DataConfig(image_size=size, extra_sources=tuple(args.extra_source))
            data_by_size[size] = load_splits(config, extra_sources=bool(args.extra_source))
        data = data_by_size[size]
        images = np.concatenate([d.images for d in data.values()])
        probabilities = model_probabilities(model, images)
        total = probabilities if total is None else total + probabilities
        print(f"{path}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    ids = np.concatenate([d.frame["image_id"].to_numpy() for d in data.values()])
    labels = np.concatenate([d.labels for d in data.values()])
    probabilities = total / len(args.teachers)
    write_soft_targets(args.out, ids, probabilities, CLASSES, args.teachers)
    for name, d in data.items():
        rows = np.isin(ids, d.frame["image_id"].to_numpy())
        print(f"{name}: teacher top-1 {np.mean(probabilities[rows].argmax(1) == labels[rows]):.4f}  "
              f"mean max probability {probabilities[rows].max(1).mean():.3f}")
    print(f"wrote {args.out} ({len(ids)} images, {len(args.teachers)} teachers, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    sys.exit(run_main(main))
