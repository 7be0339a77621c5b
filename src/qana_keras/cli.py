"""`qana <verb>`: a thin command line; each verb parses its options here and calls one function of
``qana_keras.commands``."""
from __future__ import annotations

import argparse
import os
import sys

import qana_keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
from qana_keras import commands
from qana_keras.config import REPO_ROOT
from qana_keras.runtime.tta import VIEW_COUNTS


class _VersionAction(argparse.Action):
    """Like argparse's "version" action, but the text (package metadata, git) is computed only when asked."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(commands.version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qana", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    parser.add_argument("--version", action=_VersionAction,
                        help="package version, git commit, pinned akida/cnn2snn/quantizeml and tensorflow; then exit")
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="validate, split, cache or download HAM10000").add_subparsers(
        dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", help="HAM10000 root (default: $QANA_DATA_DIR or data/ham10000)")
    p = data.add_parser("validate", parents=[common], help="check metadata and every image; non-zero exit on errors")
    p.add_argument("--no-images", action="store_true", help="skip decoding the images (metadata and files only)")
    p.set_defaults(func=commands.cmd_data_validate)
    p = data.add_parser("split", parents=[common], help="make the lesion-level train/val/test split file")
    p.add_argument("--seed", type=int, default=42, help="seed of the lesion shuffle (the committed split: 42)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of the lesions in the validation split")
    p.add_argument("--test-fraction", type=float, default=0.15, help="share of the lesions in the test split")
    p.add_argument("--out", help="split CSV (default: data/splits/ham10000_lesion_split.csv)")
    p.add_argument("--force", action="store_true", help="replace an existing, different split file")
    p.set_defaults(func=commands.cmd_data_split)
    p = data.add_parser("cache", parents=[common], help="decode and resize every image into the on-disk cache")
    p.add_argument("--size", type=int, help="model input size (default 64)")
    p.set_defaults(func=commands.cmd_data_cache)
    p = data.add_parser("download", help="fetch the official HAM10000 release (needs internet)")
    p.add_argument("--dest", default=str(REPO_ROOT / "data" / "ham10000"), help="folder to download into "
                                                                          "(default: data/ham10000)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server per request")
    p.set_defaults(func=commands.cmd_data_download)

    p = verbs.add_parser("train", help="train a model; select by validation macro-F1; test once")
    p.add_argument("--config", help=f"YAML config (default {commands.DEFAULT_TRAIN_CONFIG})")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--run", help="run folder (default runs/<variant>)")
    p.add_argument("--data", help="HAM10000 root")
    p.add_argument("--quick", action="store_true", help="smoke profile: 2 epochs on ~600 images per split")
    p.add_argument("--resume", metavar="RUN", help="continue a killed run where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--stop-after", type=int, metavar="EPOCHS", help="checkpoint and stop after this many epochs")
    p.set_defaults(func=commands.cmd_train)

    p = verbs.add_parser("convert", help="quantize (quantizeml) and convert (cnn2snn) a run's float model to Akida")
    p.add_argument("--run", required=True, help="run folder holding <variant>_float.h5 and config.yaml")
    p.add_argument("--bits", type=int, choices=(8, 4), default=8,
                   help="8: Akida 2.0 default; 4: 4-bit weights/activations, 8-bit first layer")
    p.add_argument("--calibration", type=int, default=1024, help="training images used for calibration")
    p.add_argument("--batch-size", type=int, default=32, help="calibration batch size")
    p.add_argument("--qat-epochs", type=int, default=3,
                   help="quantization-aware fine-tuning epochs if PTQ loses > 0.5 pt val top-1 (0 disables)")
    p.add_argument("--qat-lr", type=float, default=1e-5, help="quantization-aware fine-tuning learning rate")
    # The names of conversion.qat.QAT_LOSSES (not imported: the CLI starts without TensorFlow; a test keeps them equal).
    p.add_argument("--qat-loss", choices=("softmax", "logits"), default="softmax",
                   help="what the integer model learns from the float one: its softmax (cross-entropy) or its "
                        "logits (mean squared error)")
    p.add_argument("--qat-stop-when-met", action="store_true",
                   help="stop fine-tuning at the first epoch meeting every fidelity target on validation (faster)")
    p.add_argument("--spike-rate", type=float, default=0.1,
                   help="Akida 1.0 variants: fraction of spike-layer positions that fire after BN tuning")
    p.add_argument("--overwrite", action="store_true", help="replace existing conversion artifacts")
    p.add_argument("--quick", action="store_true", help="smoke profile (make all QUICK=1): <= 600 images per split, "
                                                        "<= 1 QAT epoch; the figures mean nothing")
    p.set_defaults(func=commands.cmd_convert)

    p = verbs.add_parser("deploy", help="run a converted model on a board, or map to virtual devices and simulate; "
                                        "writes fidelity.json/.md")
    p.add_argument("--run", required=True, help="run folder converted with `qana convert`")
    p.add_argument("--device", help="akd1000, akd1500, two-/four-/six-/twelve-nodes-v2 (or the akida class name, "
                                    "e.g. SixNodesIPv2), min (akida.compute_min_device), board or board:N; default: "
                                    "a board if akida.devices() finds one, else the smallest standard device that "
                                    "runs the model in one hardware pass")
    p.add_argument("--bits", type=int, choices=(8, 4), default=8, help="which conversion of the run to use "
                                                                      "(as `qana convert --bits`)")
    p.add_argument("--quick", action="store_true", help="smoke profile (make all QUICK=1): <= 600 test images; "
                                                        "the figures mean nothing")
    p.set_defaults(func=commands.cmd_deploy)

    p = verbs.add_parser("export", help="a run's float model as a fully-int8 TFLite model for CPUs/MCUs (not "
                                        "Akida), evaluated on the test split; writes <variant>_int8.tflite, export.json")
    p.add_argument("--run", required=True, help="run folder (or its <variant>_float.h5) with config.yaml")
    p.add_argument("--format", default="tflite", help="tflite (the only format: full int8, int8 input and output)")
    p.add_argument("--representative", type=int, default=300, help="training images calibrating the quantization")
    p.add_argument("--seed", type=int, default=0, help="seed of the representative-image draw")
    p.add_argument("--cache-dir", help="decoded-image cache (default: $QANA_CACHE_DIR, else the run config's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.set_defaults(func=commands.cmd_export)

    p = verbs.add_parser("hardware-table", help="every published .fbz x every standard Akida device (passes, NPs, "
                                                "program bytes, MACs) with its test accuracy from its folder's JSON")
    p.add_argument("--models", default=str(REPO_ROOT / "models"), help="folder of published model folders")
    p.add_argument("--out", default=str(REPO_ROOT / "reports" / "hardware"), help="writes hardware_table.md/.json")
    p.add_argument("--readme", help="rewrite the <!-- report:hardware-table:start/end --> block of this file")
    p.set_defaults(func=commands.cmd_hardware_table)

    from qana_keras.evaluation.evaluate import FORMATS  # light: no TensorFlow until a model is loaded

    p = verbs.add_parser("evaluate", help="evaluate a .h5 or .fbz model on a HAM10000, PAD-UFES-20 or ISIC 2018 "
                                          "folder: metrics with lesion-bootstrap intervals, ROC, subgroups")
    p.add_argument("--model", required=True, help=".h5 (float or quantized Keras) or .fbz (Akida), its config.yaml "
                                                  "beside it; or a run folder (its 8-bit Akida model)")
    p.add_argument("--data", help="HAM10000 root, PAD-UFES-20 root (metadata.csv + images/), or ISIC 2018 image "
                                  "folder (or its parent); default $QANA_DATA_DIR for ham10000, $QANA_PAD_UFES_DIR "
                                  "for pad-ufes-20, none for isic2018")
    p.add_argument("--format", choices=FORMATS, default="ham10000",
                   help="pad-ufes-20: SCC has no HAM class; it is left out of the metrics, reported under 'excluded'")
    p.add_argument("--split", choices=("train", "val", "test"), help="HAM10000 only: one split of the split file")
    p.add_argument("--split-file", help="split CSV (default: the split_file of the model's config)")
    p.add_argument("--ground-truth", help="ISIC 2018 one-hot ground-truth CSV")
    p.add_argument("--cache-dir", help="decoded-image cache (default: $QANA_CACHE_DIR, else the model config's)")
    p.add_argument("--json", required=True, help="metrics JSON to write; PNGs go beside it (<name>_confusion.png, "
                                                 "_roc.png, _subgroups.png)")
    p.add_argument("--group-by", help="metadata column the bootstrap resamples (default: lesion_id for HAM10000, "
                                      "patient_id for PAD-UFES-20, image_id for ISIC 2018 without groupings)")
    p.add_argument("--lesion-groups", help="ISIC 2018: CSV with columns image,lesion_id (default: a "
                                           "*LesionGroupings*.csv beside the ground truth, if there is one)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--min-units", type=int, help="subgroups with fewer lesions (patients) are flagged too few to "
                                                 "judge (default 50, see qana_keras.evaluation.subgroups)")
    p.add_argument("--tta", type=int, default=1, choices=VIEW_COUNTS,
                   help="average the softmax over this many flips/rotations of each image (default 1: none); on a "
                        "chip each view is one more inference")
    p.add_argument("--no-figures", action="store_true", help="write the JSON only")
    p.set_defaults(func=commands.cmd_evaluate)

    p = verbs.add_parser("predict", help="classify an image or a folder of images with a .fbz (Akida software "
                                         "backend) or .h5 model; exit code 1 if any file was skipped")
    p.add_argument("images", metavar="IMAGE_OR_FOLDER", help="an image file, or a folder whose files are classified")
    p.add_argument("--model", default=str(REPO_ROOT / "models" / "qana" / "qana.fbz"),
                   help="model file (.fbz or .h5); class names from classes.json beside it, else the 7 HAM10000 "
                        "classes (default: models/qana/qana.fbz)")
    p.add_argument("--csv", help="also write the predictions as CSV (file, predicted, probability, top3, p_<class>)")
    p.add_argument("--json", help="also write the predictions and the skipped files as JSON")
    p.add_argument("--batch-size", type=int, default=100, help="images per model call")
    p.add_argument("--tta", type=int, default=1, choices=VIEW_COUNTS,
                   help="average the probabilities over this many flips/rotations of each image (default 1: none)")
    p.set_defaults(func=commands.cmd_predict)

    p = verbs.add_parser("report", help="reports/ (Markdown + PNG) from the committed models' JSON and fresh "
                                        "evaluations; optionally rewrites the marked blocks of a README and docs pages")
    p.add_argument("--models", default=str(REPO_ROOT / "models"), help="folder of published model folders")
    p.add_argument("--out", default=str(REPO_ROOT / "reports"), help="report folder")
    p.add_argument("--data", help="HAM10000 root (default: $QANA_DATA_DIR, else each model's config)")
    p.add_argument("--pad-ufes", help="PAD-UFES-20 root (default: $QANA_PAD_UFES_DIR; skipped when absent)")
    p.add_argument("--cache-dir", help="decoded-image cache (default: $QANA_CACHE_DIR, else the model config's)")
    p.add_argument("--no-evaluate", action="store_true", help="only the JSON already in models/ and reports/")
    p.add_argument("--force", action="store_true", help="re-evaluate even when a cached evaluation matches")
    p.add_argument("--ablations", nargs="*", help="ablation JSON files (default: models/ablations/*.json)")
    p.add_argument("--readme", nargs="+", metavar="MARKDOWN",
                   help="rewrite the generated blocks of these Markdown files (e.g. README.md docs/*.md), each in "
                        "the one file holding its markers: the results table between <!-- report:start --> and "
                        "<!-- report:end --> (required) and the study blocks <!-- report:NAME:start/end -->")
    p.add_argument("--model-card", help="rewrite the report:* blocks of this model card (e.g. MODEL_CARD.md)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of fresh evaluations")
    p.set_defaults(func=commands.cmd_report)

    p = verbs.add_parser("ablation-row", help="fill one row of an ablation table (models/ablations/*.json) from "
                                              "`qana evaluate` JSON files; the report renders it")
    p.add_argument("--table", required=True,
                   help="ablation JSON (format: qana_keras.reporting.ablations.load_ablation)")
    p.add_argument("--row", required=True, help="name of the row to fill")
    p.add_argument("--evaluation", required=True, help="evaluate JSON of this row's model")
    p.add_argument("--reference", help="evaluate JSON of the reference row's model, same images (paired bootstrap)")
    p.add_argument("--run", help="run folder with metrics.json/conversion.json/deploy.json (MACs, params, NPs); "
                                 "default: the evaluated model's folder")
    p.add_argument("--n-boot", type=int, default=1000, help="paired lesion bootstrap resamples against the reference")
    p.add_argument("--overwrite", action="store_true", help="replace a row that already has a result")
    p.set_defaults(func=commands.cmd_ablation_row)

    p = verbs.add_parser("bench", help="CPU images/s and ms/image of float, quantized and Akida-simulator models; "
                                       "writes bench.json in the run folder")
    p.add_argument("--run", required=True, help="run folder converted with `qana convert`")
    p.add_argument("--bits", type=int, choices=(8, 4), default=8,
                   help="which conversion of the run to time (as `qana convert --bits`)")
    p.add_argument("--min-seconds", type=float, default=3.0, help="minimum timing per model and batch size")
    p.set_defaults(func=commands.cmd_bench)

    from qana_keras.evaluation.hardware_cost import MODELS  # light: TensorFlow is imported only when a model is built

    p = verbs.add_parser("hardware-cost", help="params, MACs, NPs, passes and program size of every ablation and "
                                               "baseline on Akida 2.0, untrained (mapping does not depend on weights)")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"models (default all): {', '.join(MODELS)}")
    p.add_argument("--json", help="write the rows here (e.g. runs/ablations/hardware_cost.json)")
    p.add_argument("--markdown", help="also write the table as Markdown here")
    p.add_argument("--widths", choices=("reference", "tiny"), default="reference",
                   help="tiny: a few channels per layer (tests, smoke runs)")
    p.add_argument("--calibration", type=int, default=32, help="random calibration images")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra override applied to every model")
    p.add_argument("--list", action="store_true", help="print the models and their overrides, then stop")
    p.add_argument("--render", metavar="JSON", help="only print (and --markdown) the table of the rows in JSON")
    p.set_defaults(func=commands.cmd_hardware_cost)

    from qana_keras.refit.head_fit import HeadConfig  # no TensorFlow

    h = HeadConfig()
    p = verbs.add_parser("head", help="refit the classifier head on PCA-whitened embeddings of the frozen backbone "
                                      "with embedding-space SMOTE; writes head.npz/json and <variant>_head_float.h5")
    p.add_argument("--run", required=True, help="run folder holding <variant>_float.h5 and config.yaml")
    p.add_argument("--embedding", choices=("quantized", "float"), default=h.embedding,
                   help="fit on the quantized backbone's embeddings (what the Akida dense layer reads) or the float "
                        "model's")
    p.add_argument("--components", type=int, default=h.components, help="PCA-whitened dimensions")
    p.add_argument("--sampler", choices=("none", "smote", "borderline", "svm", "adasyn"), default=h.sampler,
                   help="imbalanced-learn oversampler in the whitened space (none: no synthetic samples)")
    p.add_argument("--ratio", type=float, default=h.ratio,
                   help="oversample every smaller class up to this fraction of the majority count")
    p.add_argument("--noise", type=float, default=h.noise,
                   help="perturbation along each anchor's local principal directions, in local standard deviations")
    p.add_argument("--C", type=float, default=h.C, help="inverse L2 strength of the logistic-regression head")
    p.add_argument("--class-weight", choices=("none", "balanced"), default=h.class_weight,
                   help="loss weights of the logistic-regression head (after oversampling)")
    p.add_argument("--no-safe-anchors", action="store_true", help="interpolate from every minority sample")
    p.add_argument("--k-neighbors", type=int, default=h.k_neighbors,
                   help="neighbours of the sampler, the safe-anchor rule and the local perturbation")
    p.add_argument("--calibration", type=int, default=h.calibration,
                   help="training images calibrating the quantization (as `qana convert`)")
    p.add_argument("--seed", type=int, default=h.seed, help="seed of the calibration draw and the oversampler")
    p.add_argument("--n-boot", type=int, default=1000, help="lesion bootstrap resamples of the metrics")
    p.add_argument("--overwrite", action="store_true", help="replace existing head artifacts")
    p.set_defaults(func=commands.cmd_head)
    p = verbs.add_parser("calibrate", help="per-class decision offsets fitted on validation, folded into head/dense "
                                           "and converted for Akida; temperature scaling and ECE; "
                                           "writes calibration.json/.md/.png")
    p.add_argument("--run", required=True, help="run folder converted with `qana convert`")
    p.add_argument("--objective", choices=("macro_f1", "balanced_accuracy"), default="macro_f1",
                   help="what the offsets maximize on the validation split")
    p.add_argument("--fit-on", choices=("akida", "float"), default="akida",
                   help="fit the offsets on the deployed Akida model's validation logits or the float model's")
    p.add_argument("--bits", type=int, choices=(8, 4), default=8, help="which conversion of the run to use "
                                                                      "(as `qana convert --bits`)")
    p.add_argument("--requantize", action="store_true",
                   help="quantize the calibrated float model from scratch (post-training only) instead of adding "
                        "the offsets to the run's quantized model")
    p.add_argument("--overwrite", action="store_true", help="replace existing calibration artifacts")
    p.set_defaults(func=commands.cmd_calibrate)

    p = verbs.add_parser("crop", help="saliency-guided lesion crop + 2x2 tiling fallback: evaluate against the whole "
                                      "image and the mask crop (--json), draw heat-map overlays (--overlays)")
    p.add_argument("--run", help="run folder: its <variant>_float.h5 classifies (and, unless crop-trained, gives "
                                 "the saliency map)")
    p.add_argument("--model", help="classifier instead of the run's float model (.h5 or .fbz)")
    p.add_argument("--saliency-model", help="whole-image model giving the map (.h5 or .fbz; default: data.crop_model "
                                            "of a crop-trained classifier, else the classifier)")
    p.add_argument("--saliency", choices=("head", "gradcam"), help="head: forward-only map from the last feature map "
                                                                   "(works on .fbz); gradcam: float .h5 only")
    p.add_argument("--layer", help="Grad-CAM layer (default: the last stageN/relu)")
    p.add_argument("--baseline", help="whole-image model of the 'whole' row (default: see crop_setup)")
    p.add_argument("--threshold", type=float, help="salient fraction of the map's range (default: config, 0.5)")
    p.add_argument("--margin", type=float, help="box margin per side, fraction of the box (default: config, 0.15)")
    p.add_argument("--overlap", type=float, default=0.25, help="overlap of the 2x2 fallback tiles")
    p.add_argument("--data", help="HAM10000 root (default: the model config's data_dir)")
    p.add_argument("--split-file", help="lesion-level split CSV (default: the model config's)")
    p.add_argument("--cache-dir", help="image cache (default: $QANA_CACHE_DIR, else the model config's)")
    p.add_argument("--mask-dir", help="official masks (default: <data>/HAM10000_segmentations_lesion_tschandl)")
    p.add_argument("--max-images", type=int, default=0, help="class-stratified subset of each split (0 = all)")
    p.add_argument("--n-boot", type=int, default=1000, help="lesion bootstrap resamples")
    p.add_argument("--json", help="evaluation JSON to write (validation picks the fallback threshold, test reports)")
    p.add_argument("--compare-saliency", metavar="MODEL", help="a second saliency model (e.g. the Akida .fbz of the "
                                                              "float saliency model): its agreement on test, in --json")
    p.add_argument("--overlays", metavar="DIR", help="write crop_overlays_<class>.png (image + boxes, heat map, crop)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="split the overlays draw from")
    p.add_argument("--per-class", type=int, default=3, help="overlay images per class")
    p.set_defaults(func=commands.cmd_crop)
    p = verbs.add_parser("learn", help="update the Akida model's readout from Akida backbone features (host refit, "
                                       "integer write-back): PAD-UFES-20 domain update, SCC as a new class")
    p.add_argument("--run", required=True, help="run folder converted with `qana convert` (Akida 2.0, 8-bit)")
    p.add_argument("--protocol", nargs="+", choices=("domain", "new-class", "class-incremental"),
                   default=["domain", "new-class"], help="class-incremental needs a run trained without vasc and df")
    p.add_argument("--pad-ufes", default=os.environ.get("QANA_PAD_UFES_DIR"),
                   help="PAD-UFES-20 root (metadata.csv + images/; default $QANA_PAD_UFES_DIR)")
    p.add_argument("--C", type=float, default=0.01, help="inverse L2 strength of the logistic-regression readout")
    p.add_argument("--new-weight", type=float, default=4.0,
                   help="loss weight of one new (PAD) image relative to one replayed HAM10000 feature vector")
    p.add_argument("--no-replay", action="store_true", help="refit on the new data only (shows forgetting)")
    p.add_argument("--verify-ham", type=int, default=300,
                   help="HAM test images run end to end through the written Akida model (-1: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-level PAD-UFES-20 split")
    p.add_argument("--overwrite", action="store_true", help="replace existing learn artifacts")
    p.set_defaults(func=commands.cmd_learn)

    p = verbs.add_parser("edge-learn", help="Akida 1.0 on-chip learning (AkidaUnsupervised) on a qana-akd1000 run: "
                                            "class-incremental, PAD-UFES-20 domain update, SCC as a new class")
    p.add_argument("--run", required=True, help="qana-akd1000 run converted with `qana convert --bits 4`")
    p.add_argument("--protocol", nargs="+", choices=("class-incremental", "domain", "new-class"),
                   default=["class-incremental", "domain", "new-class"], help="the learning protocols to run")
    p.add_argument("--pad-ufes", default=os.environ.get("QANA_PAD_UFES_DIR"),
                   help="PAD-UFES-20 root (metadata.csv + images/; default $QANA_PAD_UFES_DIR)")
    p.add_argument("--neurons-per-class", type=int, default=10, help="learning neurons per class")
    p.add_argument("--weight-factor", type=float, default=1.2, help="num_weights = this x mean spikes per image")
    p.add_argument("--competition", type=float, default=0.1, help="AkidaUnsupervised learning_competition")
    p.add_argument("--max-per-class", type=int, default=300, help="HAM10000 training images learned per class (0: all)")
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20, 0],
                   help="class-incremental images per new class (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image draws and the PAD-UFES-20 patient split")
    p.add_argument("--overwrite", action="store_true", help="replace existing edge_learning.json/.md")
    p.set_defaults(func=commands.cmd_edge_learn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; exit status 0 on success, 1 or 2 on an expected failure.

    Expected failures are bad input the user can fix: the project's error classes (DatasetError,
    RunFolderError, safe_load.ArtifactError, ...), ValueError and OSError (a missing, unwritable or corrupt
    file). They print ``error: <message>`` (one line; a DatasetError lists its problems below it), no
    traceback (``qana --debug <verb>`` shows it). Anything else (KeyError, TypeError, ...) is a bug and keeps
    its traceback.
    """
    # progress lines must reach a log file or `| tee` as they happen, not when a block buffer fills
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in outputs that say how they were made
    from qana_keras.failures import run_main

    return run_main(lambda _argv: args.func(args), debug=args.debug or None)


if __name__ == "__main__":
    sys.exit(main())
