"""`qana <verb>`: a thin command line; each verb parses its options and calls one function."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import qana_keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
from qana_keras.config import REPO_ROOT, DataConfig, load_config

QUICK_OVERRIDES = ["train.epochs=2", "train.max_images=600", "train.warmup_epochs=0"]


def _data_config(args) -> DataConfig:
    config = DataConfig()
    if getattr(args, "data", None):
        config.data_dir = args.data
    if getattr(args, "split_file", None):
        config.split_file = args.split_file
    if getattr(args, "size", None):
        config.image_size = args.size
    return config


def cmd_data_validate(args) -> int:
    from qana_keras.data import ham10000

    report = ham10000.validate(_data_config(args).data_dir, check_images=not args.no_images)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_data_split(args) -> int:
    from qana_keras.data import ham10000, splits

    config = _data_config(args)
    meta = ham10000.load_metadata(config.data_dir)
    split = splits.make_lesion_split(meta, args.val_fraction, args.test_fraction, seed=args.seed)
    out = Path(args.out or config.split_file)
    if out.exists():
        existing = out.read_text()
        splits.write_split(split, out.with_suffix(".new.csv"))
        new = out.with_suffix(".new.csv").read_text()
        out.with_suffix(".new.csv").unlink()
        if existing == new:
            print(f"{out} is already this split (seed {args.seed}); unchanged")
        elif not args.force:
            print(f"error: {out} exists and differs from the split made with seed {args.seed}; "
                  "pass --force to replace it (runs trained on the old split will no longer match)", file=sys.stderr)
            return 1
        else:
            splits.write_split(split, out)
            print(f"replaced {out}")
    else:
        splits.write_split(split, out)
        print(f"wrote {out}")
    print(json.dumps(splits.split_summary(split), indent=2))
    return 0


def cmd_data_cache(args) -> int:
    from qana_keras.data import ham10000
    from qana_keras.data.cache import load_cached_images

    config = _data_config(args)
    start = time.perf_counter()
    meta = ham10000.load_metadata(config.data_dir)
    images = load_cached_images(meta["path"].tolist(), config.image_size, config.cache_dir, name="ham10000")
    print(f"{len(images)} images of {config.image_size}x{config.image_size} ready in {time.perf_counter() - start:.1f}s")
    return 0


def cmd_data_download(args) -> int:
    from qana_keras.data.download import download_ham10000

    download_ham10000(Path(args.dest), timeout=args.timeout)
    print(f"HAM10000 is in {args.dest}; run `qana data validate --data {args.dest}`")
    return 0


def _train_config(args):
    overrides = list(args.set or [])
    if args.quick:
        overrides = QUICK_OVERRIDES + overrides
    config = load_config(args.config, overrides)
    if args.data:
        config.data.data_dir = args.data
    return config


def cmd_train(args) -> int:
    from qana_keras.train import train

    if args.resume:
        train(args.resume, resume=True, stop_after=args.stop_after)
        return 0
    config = _train_config(args)
    run = args.run or str(REPO_ROOT / "runs" / (config.model.variant + ("-quick" if args.quick else "")))
    train(run, config, overwrite=args.overwrite, stop_after=args.stop_after)
    return 0


def cmd_convert(args) -> int:
    from qana_keras.convert import ConversionError, convert_run

    try:
        convert_run(args.run, bits=args.bits, num_calibration=args.calibration, batch_size=args.batch_size,
                    qat_epochs=args.qat_epochs, qat_learning_rate=args.qat_lr,
                    qat_stop_when_met=args.qat_stop_when_met, overwrite=args.overwrite)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_deploy(args) -> int:
    from qana_keras.deploy import deploy_run

    deploy_run(args.run, device=args.device, bits=args.bits)
    return 0


def cmd_evaluate(args) -> int:
    from qana_keras.evaluate import evaluate_to_json

    evaluate_to_json(args.json, model_path=args.model, data=args.data, fmt=args.format, split=args.split,
                     split_file=args.split_file, ground_truth=args.ground_truth, cache_dir=args.cache_dir)
    print(f"wrote {args.json}")
    return 0


def cmd_bench(args) -> int:
    import importlib.util

    script = REPO_ROOT / "scripts" / "bench.py"
    if not script.exists():
        print(f"error: {script} not found; `qana bench` runs the benchmark script of the repository checkout",
              file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("qana_bench", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.bench_run(args.run, bits=args.bits, min_seconds=args.min_seconds)
    return 0


def cmd_head(args) -> int:
    from qana_keras.head import HeadConfig, HeadError, head_run

    config = HeadConfig(embedding=args.embedding, components=args.components, sampler=args.sampler,
                        ratio=args.ratio, noise=args.noise, C=args.C, class_weight=args.class_weight,
                        safe_anchors=not args.no_safe_anchors, k_neighbors=args.k_neighbors,
                        safe_k=args.k_neighbors, calibration=args.calibration, seed=args.seed)
    try:
        head_run(args.run, config, overwrite=args.overwrite, n_boot=args.n_boot)
    except HeadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qana", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="validate, split, cache or download HAM10000").add_subparsers(
        dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", help="HAM10000 root (default: $QANA_DATA_DIR or data/ham10000)")
    p = data.add_parser("validate", parents=[common], help="check metadata and every image; non-zero exit on errors")
    p.add_argument("--no-images", action="store_true", help="skip decoding the images (metadata and files only)")
    p.set_defaults(func=cmd_data_validate)
    p = data.add_parser("split", parents=[common], help="make the lesion-level train/val/test split file")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--out", help="split CSV (default: data/splits/ham10000_lesion_split.csv)")
    p.add_argument("--force", action="store_true", help="replace an existing, different split file")
    p.set_defaults(func=cmd_data_split)
    p = data.add_parser("cache", parents=[common], help="decode and resize every image into the on-disk cache")
    p.add_argument("--size", type=int, help="model input size (default 64)")
    p.set_defaults(func=cmd_data_cache)
    p = data.add_parser("download", help="fetch the official HAM10000 release (needs internet)")
    p.add_argument("--dest", default=str(REPO_ROOT / "data" / "ham10000"))
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_data_download)

    p = verbs.add_parser("train", help="train a model; select by validation macro-F1; test once")
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "qana.yaml"), help="YAML config")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--run", help="run folder (default runs/<variant>)")
    p.add_argument("--data", help="HAM10000 root")
    p.add_argument("--quick", action="store_true", help="smoke profile: 2 epochs on ~600 images per split")
    p.add_argument("--resume", metavar="RUN", help="continue a killed run where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--stop-after", type=int, metavar="EPOCHS", help="checkpoint and stop after this many epochs")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("convert", help="quantize (quantizeml) and convert (cnn2snn) a run's float model to Akida")
    p.add_argument("--run", required=True, help="run folder holding <variant>_float.h5 and config.yaml")
    p.add_argument("--bits", type=int, choices=(8, 4), default=8,
                   help="8: Akida 2.0 default; 4: 4-bit weights/activations, 8-bit first layer")
    p.add_argument("--calibration", type=int, default=1024, help="training images used for calibration")
    p.add_argument("--batch-size", type=int, default=32, help="calibration batch size")
    p.add_argument("--qat-epochs", type=int, default=3,
                   help="quantization-aware fine-tuning epochs if PTQ loses > 0.5 pt val top-1 (0 disables)")
    p.add_argument("--qat-lr", type=float, default=1e-5, help="quantization-aware fine-tuning learning rate")
    p.add_argument("--qat-stop-when-met", action="store_true",
                   help="stop fine-tuning at the first epoch meeting every fidelity target on validation (faster)")
    p.add_argument("--overwrite", action="store_true", help="replace existing conversion artifacts")
    p.set_defaults(func=cmd_convert)

    p = verbs.add_parser("deploy", help="run a converted model on a board, or map to virtual devices and simulate; "
                                        "writes fidelity.json/.md")
    p.add_argument("--run", required=True, help="run folder converted with `qana convert`")
    p.add_argument("--device", help="board (substring of its description) or, without a board, one virtual device "
                                    "(TwoNodesIPv2 ... TwelveNodesIPv2, compute_min_device)")
    p.add_argument("--bits", type=int, choices=(8, 4), default=8)
    p.set_defaults(func=cmd_deploy)

    p = verbs.add_parser("evaluate", help="evaluate a .h5 or .fbz model on a HAM10000 or ISIC 2018 folder")
    p.add_argument("--model", required=True, help=".h5 (float or quantized Keras) or .fbz (Akida); its config.yaml "
                                                  "must be beside it")
    p.add_argument("--data", required=True, help="HAM10000 root, or ISIC 2018 image folder (or its parent)")
    p.add_argument("--format", choices=("ham10000", "isic2018"), default="ham10000")
    p.add_argument("--split", choices=("train", "val", "test"), help="HAM10000 only: one split of the split file")
    p.add_argument("--split-file", help="split CSV (default: the split_file of the model's config)")
    p.add_argument("--ground-truth", help="ISIC 2018 one-hot ground-truth CSV")
    p.add_argument("--cache-dir", help="decoded-image cache (default: the model config's cache_dir)")
    p.add_argument("--json", required=True, help="metrics JSON to write")
    p.set_defaults(func=cmd_evaluate)

    p = verbs.add_parser("bench", help="CPU images/s and ms/image of float, quantized and Akida-simulator models")
    p.add_argument("--run", required=True, help="run folder converted with `qana convert`")
    p.add_argument("--bits", type=int, choices=(8, 4), default=8)
    p.add_argument("--min-seconds", type=float, default=3.0, help="minimum timing per model and batch size")
    p.set_defaults(func=cmd_bench)

    from qana_keras.head import HeadConfig  # light: TensorFlow is imported only when a head is fitted

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
    p.add_argument("--class-weight", choices=("none", "balanced"), default=h.class_weight)
    p.add_argument("--no-safe-anchors", action="store_true", help="interpolate from every minority sample")
    p.add_argument("--k-neighbors", type=int, default=h.k_neighbors,
                   help="neighbours of the sampler, the safe-anchor rule and the local perturbation")
    p.add_argument("--calibration", type=int, default=h.calibration,
                   help="training images calibrating the quantization (as `qana convert`)")
    p.add_argument("--seed", type=int, default=h.seed)
    p.add_argument("--n-boot", type=int, default=1000, help="lesion bootstrap resamples of the metrics")
    p.add_argument("--overwrite", action="store_true", help="replace existing head artifacts")
    p.set_defaults(func=cmd_head)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qana_keras.data.ham10000 import DatasetError
    from qana_keras.io import RunFolderError

    try:
        return args.func(args)
    except (DatasetError, RunFolderError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
