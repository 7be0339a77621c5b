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

from qana_keras.crop import crop_setup, evaluate_crops, format_report
from qana_keras.io import write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="classifier of the crops and tiles (.h5 float or .fbz Akida)")
    p.add_argument("--saliency-model", help="whole-image model giving the map (.h5 or .fbz; default: data.crop_model "
                                            "of a crop-trained --model, else --model)")
    p.add_argument("--saliency", choices=("head", "gradcam"), help="map (default: the config's data.crop_saliency)")
    p.add_argument("--layer", help="Grad-CAM layer (default: the last stageN/relu)")
    p.add_argument("--baseline", help="whole-image model of the 'whole' row (default: the saliency model when --model "
                                      "is crop-trained, else --model)")
    p.add_argument("--threshold", type=float, help="salient fraction of the map's range (default: config, 0.5)")
    p.add_argument("--margin", type=float, help="box margin per side (default: config, 0.15)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap of the 2x2 fallback")
    p.add_argument("--data", help="HAM10000 root (default: the model config's data_dir)")
    p.add_argument("--split-file", help="lesion-level split (default: the model config's)")
    p.add_argument("--cache-dir", help="image cache (default: $QANA_CACHE_DIR, else the model config's)")
    p.add_argument("--mask-dir", help="official masks (default <data>/HAM10000_segmentations_lesion_tschandl)")
    p.add_argument("--max-images", type=int, default=0, help="class-stratified subset per split (0 = all)")
    p.add_argument("--n-boot", type=int, default=1000)
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
        from qana_keras.crop import saliency_agreement, split_table
        from qana_keras.saliency import load_saliency

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
