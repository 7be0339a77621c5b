"""Run a converted model: on an Akida board if there is one, else map it to virtual devices and simulate.

``deploy_run`` writes to the run folder:
  deploy.json      board figures (latency, throughput, power, energy) or the virtual-device mapping report
  fidelity.json    float vs quantized Keras vs Akida on the lesion-level test split
  fidelity.md      the same as a readable table
The software simulator runs on the CPU: its speed says nothing about the chip, and is labelled so.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from qana_keras import CLASSES
from qana_keras.io import atomic_write_text, write_json

VIRTUAL_DEVICES = ("TwoNodesIPv2", "FourNodesIPv2", "SixNodesIPv2", "TwelveNodesIPv2")
"""Akida 2.0 virtual devices (8, 16, 24, 48 NPs); ``compute_min_device`` is added per model."""

NP_TYPES_NOT_NPS = ("HRC", "SKIP_DMA_STORE", "SKIP_DMA_LOAD")  # components that are not neural processors

# Acceptance targets of the integer model against the float one (issue 4), as in convert.TARGETS.
TARGETS = {"top1_drop_pt": 0.5, "macro_f1_drop_pt": 1.0, "argmax_agreement": 0.99, "class_recall_drop_pt": 2.0}


# --------------------------------------------------------------------------------------------------
# Mapping


def _component_counts(model) -> Counter:
    counts = Counter()
    for sequence in model.sequences:
        for p in sequence.passes:
            for layer in p.layers:
                if layer.mapping is not None:
                    counts.update(np_.type.name for np_ in layer.mapping.nps)
    return counts


def mapping_summary(model) -> dict:
    """Sequences, passes, NPs by type, program bytes and external memory of a mapped akida.Model."""
    counts = _component_counts(model)
    sequences = []
    for sequence in model.sequences:
        hardware = sequence.backend.name == "Hardware"
        sequences.append({"name": sequence.name, "backend": sequence.backend.name, "passes": len(sequence.passes),
                          "program_bytes": len(sequence.program) if hardware and sequence.program is not None else 0})
    return {"sequences": len(sequences),
            "passes": sum(s["passes"] for s in sequences),
            "hardware_sequences": sum(s["backend"] == "Hardware" for s in sequences),
            "nps": sum(n for t, n in counts.items() if t not in NP_TYPES_NOT_NPS),
            "components": dict(sorted(counts.items())),
            "program_bytes": sum(s["program_bytes"] for s in sequences),
            "external_memory_bytes": int(model.external_memory_size),
            "sequence_detail": sequences}


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
                f"{row['passes']} pass(es), {row['nps']} NPs used {_np_types(row)}, program {row['program_bytes']} B, "
                f"external memory {row['external_memory_bytes']} B")
        else:
            log(f"  {row['device']:<20} {row.get('nps_available', '?'):>3} NPs available: does not map: {row['error']}")
    return rows


def _np_types(row: dict) -> str:
    return "(" + ", ".join(f"{t} {n}" for t, n in row["components"].items() if t not in NP_TYPES_NOT_NPS) + ")"


# --------------------------------------------------------------------------------------------------
# Inference with progress


def run_with_progress(model, images: np.ndarray, label: str, batch_size: int = 100, every_seconds: float = 10.0,
                      log=print) -> tuple[np.ndarray, float]:
    """Logits of ``model`` over ``images`` in chunks, with a progress line every ``every_seconds``."""
    from qana_keras.convert import predict_logits

    outputs, began, last = [], time.perf_counter(), time.perf_counter()
    for start in range(0, len(images), batch_size):
        outputs.append(predict_logits(model, images[start:start + batch_size], batch_size))
        now = time.perf_counter()
        done = min(start + batch_size, len(images))
        if now - last >= every_seconds or done == len(images):
            log(f"  {label}: {done}/{len(images)} images, {done / (now - began):.0f} images/s")
            last = now
    return np.concatenate(outputs), time.perf_counter() - began


# --------------------------------------------------------------------------------------------------
# Fidelity


def _model_metrics(labels, logits) -> dict:
    from qana_keras.metrics import classification_metrics

    m = classification_metrics(labels, logits)
    return {"top1": m["top1"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "macro_auc": m["macro_auc"],
            "per_class": {c: {k: v[k] for k in ("recall", "precision", "f1", "support")}
                          for c, v in m["per_class"].items()},
            "confusion_matrix": m["confusion_matrix"]}


def fidelity_report(labels: np.ndarray, groups: np.ndarray, logits: dict[str, np.ndarray], r_succ: float,
                    seed: int = 0) -> dict:
    """Float vs quantized Keras vs Akida on one split; ``logits`` has keys float, quantized, akida."""
    from qana_keras.metrics import paired_bootstrap_difference

    pred = {k: v.argmax(1) for k, v in logits.items()}
    models = {k: _model_metrics(labels, v) for k, v in logits.items()}
    f, a = models["float"], models["akida"]
    recall_drop = {c: (f["per_class"][c]["recall"] - a["per_class"][c]["recall"]) * 100 for c in CLASSES}
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
        "n_images": int(len(labels)),
        "n_lesions": int(len(np.unique(groups))),
        "r_succ": r_succ,
        "argmax_agreement": agreement,
        "max_abs_logit_diff_akida_vs_quantized": float(np.max(np.abs(logits["akida"] - logits["quantized"]))),
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
    for c in CLASSES:
        lines.append(f"| recall {c} (n={m['float']['per_class'][c]['support']}) | "
                     + " | ".join(f"{m[k]['per_class'][c]['recall'] * 100:.2f}" for k in names) + " |")
    ag = report["argmax_agreement"]
    lines += ["", "| agreement | value |", "|---|---:|",
              f"| argmax agreement quantized vs float | {ag['quantized_vs_float'] * 100:.2f} % |",
              f"| argmax agreement Akida vs float | {ag['akida_vs_float'] * 100:.2f} % |",
              f"| argmax agreement Akida vs quantized | {ag['akida_vs_quantized'] * 100:.2f} % |",
              "| max abs logit difference Akida vs quantized | "
              f"{report['max_abs_logit_diff_akida_vs_quantized']:.4g} |",
              "", "| target (Akida vs float) | measured | met |", "|---|---:|:---:|"]
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


def _pick_board(name: str | None):
    import akida

    boards = list(akida.devices())
    if not boards:
        return None
    if name is None:
        return boards[0]
    for board in boards:
        if name in board.desc:
            return board
    raise ValueError(f"no Akida board matches {name!r}; found: {', '.join(b.desc for b in boards)}")


def run_on_board(model, board, images: np.ndarray, batch_size: int = 100, log=print) -> tuple[np.ndarray, dict]:
    """Map to ``board``, run ``images`` with power measurement, return (logits, chip figures)."""
    from qana_keras.convert import HybridModel, predict_logits

    akida_model = model.akida_model if isinstance(model, HybridModel) else model
    akida_model.map(board, hw_only=True)
    summary = mapping_summary(akida_model)
    floor_mw = None
    if board.soc is not None:  # some boards expose no SoC, hence no power meter
        board.soc.power_measurement_enabled = True
        time.sleep(1.0)  # the power meter needs a moment before its floor reading is populated
        floor_mw = board.soc.power_meter.floor
    else:
        log(f"board {board.desc} has no power meter: latency and throughput only")
    began = time.perf_counter()
    logits = predict_logits(model, images, batch_size)
    wall = time.perf_counter() - began
    stats = akida_model.statistics  # the last predict call: the whole split, pipelined in batches
    # Per-image latency: one image at a time (throughput at batch 100 overlaps images in the pipeline).
    single = []
    for image in images[:20]:
        akida_model.predict(np.ascontiguousarray(image[None], dtype=np.uint8))
        if akida_model.statistics.fps:
            single.append(1000.0 / akida_model.statistics.fps)
    powers = stats.powers or {}
    figures = {"device": board.desc, "images": int(len(images)), "mapping": summary,
               "throughput_images_per_second": stats.fps,
               "latency_ms_per_image_batch1": float(np.median(single)) if single else None,
               "average_power_mw": powers.get("Avg"), "power_mw": powers or None, "floor_power_mw": floor_mw,
               "energy_mj_per_image": stats.energy, "inference_clk": stats.inference_clk,
               "host_wall_seconds": wall,
               "note": "from the board's own metrics (model.statistics, soc.power_meter)"}
    if isinstance(model, HybridModel):
        figures["note"] += "; they cover the Akida prefix only, not the host tail"
    log(f"board {board.desc}: {figures['throughput_images_per_second']} images/s, latency "
        f"{figures['latency_ms_per_image_batch1']} ms/image (batch 1), average power {powers.get('Avg')} mW, "
        f"energy {stats.energy} mJ/image")
    return logits, figures


# --------------------------------------------------------------------------------------------------
# The run-folder step


def deploy_run(run_dir: str | Path, device: str | None = None, bits: int = 8, batch_size: int = 100,
               data_config=None, quick: bool = False, log=print) -> dict:
    """Board run or virtual-device mapping, then the fidelity report on the test split (see module docstring).

    ``quick``: the smoke profile (``convert.QUICK_NOTE``): a class-stratified subset of the test split."""
    import akida
    import tf_keras as keras

    from qana_keras.config import load_config
    from qana_keras.convert import QUICK_MAX_IMAGES, QUICK_NOTE, HybridModel, load_converted, precision_tag
    from qana_keras.data.dataset import load_splits

    run_dir = Path(run_dir)
    board = _pick_board(device)
    if board is None and device is not None and device not in (*VIRTUAL_DEVICES, "compute_min_device"):
        raise ValueError(f"no Akida board found, and {device!r} is not a virtual device "
                         f"({', '.join(VIRTUAL_DEVICES)}, compute_min_device)")
    if board is None:
        log("no Akida board found (akida.devices() is empty): mapping to virtual devices, then running the "
            "software simulator on the CPU")
    log(f"loading the float, quantized and Akida models of {run_dir} ...")  # ~1 min: quantizeml rebuilds the graph
    converted = load_converted(run_dir, bits)
    report, qmodel, ak = converted["report"], converted["quantized"], converted["akida"]
    config = load_config(run_dir / "config.yaml")
    if data_config is not None:
        config.data = data_config
    fmodel = keras.models.load_model(converted["paths"]["float"], compile=False)
    if quick:
        log(QUICK_NOTE)
    test = load_splits(config.data, max_images=QUICK_MAX_IMAGES if quick else 0, seed=config.train.seed,
                       log=log)["test"]
    akida_model = ak.akida_model if isinstance(ak, HybridModel) else ak
    suffix = "" if bits == 8 else f"_{precision_tag(bits)}"

    quick_fields = {"quick": quick, **({"note": QUICK_NOTE} if quick else {})}
    out = {**quick_fields, "variant": converted["variant"], "precision": report["precision"],
           "r_succ": report["r_succ"], "hybrid": report.get("hybrid"), "akida_version": akida.__version__}
    if board is not None:
        a_logits, out["board"] = run_on_board(ak, board, test.images, batch_size, log=log)
        backend = f"Akida board {board.desc}"
    else:
        names = VIRTUAL_DEVICES
        if device is not None:
            names = () if device == "compute_min_device" else (device,)
        log(f"mapping {'the Akida prefix' if isinstance(ak, HybridModel) else 'the model'} with hw_only=True:")
        out["board"] = None
        out["virtual_devices"] = virtual_device_report(akida_model, names,
                                                       include_min=device in (None, "compute_min_device"), log=log)
        akida_model.map(None)
        a_logits, seconds = run_with_progress(ak, test.images, "Akida software simulator (CPU)", batch_size, log=log)
        out["simulator"] = {"images": int(len(test)), "seconds": round(seconds, 2),
                            "images_per_second_cpu": len(test) / seconds,
                            "note": "Akida software backend on this CPU; not chip latency or throughput"}
        backend = "Akida software simulator (CPU)"
    logits = {"float": run_with_progress(fmodel, test.images, "float Keras", 256, 30.0, log=log)[0],
              "quantized": run_with_progress(qmodel, test.images, "quantized Keras", 256, 30.0, log=log)[0],
              "akida": a_logits}
    fidelity = fidelity_report(test.labels, test.frame["lesion_id"].to_numpy(), logits, report["r_succ"],
                               seed=config.train.seed)
    fidelity = {**quick_fields, "variant": converted["variant"], "precision": report["precision"], "split": "test",
                "akida_backend": backend, **fidelity}
    write_json(run_dir / f"fidelity{suffix}.json", fidelity)
    title = f"{converted['variant']} {report['precision']}: float vs quantized vs Akida (test split)"
    markdown = fidelity_markdown(fidelity, title)
    if quick:
        markdown = markdown.replace("\n\n", f"\n\n**{QUICK_NOTE}**\n\n", 1)  # right under the title
    atomic_write_text(run_dir / f"fidelity{suffix}.md", markdown)
    out["fidelity"] = {k: fidelity[k] for k in ("argmax_agreement", "max_abs_logit_diff_akida_vs_quantized",
                                                "akida_vs_float", "checks", "all_targets_met")}
    write_json(run_dir / f"deploy{suffix}.json", out)
    m = fidelity["models"]
    missed = [k for k, v in fidelity["checks"].items() if not v]
    log(f"test top-1 float {m['float']['top1']:.4f} / quantized {m['quantized']['top1']:.4f} / Akida "
        f"{m['akida']['top1']:.4f}; macro-F1 {m['float']['macro_f1']:.4f} / {m['quantized']['macro_f1']:.4f} / "
        f"{m['akida']['macro_f1']:.4f}; Akida-float argmax agreement "
        f"{fidelity['argmax_agreement']['akida_vs_float']:.4f}; "
        f"targets {'NOT met: ' + ', '.join(missed) if missed else 'met'}")
    log(f"wrote fidelity{suffix}.json, fidelity{suffix}.md, deploy{suffix}.json in {run_dir}")
    if quick:
        log(QUICK_NOTE)
    return out
