"""The function behind each `qana` verb: it takes the parsed arguments (``cli.build_parser``), calls one function
of the package and returns the exit status. Heavy modules are imported inside each function: `qana --help` stays
fast."""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import qana_keras
from qana_keras.config import REPO_ROOT, DataConfig, load_config

QUICK_OVERRIDES = ["train.epochs=2", "train.max_images=600", "train.warmup_epochs=0"]
DEFAULT_TRAIN_CONFIG = str(REPO_ROOT / "configs" / "qana.yaml")


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
    if out.is_dir():
        print(f"error: --out {out} is a folder; give a file path, e.g. {out / 'ham10000_lesion_split.csv'}",
              file=sys.stderr)
        return 2
    try:
        if out.exists():
            # Compared in memory: no scratch file next to --out, which could be a file of the user's.
            if out.read_text() == splits.split_csv_text(split):
                print(f"{out} is already this split (seed {args.seed}); unchanged")
            elif not args.force:
                print(f"error: {out} exists and differs from the split made with seed {args.seed}; pass --force to "
                      "replace it (runs trained on the old split will no longer match)", file=sys.stderr)
                return 1
            else:
                splits.write_split(split, out)
                print(f"replaced {out}")
        else:
            splits.write_split(split, out)
            print(f"wrote {out}")
    except OSError as error:
        print(f"error: cannot write the split to {out} ({error.strerror or error}); pick a writable --out path",
              file=sys.stderr)
        return 2
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
    config = load_config(args.config or DEFAULT_TRAIN_CONFIG, overrides)
    if args.data:
        config.data.data_dir = args.data
    return config


def cmd_train(args) -> int:
    from qana_keras.training.train import train

    if args.resume:
        # A resumed run keeps the config it was started with: options that would change it are refused, not ignored.
        given = [flag for flag, value in (("--config", args.config), ("--set", args.set), ("--quick", args.quick),
                                          ("--overwrite", args.overwrite), ("--run", args.run), ("--data", args.data))
                 if value]
        if given:
            print(f"error: --resume continues {args.resume} with its own config.yaml; {', '.join(given)} cannot be "
                  "combined with it (start a new run with --run instead)", file=sys.stderr)
            return 2
        train(args.resume, resume=True, stop_after=args.stop_after)
        return 0
    config = _train_config(args)
    run = args.run or str(REPO_ROOT / "runs" / (config.model.variant + ("-quick" if args.quick else "")))
    train(run, config, overwrite=args.overwrite, stop_after=args.stop_after)
    return 0


def cmd_convert(args) -> int:
    from qana_keras.conversion import ConversionError
    from qana_keras.conversion.run import convert_run

    try:
        convert_run(args.run, bits=args.bits, num_calibration=args.calibration, batch_size=args.batch_size,
                    qat_epochs=args.qat_epochs, qat_learning_rate=args.qat_lr, qat_loss=args.qat_loss,
                    qat_stop_when_met=args.qat_stop_when_met, spike_rate=args.spike_rate, overwrite=args.overwrite,
                    quick=args.quick)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_deploy(args) -> int:
    from qana_keras.onchip.deploy import deploy_run

    deploy_run(args.run, device=args.device, bits=args.bits, quick=args.quick)
    return 0


def cmd_export(args) -> int:
    from qana_keras.evaluation.export import export_run

    export_run(args.run, fmt=args.format, representative=args.representative, seed=args.seed,
               overwrite=args.overwrite, cache_dir=args.cache_dir, command=shlex.join(["qana", *args.argv]))
    return 0


def cmd_hardware_table(args) -> int:
    from qana_keras.reporting.hardware import write_hardware_table

    write_hardware_table(args.models, args.out, readme=args.readme)
    return 0


EVALUATE_DATA_VARIABLES = {"ham10000": "QANA_DATA_DIR", "pad-ufes-20": "QANA_PAD_UFES_DIR"}
"""`qana evaluate --data` defaults per ``--format``: the environment variable naming that data set's root."""


