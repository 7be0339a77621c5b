"""``qana convert``: quantize, (fine-tune,) convert and check the float model of a run folder.

Run folder artifacts (``runs/<name>/``), next to ``<variant>_float.h5``:
  <variant>_i8_w8_a8.h5     quantized Keras model (8-bit input weights, 8-bit weights and activations)
  <variant>.fbz             the Akida model (for a hybrid: the Akida prefix only)
  conversion.json           r_succ, float layers, PTQ/QAT validation top-1 vs float, calibration, seconds
The 4-bit option writes ``<variant>_i8_w4_a4.h5``, ``<variant>_i8_w4_a4.fbz`` and
``conversion_i8_w4_a4.json`` instead, so both precisions can live in one run folder.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from qana_keras.conversion import AKIDA_V1_VARIANTS, HARDWARE_NATIVE, ConversionError
from qana_keras.conversion.qat import TARGETS, _public, _val_scores, quantization_aware_finetune, target_gap
from qana_keras.conversion.quantize import integer_completeness, quantize_for_akida, to_akida
from qana_keras.conversion.spike import AKIDA_V1_SPIKE_LAYERS, tune_spike_rate
from qana_keras.io import atomic_path, display_path, write_json
from qana_keras.runs import (QUICK_MAX_IMAGES, QUICK_NOTE, QUICK_QAT_EPOCHS, RunFolder, calibration_indices,
                            precision_tag, quick_fields)
from qana_keras.runtime.devices import model_macs
from qana_keras.runtime.load import HybridModel, load_keras_model, predict_logits, tail_model
from qana_keras.runtime.safe_load import file_record

MAX_PTQ_TOP1_DROP = TARGETS["top1_drop"]


def variant_needs_4_bits(run_dir: Path, bits: int) -> bool:
    """True when ``run_dir`` holds an Akida 1.0 variant and ``bits`` is not 4 (checked before any work)."""
    from qana_keras.config import load_config

    config_file = Path(run_dir) / "config.yaml"
    return (bits != 4 and config_file.exists()
            and load_config(config_file).model.variant in AKIDA_V1_VARIANTS)


def convert_run(run_dir: str | Path, bits: int = 8, num_calibration: int = 1024, batch_size: int = 32,
                calibration_epochs: int = 1, qat_epochs: int = 3, qat_learning_rate: float = 1e-5,
                qat_loss: str = "softmax", qat_threshold: float = MAX_PTQ_TOP1_DROP, qat_stop_when_met: bool = False,
                seed: int = 0, overwrite: bool = False, data_config=None, spike_rate: float = 0.1, quick: bool = False,
                log=print) -> dict:
    """Quantize, (fine-tune,) convert and check the float model of ``run_dir``; returns conversion.json.

    Calibration uses ``num_calibration`` training images picked at random with ``seed``, in batches
    of ``batch_size``: quantizeml sets each activation range from the first batch and then follows a
    moving maximum, so smaller batches mean more updates; on the reference run, batches of 32 lost
    0.3 pt of validation top-1 where batches of 100 lost 0.8 pt (1024 images, 1 epoch). If
    post-training quantization misses a fidelity target on validation (top-1 drop > ``qat_threshold``,
    macro-F1 drop > 1 pt, argmax agreement with the float model < 99 %, a class losing > 2 pt recall)
    and ``qat_epochs`` > 0, quantization-aware fine-tuning runs (see ``quantization_aware_finetune``):
    all ``qat_epochs`` with the best on validation kept, or until validation meets every target with
    ``qat_stop_when_met`` (faster; on the reference run that first epoch had less margin on test). ``data_config``
    overrides the run's data settings (tests). Akida 1.0 variants (``AKIDA_V1_VARIANTS``) need bits=4; those with a
    spike layer (``AKIDA_V1_SPIKE_LAYERS``) first get it tuned to fire on ``spike_rate`` of its positions
    (``spike.tune_spike_rate``). ``quick``: the smoke profile (``QUICK_NOTE``): subsets of ``QUICK_MAX_IMAGES`` per split, at most ``QUICK_QAT_EPOCHS``.
    """
    if variant_needs_4_bits(run_dir, bits):
        raise ValueError(f"{run_dir} holds an Akida 1.0 variant, which runs 4-bit models: pass --bits 4")
    import akida

    began = time.perf_counter()
    run_dir = Path(run_dir)
    run = RunFolder.open(run_dir, f"train a model there first (`qana train --run {run_dir}`)", data_config)
    config, variant = run.config, run.variant
    paths = run.artifacts(bits)
    run.float_model()
    run.refuse_overwrite([p for key, p in paths.items() if key != "float"], overwrite, "conversion",
                         flag="--overwrite (overwrite=True)")
    native = variant in HARDWARE_NATIVE

    if quick:
        log(QUICK_NOTE)
        qat_epochs = min(qat_epochs, QUICK_QAT_EPOCHS)
    model = load_keras_model(paths["float"])
    data = run.splits(max_images=QUICK_MAX_IMAGES if quick else 0, seed=seed, log=log)
    train, val = data["train"], data["val"]
    classes = run.classes
    float_val = _val_scores(model, val.images, val.labels, classes=classes)
    log(f"float {variant}: val top-1 {float_val['top1']:.4f}  macro-F1 {float_val['macro_f1']:.4f}")

    picked = calibration_indices(len(train), num_calibration, seed)
    if len(picked) < num_calibration:
        log(f"calibrating on all {len(picked)} training images (fewer than the {num_calibration} asked)")
    spike_tuning = None
    to_quantize = model
    if variant in AKIDA_V1_SPIKE_LAYERS:
        to_quantize, spike_tuning = tune_spike_rate(model, train.images[picked], AKIDA_V1_SPIKE_LAYERS[variant],
                                                    rate=spike_rate)
        log(f"spike layer {spike_tuning['layer']}: firing rate {spike_tuning['rate_before']:.3f} -> "
            f"{spike_tuning['rate_after']:.3f} of positions (BN offsets shifted; target {spike_rate})")
    log(f"quantizing {variant} to {precision_tag(bits)} (quantizeml rebuilds the graph; a minute or more) ...")
    t0 = time.perf_counter()
    qmodel, cut = quantize_for_akida(to_quantize, train.images[picked], variant, bits, batch_size, calibration_epochs,
                                     hardware_native=native, log=log)
    quantize_seconds = time.perf_counter() - t0
    completeness = integer_completeness(qmodel)
    ptq_val = _val_scores(qmodel, val.images, val.labels, float_val["logits"], classes=classes)
    gap = target_gap(ptq_val, float_val)
    log(f"{precision_tag(bits)} PTQ: val top-1 {ptq_val['top1']:.4f} "
        f"({(ptq_val['top1'] - float_val['top1']) * 100:+.2f} pt vs float)  macro-F1 {ptq_val['macro_f1']:.4f} "
        f"({(ptq_val['macro_f1'] - float_val['macro_f1']) * 100:+.2f} pt)  argmax agreement "
        f"{ptq_val['argmax_agreement']:.4f}  target gap {gap:.2f}  r_succ {completeness['r_succ']:.3f}  "
        f"({quantize_seconds:.0f}s)")

    top1_drop = float_val["top1"] - ptq_val["top1"]
    qat = {"done": False, "epochs": 0, "ptq_target_gap": gap, "targets": TARGETS,
           "trigger": f"validation top-1 drop > {qat_threshold * 100:.2f} pt, or any other target missed "
                      "(target gap > 1)"}
    if top1_drop > qat_threshold or gap > 1.0:
        why = (f"PTQ misses the fidelity targets on validation (target gap {gap:.2f}, top-1 drop "
               f"{top1_drop * 100:.2f} pt)")
        if qat_epochs > 0:
            log(f"{why}: quantization-aware fine-tuning (distillation from the float model) for up to {qat_epochs} "
                f"epochs at learning rate {qat_learning_rate:g}")
            t0 = time.perf_counter()
            log(f"float model logits on {len(train)} training images (distillation targets) ...")
            teacher = predict_logits(model, train.images, batch_size=256)
            result = quantization_aware_finetune(qmodel, train.images, teacher, val, float_val, ptq_val, qat_epochs,
                                                 qat_learning_rate, batch_size=config.train.batch_size, seed=seed,
                                                 loss=qat_loss, stop_when_met=qat_stop_when_met, log=log)
            qat.update(done=True, epochs=len(result["history"]), max_epochs=qat_epochs,
                       seconds=round(time.perf_counter() - t0, 1), **result)
        else:
            log(f"{why}, but quantization-aware fine-tuning is disabled (qat_epochs=0)")
    final_val = _val_scores(qmodel, val.images, val.labels, float_val["logits"], classes=classes)
    final_gap = target_gap(final_val, float_val)

    boundary = None
    if cut is not None:
        boundary = f"{cut}/dequantizer"
        if boundary not in {layer.name for layer in qmodel.layers}:
            raise ConversionError(f"{variant}: quantizing up to '{cut}' did not end in the Dequantizer '{boundary}'")
    log("converting to Akida (cnn2snn; a minute or more) ...")
    t0 = time.perf_counter()
    akida_model = to_akida(qmodel, strict=native or cut is None, variant=variant, expected_last=boundary, log=log)
    convert_seconds = time.perf_counter() - t0

    # A quick agreement check on validation images; deploy measures fidelity on the whole test split.
    check = val.images[:100]
    runner = HybridModel(akida_model, tail_model(qmodel, boundary), boundary) if boundary else akida_model
    q_logits, a_logits = predict_logits(qmodel, check), predict_logits(runner, check)
    agreement = float(np.mean(q_logits.argmax(1) == a_logits.argmax(1)))
    max_diff = float(np.max(np.abs(q_logits - a_logits)))
    log(f"Akida vs quantized Keras on {len(check)} validation images: argmax agreement {agreement:.3f}, "
        f"max |logit difference| {max_diff:.4g}")

    with atomic_path(paths["quantized"]) as tmp:
        qmodel.save(tmp, include_optimizer=False, save_format="h5")
    with atomic_path(paths["akida"]) as tmp:
        akida_model.save(str(tmp))
    report = {
        **quick_fields(quick),
        "variant": variant,
        "precision": precision_tag(bits),
        "hardware_native": native,
        "r_succ": completeness["r_succ"],
        "integer_layers": completeness["integer_layers"],
        "counted_layers": completeness["counted_layers"],
        "float_layers": completeness["float_layers"],
        "r_succ_definition": completeness["definition"],
        "hybrid": None if boundary is None else {
            "cut_after": cut, "boundary": boundary,
            "akida_output_shape": list(akida_model.output_shape),
            "host_layers": len(completeness["float_layers"]),
            "why": "an Akida model has one output; this is the last layer whose output alone feeds the rest"},
        "akida": {"layers": len(akida_model.layers), "output_shape": list(akida_model.output_shape),
                  "ip_version": str(akida_model.ip_version), "macs": model_macs(akida_model),
                  "akida_version": akida.__version__},
        "val": {"float": _public(float_val), "ptq": _public(ptq_val), "final": _public(final_val),
                "ptq_top1_drop_pt": round(top1_drop * 100, 3),
                "final_top1_drop_pt": round((float_val["top1"] - final_val["top1"]) * 100, 3),
                "final_macro_f1_drop_pt": round((float_val["macro_f1"] - final_val["macro_f1"]) * 100, 3),
                "final_target_gap": final_gap, "final_targets_met": final_gap <= 1.0},
        "qat": qat,
        "spike_tuning": spike_tuning,
        "calibration": {"images": int(len(picked)), "requested": num_calibration,
                        "source": "train split, seeded random subset", "seed": seed,
                        "batch_size": batch_size, "epochs": calibration_epochs},
        "akida_vs_quantized_val_check": {"images": int(len(check)), "argmax_agreement": agreement,
                                         "max_abs_logit_diff": max_diff},
        "artifacts": {k: p.name for k, p in paths.items()},
        # Checked whenever these files are loaded (safe_load.verify_recorded_checksum): a truncated copy is refused.
        "checksums": {p.name: file_record(p) for p in (paths["quantized"], paths["akida"])},
        "seconds": {"quantize": round(quantize_seconds, 1), "convert": round(convert_seconds, 1),
                    "total": round(time.perf_counter() - began, 1)},
    }
    write_json(paths["report"], report)
    log(f"wrote {paths['quantized'].name}, {paths['akida'].name}, {paths['report'].name} in {display_path(run_dir)} "
        f"({report['seconds']['total']:.0f}s)")
    if quick:
        log(QUICK_NOTE)
    return report
