#!/usr/bin/env python
"""Compare two models on the committed lesion split: metrics of each, and B - A paired by lesion.

Either model may be a float or quantized Keras ``.h5`` or an Akida ``.fbz`` (run on the akida software backend),
each fed the images at its own input size (from the config.yaml beside it), so a 128 px pretrained model can be
paired with the 64 px reference on the same lesions. Validation figures are what a user would choose by; test
differences count only when the paired lesion-bootstrap interval excludes zero (marked *).

With ``--source DIR`` (an ISIC 2019-layout folder, e.g. $QANA_ISIC2019_DIR) the validation split of that source
is compared too (``val_<folder>``, paired by its lesions): how each model carries to another clinic's images.

Test-time augmentation (``--tta`` = 8 views for both; ``--tta-a N`` / ``--tta-b N`` for one) averages the softmax
over N flips/rotations of each image, for Keras and Akida models alike; the same model with and without it is a
paired comparison of the views (on a chip, N inferences per image).

usage: python scripts/paired_compare.py A B [--tta | --tta-a N --tta-b N] [--source DIR ...] [--json OUT]
"""
import argparse
import sys
from pathlib import Path

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from qana_keras import CLASSES
from qana_keras.config import DataConfig, load_config
from qana_keras.data.dataset import load_splits
from qana_keras.evaluation.evaluate import model_image_size
from qana_keras.failures import run_main
from qana_keras.io import write_json
from qana_keras.metrics import format_difference, headline_metrics, paired_bootstrap_difference
from qana_keras.runtime.load import load_model_any, predict_logits
from qana_keras.runtime.tta import VIEW_COUNTS, tta_logits


def whole_image_size(path: str, model) -> int:
    """The input size of a whole-image model (config.yaml beside it); a one-line error for a lesion-crop model,
    whose inputs this script does not make."""
    size = model_image_size(path, model)
    crop = load_config(Path(path).parent / "config.yaml").data.crop
    if crop != "none":
        raise ValueError(f"{path} was trained on lesion crops (data.crop={crop}) and this script feeds whole images; "
                         "compare crop models with scripts/crop_eval.py (see docs/crop.md)")
    return size


def predictions(path: str, views: int, sources: tuple, splits_by_size: dict) -> dict:
    """Predicted classes of the model at ``path`` on every split, averaged over ``views`` flips/rotations."""
    model = load_model_any(path)
    size = whole_image_size(path, model)
    if size not in splits_by_size:
        splits_by_size[size] = load_splits(DataConfig(image_size=size, extra_sources=sources), extra_sources=True)
    data = splits_by_size[size]
    out = {}
    for split in evaluated(data):
        logits = tta_logits(lambda images: predict_logits(model, images), data[split].images, views)
        if logits.shape[1] != len(CLASSES):  # a 5-class model's argmax would be scored against 7-class labels
            raise ValueError(f"{path} outputs {logits.shape[1]} values per image, not the {len(CLASSES)} classes "
                             f"({', '.join(CLASSES)}) this script compares")
        out[split] = logits.argmax(1)
    return out, data


def evaluated(data: dict) -> list[str]:
    """val, test and each extra source's validation split; never the training images."""
    return [name for name in data if name != "train"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="baseline model (.h5 or .fbz, config.yaml beside it)")
    parser.add_argument("b", help="the changed model")
    parser.add_argument("--tta", action="store_true", help="average both models over 8 flips/rotations")
    parser.add_argument("--tta-a", type=int, choices=VIEW_COUNTS, help="views of model A (default 1, 8 with --tta)")
    parser.add_argument("--tta-b", type=int, choices=VIEW_COUNTS, help="views of model B (default 1, 8 with --tta)")
    parser.add_argument("--source", action="append", default=[], help="an extra source's folder (ISIC 2019 layout)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    splits_by_size: dict = {}
    preds, data = {}, None
    views = {key: given or (8 if args.tta else 1) for key, given in (("a", args.tta_a), ("b", args.tta_b))}
    for key, path in (("a", args.a), ("b", args.b)):
        preds[key], data = predictions(path, views[key], tuple(args.source), splits_by_size)
    result = {"a": args.a, "b": args.b, "tta_views": views, "sources": args.source}
    for split in evaluated(data):
        labels, groups = data[split].labels, data[split].frame["lesion_id"].to_numpy()  # same rows at every size
        for key in ("a", "b"):
            result[f"{key}_{split}"] = headline_metrics(labels, preds[key][split])
        difference = paired_bootstrap_difference(labels, preds["a"][split], preds["b"][split], groups)
        result[f"b_minus_a_{split}"] = difference
        print(f"{split}: A {result[f'a_{split}']}  B {result[f'b_{split}']}")
        for name, d in difference.items():
            print(f"  B - A {name}: {format_difference(d)}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    sys.exit(run_main(main))