def cmd_evaluate(args) -> int:
    from qana_keras.evaluation.evaluate import evaluate_to_json

    if args.ground_truth and args.format != "isic2018":
        print(f"error: --ground-truth is for --format isic2018; a {args.format} folder has its labels in its own "
              "metadata (drop --ground-truth, or pass --format isic2018)", file=sys.stderr)
        return 2

    model = Path(args.model)
    if model.is_dir() and model.suffix not in (".h5", ".fbz", ".tflite"):  # a run folder: its 8-bit Akida model
        from qana_keras.runs import RunFolder

        model = RunFolder.open(model, "pass a run folder, a .fbz or an .h5").artifacts()["akida"]
        if not model.exists():
            print(f"error: {model} not found; convert the run first (qana convert --run {model.parent})",
                  file=sys.stderr)
            return 2
        args.model = str(model)
    if not args.data:  # the environment variable of this --format's data set; ISIC 2018 has none
        variable = EVALUATE_DATA_VARIABLES.get(args.format)
        args.data = os.environ.get(variable) if variable else None
    if not args.data:
        print(f"error: no {args.format} data folder: pass --data DIR"
              + (f" or set {variable}" if variable else " (--format isic2018 has no default folder)"),
              file=sys.stderr)
        return 2
    evaluate_to_json(args.json, figures=not args.no_figures, model_path=args.model, data=args.data, fmt=args.format,
                     split=args.split, split_file=args.split_file, ground_truth=args.ground_truth,
                     cache_dir=args.cache_dir, group_by=args.group_by, lesion_groups=args.lesion_groups,
                     n_boot=args.n_boot, min_units=args.min_units, tta=args.tta)
    print(f"wrote {args.json}" + ("" if args.no_figures else " and its PNGs"))
    return 0


def cmd_predict(args) -> int:
    from qana_keras.evaluation.predict import (format_table, predict_images, report_skipped, write_csv,
                                    write_predictions_json)

    result = predict_images(args.images, args.model, batch_size=args.batch_size, tta=args.tta)
    if result.rows:
        print(format_table(result))
    report_skipped(result)
    if args.csv:
        write_csv(args.csv, result)
    if args.json:
        write_predictions_json(args.json, result)
    print(f"{len(result.rows)} image(s) classified with {args.model}, {len(result.skipped)} file(s) skipped",
          file=sys.stderr)
    return 1 if result.skipped else 0


def version_text() -> str:
    """`qana --version`: the package, its git commit, the pinned BrainChip stack and TensorFlow."""
    from qana_keras.provenance import git_commit, versions

    packages = versions()["packages"]
    stack = ", ".join(f"{name} {packages.get(name) or 'not installed'}"
                      for name in ("akida", "cnn2snn", "quantizeml", "tensorflow", "tf-keras"))
    return f"qana-keras {qana_keras.__version__} (git {git_commit() or 'unknown'}); {stack}"


def cmd_ablation_row(args) -> int:
    from qana_keras.markdown import ReportError, fmt_ci
    from qana_keras.reporting.ablations import fill_ablation_row

    try:
        row = fill_ablation_row(args.table, args.row, args.evaluation, args.reference, args.run, args.n_boot,
                                args.overwrite)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    r = row["result"]
    print(f"{args.table}: row {args.row!r}: macro-F1 {fmt_ci(r['macro_f1']['value'], r['macro_f1'])}, "
          f"MACs {r['macs']}, params {r['params']}, NPs {r['nps']}")
    return 0


def cmd_report(args) -> int:
    from qana_keras.reporting.report import build_report

    build_report(models_dir=args.models, out_dir=args.out, data_dir=args.data, pad_ufes_dir=args.pad_ufes,
                 cache_dir=args.cache_dir, evaluate=not args.no_evaluate, force=args.force,
                 ablations=args.ablations, readme=args.readme, model_card=args.model_card, n_boot=args.n_boot)
    return 0


def cmd_bench(args) -> int:
    from qana_keras.evaluation.bench import bench_run

    bench_run(args.run, bits=args.bits, min_seconds=args.min_seconds)
    return 0


def cmd_hardware_cost(args) -> int:
    from qana_keras.evaluation.hardware_cost import MODELS, cost_rows
    from qana_keras.io import atomic_write_text, read_json, write_json
    from qana_keras.reporting.studies import hardware_cost_table

    if args.list:
        for name, overrides in MODELS.items():
            print(f"{name:20s} {' '.join(overrides) or '(reference)'}")
        return 0
    rows = read_json(args.render) if args.render else cost_rows(args.names, args.widths, args.set, args.calibration)
    table = hardware_cost_table(rows)
    print(table)
    if args.json and not args.render:
        write_json(args.json, rows)
        print(f"wrote {args.json}")
    if args.markdown:
        atomic_write_text(args.markdown, table + "\n")
    return 1 if not args.render and any(r.get("error") for r in rows) else 0


