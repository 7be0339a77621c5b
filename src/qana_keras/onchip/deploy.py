"""Run a converted model: on an Akida board if there is one, else map it to a virtual device and simulate.

The device (``--device``, see ``qana_keras.runtime.devices``) defaults to a board found by ``akida.devices()``, else the
smallest standard device that runs the model in one hardware pass. ``deploy_run`` writes to the run folder:
  deploy.json      the device used, the mapping on every standard device, and the board figures or
                   "not measured on a chip" (``chip_measurements``)
  board.json       on a board only: latency (batch 1, batched), SoC power and energy per image
  fidelity.json    float vs quantized Keras vs Akida on the lesion-level test split
  fidelity.md      the same as a readable table
The software simulator runs on the CPU: its speed says nothing about the chip, and is labelled so.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from qana_keras import CLASSES
from qana_keras.runtime.devices import NO_BOARD_NOTE, NP_TYPES_NOT_NPS, mapping_summary  # noqa: F401  (scripts import them)
from qana_keras.runtime.devices import np_use
from qana_keras.io import atomic_write_text, display_path, write_json
from qana_keras.metrics import FIDELITY_TARGETS
from qana_keras.runtime.progress import run_with_progress
from qana_keras.runs import QUICK_MAX_IMAGES, QUICK_NOTE, RunFolder, quick_fields
from qana_keras.runtime.load import HybridModel, predict_logits

VIRTUAL_DEVICES = ("TwoNodesIPv2", "FourNodesIPv2", "SixNodesIPv2", "TwelveNodesIPv2")
"""Akida 2.0 virtual devices (8, 16, 24, 48 NPs); ``compute_min_device`` is added per model."""

# Acceptance targets of the integer model against the float one (issue 4): metrics.FIDELITY_TARGETS in points.
TARGETS = {"top1_drop_pt": FIDELITY_TARGETS["top1_drop"] * 100, "macro_f1_drop_pt": FIDELITY_TARGETS["macro_f1_drop"] * 100,
           "argmax_agreement": FIDELITY_TARGETS["argmax_agreement"],
           "class_recall_drop_pt": FIDELITY_TARGETS["class_recall_drop"] * 100}


# --------------------------------------------------------------------------------------------------
# Mapping (the standard-device logic is in qana_keras.runtime.devices; these keep the 2.0-only report of scripts)


def map_to_device(model, device, name: str) -> dict:
    """Map ``model`` with ``hw_only=True`` (one hardware sequence) and report; never raises on a mapping error."""
    row = {"device": name, "nps_available": len(device.mesh.nps)}
    try:
        model.map(device, hw_only=True)
    except Exception as error:  # akida raises RuntimeError with the layer that does not fit
        row.update(ok=False, single_pass=False, error=str(error))
    else:
        summary = mapping_summary(model)
        row.update(ok=True, single_pass=summary["sequences"] == 1 and summary["passes"] == 1, error=None, **summary)
    finally:
        model.map(None)  # a model mapped to a virtual device cannot run inference
    return row


def virtual_device_report(model, names: tuple[str, ...] = VIRTUAL_DEVICES, include_min: bool = True,
                          log=print) -> list[dict]:
    """One row per Akida 2.0 virtual device (and ``compute_min_device``): fits in one pass, or the error."""
    import akida

    rows = []
    for name in names:
        factory = getattr(akida, name, None)
        if factory is None:
            raise ValueError(f"akida has no virtual device {name!r}; known: {', '.join(VIRTUAL_DEVICES)}")
        rows.append(map_to_device(model, factory(), name))
    if include_min:
        try:
            device = akida.compute_min_device(model)
        except Exception as error:
            rows.append({"device": "compute_min_device", "ok": False, "single_pass": False, "error": str(error)})
        else:
            rows.append(map_to_device(model, device, "compute_min_device"))
    for row in rows:
        if row["ok"]:
            log(f"  {row['device']:<20} {row['nps_available']:>3} NPs available: {row['sequences']} sequence(s), "
                f"{row['passes']} pass(es), {np_use(row)} {_np_types(row)}, program {row['program_bytes']} B, "
                f"external memory {row['external_memory_bytes']} B")
        else:
            log(f"  {row['device']:<20} {row.get('nps_available', '?'):>3} NPs available: does not map: {row['error']}")
    return rows


def _np_types(row: dict) -> str:
    return "(" + ", ".join(f"{t} {n}" for t, n in row["components"].items() if t not in NP_TYPES_NOT_NPS) + ")"


# --------------------------------------------------------------------------------------------------
# Fidelity


def _model_metrics(labels, logits, classes) -> dict:
    from qana_keras.metrics import classification_metrics

    m = classification_metrics(labels, logits, classes)
    return {"top1": m["top1"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "macro_auc": m["macro_auc"],
            "per_class": {c: {k: v[k] for k in ("recall", "precision", "f1", "support")}
                          for c, v in m["per_class"].items()},
            "confusion_matrix": m["confusion_matrix"]}


def near_ties(reference: np.ndarray, other: np.ndarray) -> dict:
    """Where argmax flips sit: images whose ``reference`` top-2 margin is under twice the RMS logit error.

    An 8-bit model's logits differ from the float ones by a small noise; an image whose two best
    classes are closer than that noise is a coin toss for the argmax whatever the conversion does.
    The agreement on the other images says whether the conversion changes clear decisions too.
    """
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    rms = float(np.sqrt(np.mean((other - reference) ** 2)))
    tie = margin < 2 * rms
    flips = reference.argmax(1) != other.argmax(1)
    return {"logit_error_rms": rms, "margin_threshold": 2 * rms, "near_tie_share": float(np.mean(tie)),
            "flips": int(flips.sum()), "flips_at_near_ties": int(flips[tie].sum()),
            "agreement_beyond_near_ties": float(1 - np.mean(flips[~tie])) if np.any(~tie) else None}


def fidelity_report(labels: np.ndarray, groups: np.ndarray, logits: dict[str, np.ndarray], r_succ: float,
                    seed: int = 0, classes: tuple[str, ...] = CLASSES) -> dict:
    """Float vs quantized Keras vs Akida on one split; ``logits`` has keys float, quantized, akida.

    ``classes``: the run's output classes in output order (``run_classes``), which name the per-class figures.
    """
    from qana_keras.metrics import paired_bootstrap_difference

    classes = tuple(classes)
    for name, value in logits.items():
        if value.shape[1] != len(classes):
            raise ValueError(f"{name} logits have {value.shape[1]} outputs, the run has {len(classes)} classes "
                             f"({', '.join(classes)})")
    pred = {k: v.argmax(1) for k, v in logits.items()}
    models = {k: _model_metrics(labels, v, classes) for k, v in logits.items()}
    f, a = models["float"], models["akida"]
    recall_drop = {c: (f["per_class"][c]["recall"] - a["per_class"][c]["recall"]) * 100 for c in classes}
    agreement = {"quantized_vs_float": float(np.mean(pred["quantized"] == pred["float"])),
                 "akida_vs_float": float(np.mean(pred["akida"] == pred["float"])),
                 "akida_vs_quantized": float(np.mean(pred["akida"] == pred["quantized"]))}
    deltas = {"top1_drop_pt": (f["top1"] - a["top1"]) * 100, "macro_f1_drop_pt": (f["macro_f1"] - a["macro_f1"]) * 100,
              "balanced_accuracy_drop_pt": (f["balanced_accuracy"] - a["balanced_accuracy"]) * 100,
              "class_recall_drop_pt": recall_drop}
    worst_class = max(recall_drop, key=recall_drop.get)
    checks = {
        "top1_within_0.5pt": deltas["top1_drop_pt"] <= TARGETS["top1_drop_pt"],
        "macro_f1_within_1pt": deltas["macro_f1_drop_pt"] <= TARGETS["macro_f1_drop_pt"],
        "argmax_agreement_at_least_99pct": agreement["akida_vs_float"] >= TARGETS["argmax_agreement"],
        "no_class_recall_drop_over_2pt": recall_drop[worst_class] <= TARGETS["class_recall_drop_pt"],
    }
    return {
        "classes": list(classes),
        "n_images": int(len(labels)),
        "n_lesions": int(len(np.unique(groups))),
        "r_succ": r_succ,
        "argmax_agreement": agreement,
        "max_abs_logit_diff_akida_vs_quantized": float(np.max(np.abs(logits["akida"] - logits["quantized"]))),
        "near_ties_akida_vs_float": near_ties(logits["float"], logits["akida"]),
        "models": models,
        "akida_vs_float": deltas,
        "worst_class_recall_drop": {"class": worst_class, "pt": recall_drop[worst_class]},
        "paired_bootstrap_akida_minus_float": paired_bootstrap_difference(labels, pred["float"], pred["akida"], groups,
                                                                          n_boot=1000, seed=seed),
        "targets": TARGETS,
        "checks": checks,
        "all_targets_met": all(checks.values()),
    }


def fidelity_markdown(report: dict, title: str) -> str:
    """A readable Markdown rendering of ``fidelity_report``."""
    m = report["models"]
    names = {"float": "float Keras", "quantized": "quantized Keras", "akida": "Akida"}
    lines = [f"# {title}", "",
             f"{report['n_images']} test images ({report['n_lesions']} lesions; lesion-level split). "
             f"r_succ = {report['r_succ']:.3f}. Akida = {report.get('akida_backend', 'Akida')}.", "",
             "| metric | " + " | ".join(names.values()) + " |", "|---|" + "---:|" * len(names)]
    for key, label in (("top1", "top-1"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1")):
        lines.append(f"| {label} | " + " | ".join(f"{m[k][key] * 100:.2f}" for k in names) + " |")
    for c in report.get("classes", CLASSES):  # older reports predate "classes": they are 7-class runs
        lines.append(f"| recall {c} (n={m['float']['per_class'][c]['support']}) | "
                     + " | ".join(f"{m[k]['per_class'][c]['recall'] * 100:.2f}" for k in names) + " |")
    ag = report["argmax_agreement"]
    lines += ["", "| agreement | value |", "|---|---:|",
              f"| argmax agreement quantized vs float | {ag['quantized_vs_float'] * 100:.2f} % |",
              f"| argmax agreement Akida vs float | {ag['akida_vs_float'] * 100:.2f} % |",
              f"| argmax agreement Akida vs quantized | {ag['akida_vs_quantized'] * 100:.2f} % |",
              "| max abs logit difference Akida vs quantized | "
              f"{report['max_abs_logit_diff_akida_vs_quantized']:.4g} |"]
    ties = report.get("near_ties_akida_vs_float")  # older reports predate it
    if ties:
        beyond = ties["agreement_beyond_near_ties"]
        lines += ["", "Near ties: Akida's logits differ from the float model's by "
                      f"{ties['logit_error_rms']:.3f} (RMS); {ties['near_tie_share'] * 100:.1f} % of the images have "
                      f"their two best float classes closer than {ties['margin_threshold']:.3f}, and "
                      f"{ties['flips_at_near_ties']} of the {ties['flips']} argmax flips are among them; agreement on "
                      "the other images "
                      + (f"{beyond * 100:.2f} %." if beyond is not None else "n/a (every image is a near tie).")]
    lines += ["", "| target (Akida vs float) | measured | met |", "|---|---:|:---:|"]
    d = report["akida_vs_float"]
    rows = [("top-1 drop <= 0.5 pt", f"{d['top1_drop_pt']:+.2f} pt", "top1_within_0.5pt"),
            ("macro-F1 drop <= 1 pt", f"{d['macro_f1_drop_pt']:+.2f} pt", "macro_f1_within_1pt"),
            ("argmax agreement >= 99 %", f"{ag['akida_vs_float'] * 100:.2f} %", "argmax_agreement_at_least_99pct"),
            ("no class loses > 2 pt recall",
             f"worst {report['worst_class_recall_drop']['class']} {report['worst_class_recall_drop']['pt']:+.2f} pt",
             "no_class_recall_drop_over_2pt")]
    for label, value, key in rows:
        lines.append(f"| {label} | {value} | {'yes' if report['checks'][key] else '**no**'} |")
    boot = report["paired_bootstrap_akida_minus_float"]
    lines += ["", "Paired lesion-level bootstrap (1000 resamples), Akida minus float, 95 % interval:", ""]
    for key, value in boot.items():
        lines.append(f"- {key}: {value['difference'] * 100:+.2f} pt [{value['low'] * 100:+.2f}, "
                     f"{value['high'] * 100:+.2f}]{' (real difference)' if value['real'] else ''}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Board


def run_on_board(model, board, images: np.ndarray, batch_size: int = 100, repeats: int = 5,
                 log=print) -> tuple[np.ndarray, dict]:
    """Map to ``board``, measure latency/power/energy (``devices.measure_board``), then the logits of ``images``."""
    from qana_keras.runtime.devices import DeviceError, MapError, map_hw, measure_board

    akida_model = model.akida_model if isinstance(model, HybridModel) else model
    try:
        map_hw(akida_model, board)  # one pass, else the board reconfigures between passes
    except MapError as error:
        raise DeviceError(f"the model does not map on board {board.desc}: {error}; run `qana hardware-table` or "
                          "`qana deploy --device NAME` to see which devices fit") from None
    figures = {**measure_board(board, lambda x: predict_logits(model, x, batch_size), images, batch_size, repeats),
               "images": int(len(images)), "mapping": mapping_summary(akida_model)}
    if isinstance(model, HybridModel):
        figures["note"] = "the figures include the host tail after the Akida prefix"
    began = time.perf_counter()
    logits = predict_logits(model, images, batch_size)
    figures["host_wall_seconds_test_split"] = time.perf_counter() - began
    log(f"board {figures['device']}: latency {figures['latency_ms_batch1']:.2f} ms/image at batch 1, "
        f"{figures['latency_ms_per_image_batched']:.2f} ms/image at batch {figures['batch_size']}; average power "
        f"{figures['average_power_mw']} mW (floor {figures['floor_power_mw']} mW); energy "
        f"{figures['energy_mj_per_image']} mJ/image")
    return logits, figures


# --------------------------------------------------------------------------------------------------
# The run-folder step


def deploy_run(run_dir: str | Path, device: str | None = None, bits: int = 8, batch_size: int = 100,
               data_config=None, repeats: int = 5, quick: bool = False, log=print) -> dict:
    """Board run, or the mapping on the chosen virtual device (default: the smallest standard device that runs
    the model in one pass) and the simulator; then the fidelity report on the test split (see module docstring).

    Raises ``devices.DeviceError`` (one line) for a wrong device name, a model of the other IP version, or a
    model that does not fit the device. ``quick``: the smoke profile (``runs.QUICK_NOTE``): a class-stratified
    subset of the test split.
    """
    import akida

    from qana_keras.runtime.devices import (check_fit, choose_device, device_reports, find_board, ip_of,
                                    min_device_report, not_measured, parse_device)
    from qana_keras.runtime.load import load_keras_model

    run_dir = Path(run_dir)
    choice = parse_device(device)  # a wrong name fails here, before any work
    board = find_board(choice)
    run = RunFolder.open(run_dir, f"train and convert a model there first (`qana convert --run {run_dir}`)")
    # About a minute: quantizeml rebuilds the quantized graph.
    log(f"loading the float, quantized and Akida models of {display_path(run_dir)} ...")
    converted = run.converted(bits)
    report, qmodel, ak = converted["report"], converted["quantized"], converted["akida"]
    akida_model = ak.akida_model if isinstance(ak, HybridModel) else ak
    model_name = str(run_dir / converted["report"].get("artifacts", {}).get("akida", "model.fbz"))
    hint = str(run_dir) + ("" if bits == 8 else f" --bits {bits}")

    out = {"variant": converted["variant"], "precision": report["precision"], "r_succ": report["r_succ"],
           "hybrid": report.get("hybrid"), "akida_version": akida.__version__, "model_ip": ip_of(akida_model)}
    if board is None:
        name, _device, row, rows, mins = choose_device(akida_model, choice, model_name, hint)
        why = "chosen: the smallest standard device that runs it" if choice.kind == "default" else "asked for"
        log(NO_BOARD_NOTE)
        log(f"device: {name} ({why}): {row['label']}, {np_use(row)}, program "
            f"{row.get('program_bytes', 0):,} bytes; then the software simulator on the CPU")
    else:
        rows, mins = device_reports(akida_model), min_device_report(akida_model)
        if ip_of(board) != out["model_ip"]:
            check_fit(model_name, {"status": "ip-mismatch", "device": f"board {board.desc}", "ip": ip_of(board),
                                   "model_ip": out["model_ip"]}, rows, mins, hint)
        name = f"board {board.desc}"
        log(f"Akida board found: {board.desc}; mapping and measuring latency, power and energy on it")
    out["device"] = name
    out["standard_devices"] = rows
    out["compute_min_device"] = mins
    # "virtual_devices" keeps the rows qana report reads (device, ok, passes, nps, program_bytes ...).
    out["virtual_devices"] = rows + ([{**row, "device": "compute_min_device"}] if name == "compute_min_device" else [])

    config = run.config
    if data_config is not None:
        config.data = data_config
    classes = run.classes
    fmodel = load_keras_model(converted["paths"]["float"])
    if quick:
        log(QUICK_NOTE)
    test = run.splits(max_images=QUICK_MAX_IMAGES if quick else 0, seed=config.train.seed, log=log)["test"]
    out = {**quick_fields(quick), **out}
    if board is not None:
        a_logits, figures = run_on_board(ak, board, test.images, batch_size, repeats, log=log)
        out["board"] = out["chip_measurements"] = figures
        write_json(run.tagged("board.json", bits), {"model": model_name, **figures})
        backend = f"Akida board {board.desc}"
    else:
        akida_model.map(None)  # a model mapped to a virtual device cannot run inference
        a_logits, seconds = run_with_progress(ak, test.images, "Akida software simulator (CPU)", batch_size, log=log)
        out["board"] = None
        out["chip_measurements"] = not_measured()
        out["simulator"] = {"images": int(len(test)), "seconds": round(seconds, 2),
                            "images_per_second_cpu": len(test) / seconds,
                            "note": "Akida software backend on this CPU; not chip latency or throughput"}
        backend = "Akida software simulator (CPU)"
    logits = {"float": run_with_progress(fmodel, test.images, "float Keras", 256, 30.0, log=log)[0],
              "quantized": run_with_progress(qmodel, test.images, "quantized Keras", 256, 30.0, log=log)[0],
              "akida": a_logits}
    fidelity = fidelity_report(test.labels, test.frame["lesion_id"].to_numpy(), logits, report["r_succ"],
                               seed=config.train.seed, classes=classes)
    fidelity = {**quick_fields(quick), "variant": converted["variant"], "precision": report["precision"],
                "split": "test", "akida_backend": backend, **fidelity}
    write_json(run.tagged("fidelity.json", bits), fidelity)
    title = f"{converted['variant']} {report['precision']}: float vs quantized vs Akida (test split)"
    markdown = fidelity_markdown(fidelity, title)
    if quick:
        markdown = markdown.replace("\n\n", f"\n\n**{QUICK_NOTE}**\n\n", 1)  # right under the title
    atomic_write_text(run.tagged("fidelity.md", bits), markdown)
    out["fidelity"] = {k: fidelity[k] for k in ("argmax_agreement", "max_abs_logit_diff_akida_vs_quantized",
                                                "akida_vs_float", "checks", "all_targets_met")}
    write_json(run.tagged("deploy.json", bits), out)
    m = fidelity["models"]
    missed = [k for k, v in fidelity["checks"].items() if not v]
    log(f"test top-1 float {m['float']['top1']:.4f} / quantized {m['quantized']['top1']:.4f} / Akida "
        f"{m['akida']['top1']:.4f}; macro-F1 {m['float']['macro_f1']:.4f} / {m['quantized']['macro_f1']:.4f} / "
        f"{m['akida']['macro_f1']:.4f}; Akida-float argmax agreement "
        f"{fidelity['argmax_agreement']['akida_vs_float']:.4f}; "
        f"targets {'NOT met: ' + ', '.join(missed) if missed else 'met'}")
    log(f"wrote {', '.join(run.tagged(n, bits).name for n in ('fidelity.json', 'fidelity.md', 'deploy.json'))} in "
        f"{display_path(run_dir)}")
    if quick:
        log(QUICK_NOTE)
    return out
