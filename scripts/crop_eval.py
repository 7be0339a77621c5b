"""Issue 5: saliency-guided lesion crop and 2x2 tiling fallback vs the whole image, on the lesion-level split.

Prints, for validation (where the fallback threshold is chosen) and test: IoU of the saliency box with
the official mask's bounding box, and top-1 / macro-F1 / balanced accuracy of whole image, saliency crop,
saliency crop + tiling, and mask crop (oracle), with paired lesion-bootstrap differences against the
whole image; writes everything to a JSON file.

    QANA_DATA_DIR=/work/shared/data/ham10000 QANA_CACHE_DIR=cache \\
      python scripts/crop_eval.py --model runs/qana-e60/qana_float.h5 --json reports/crop/e60_head.json

A whole-image model classifying crops sees a framing it was not trained on; the real comparison needs a
crop-trained model (``qana train --set data.crop=saliency --set data.crop_model=...``) as ``--model``:
its saliency model and whole-image baseline then default to that ``data.crop_model``.
"""
from __future__ import annotations

import argparse
import sys

from qana_keras.cli import add_crop_evaluation_arguments
from qana_keras.crop.study import crop_setup, evaluate_crops, format_report
from qana_keras.io import write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="classifier of the crops and tiles (.h5 float or .fbz Akida)")
    add_crop_evaluation_arguments(p)
    p.add_argument("--compare-saliency", metavar="MODEL", help="a second saliency model (e.g. the Akida .fbz of the "
                                                              "float saliency model): its agreement on test")
    p.add_argument("--json", required=True, help="JSON to write")
    args = p.parse_args(argv)

    setup = crop_setup(args.model, args.saliency_model, args.saliency, args.baseline, args.threshold, args.margin,
                       args.data, args.split_file, args.cache_dir, args.mask_dir)
    trained_on = setup.pop("classifier_trained_on")
    report = evaluate_crops(**setup, gradcam_layer=args.layer, overlap=args.overlap, n_boot=args.n_boot,
                            max_images=args.max_images)
    report["classifier_trained_on"] = trained_on
    if args.compare_saliency:
        from qana_keras.crop.study import saliency_agreement, split_table
        from qana_keras.crop.saliency import load_saliency

        meta = split_table(setup["data_dir"], "test", setup["split_file"], args.max_images)
        agreement = saliency_agreement(meta, load_saliency(setup["saliency_path"], setup["method"], args.layer),
                                       load_saliency(args.compare_saliency, "head"), setup["params"],
                                       setup["cache_dir"])
        report["saliency_agreement"] = {"with": args.compare_saliency, **agreement}
        print(f"saliency agreement with {args.compare_saliency} on test: same class "
              f"{agreement['same_predicted_class']:.3f}, crop-box IoU mean {agreement['crop_box_iou']['mean']:.3f} "
              f"(>=0.5: {agreement['crop_box_iou']['fraction_ge_0.5']:.3f}), map correlation "
              f"{agreement.get('map_correlation_mean')}")
    report["command"] = " ".join(["python scripts/crop_eval.py", *(sys.argv[1:] if argv is None else argv)])
    print(format_report(report, "val"))
    print(format_report(report, "test"))
    write_json(args.json, report)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