def cmd_head(args) -> int:
    from qana_keras.refit.head import head_run
    from qana_keras.refit.head_fit import HeadConfig, HeadError

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


def cmd_calibrate(args) -> int:
    from qana_keras.refit.calibrate import calibrate_run

    calibrate_run(args.run, objective=args.objective, fit_on=args.fit_on, bits=args.bits,
                  requantize=args.requantize, overwrite=args.overwrite)
    return 0


def cmd_crop(args) -> int:
    from qana_keras.config import load_config
    from qana_keras.evaluation.crop_study import crop_setup, evaluate_crops, format_report, split_table, write_overlays
    from qana_keras.io import write_json

    if not args.json and not args.overlays:
        print("error: nothing to do: pass --json FILE (evaluation) and/or --overlays DIR (PNG overlays)",
              file=sys.stderr)
        return 2
    if args.compare_saliency and not args.json:
        print("error: --compare-saliency is part of the evaluation: pass --json FILE too", file=sys.stderr)
        return 2
    model = args.model
    if model is None:
        if args.run is None:
            print("error: pass --run RUN or --model PATH", file=sys.stderr)
            return 2
        from qana_keras.runs import RunFolder

        model = str(RunFolder.open(args.run, f"train a model there first (`qana train --run {args.run}`)").float_model())
    setup = crop_setup(model, args.saliency_model, args.saliency, args.baseline, args.threshold, args.margin,
                       args.data, args.split_file, args.cache_dir, args.mask_dir)
    trained_on = setup.pop("classifier_trained_on")
    if args.json:
        report = evaluate_crops(**setup, gradcam_layer=args.layer, overlap=args.overlap, n_boot=args.n_boot,
                                max_images=args.max_images)
        report["classifier_trained_on"] = trained_on
        if args.compare_saliency:
            report["saliency_agreement"] = _saliency_agreement(setup, args)
        report["command"] = shlex.join(["qana", *args.argv])
        print(format_report(report, "val"))
        print(format_report(report, "test"))
        write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.overlays:
        from qana_keras.crop.saliency import load_saliency
        from qana_keras.evaluation.crop_study import load_classifier

        classifier, size = load_classifier(setup["model_path"])
        meta = split_table(setup["data_dir"], args.split, setup["split_file"])
        write_overlays(args.overlays, meta, load_saliency(setup["saliency_path"], setup["method"], args.layer),
                       setup["params"], setup["mask_dir"], size=size, classifier=classifier,
                       per_class=args.per_class)
    return 0


def _saliency_agreement(setup: dict, args) -> dict:
    """How far a second saliency model (e.g. the Akida .fbz of the float saliency model) agrees on the test split."""
    from qana_keras.crop.saliency import load_saliency
    from qana_keras.evaluation.crop_study import saliency_agreement, split_table

    meta = split_table(setup["data_dir"], "test", setup["split_file"], args.max_images)
    agreement = saliency_agreement(meta, load_saliency(setup["saliency_path"], setup["method"], args.layer),
                                   load_saliency(args.compare_saliency, "head"), setup["params"], setup["cache_dir"])
    print(f"saliency agreement with {args.compare_saliency} on test: same class "
          f"{agreement['same_predicted_class']:.3f}, crop-box IoU mean {agreement['crop_box_iou']['mean']:.3f} "
          f"(>=0.5: {agreement['crop_box_iou']['fraction_ge_0.5']:.3f}), map correlation "
          f"{agreement.get('map_correlation_mean')}")
    return {"with": args.compare_saliency, **agreement}


def cmd_learn(args) -> int:
    from qana_keras.onchip.learn import LearnConfig, LearnError, learn_run

    config = LearnConfig(C=args.C, new_weight=args.new_weight, replay=not args.no_replay, seed=args.seed,
                         verify_ham=args.verify_ham)
    try:
        learn_run(args.run, protocols=args.protocol, pad_root=args.pad_ufes, config=config, overwrite=args.overwrite)
    except LearnError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_edge_learn(args) -> int:
    from qana_keras.onchip.edge import EdgeConfig, EdgeError, edge_learn_run

    config = EdgeConfig(neurons_per_class=args.neurons_per_class, weight_factor=args.weight_factor,
                        learning_competition=args.competition, max_per_class=args.max_per_class,
                        shots=tuple(args.shots), seed=args.seed)
    try:
        edge_learn_run(args.run, protocols=args.protocol, pad_root=args.pad_ufes, config=config,
                       overwrite=args.overwrite)
    except EdgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
