"""`qana hardware-table`: every published Akida model (``models/*/*.fbz``) x every standard device.

Per model and device: one pass / N passes / does not map / "IP vN only", NPs used, program bytes; per model:
IP version, MACs, ``compute_min_device`` sizes, and the HAM10000 test accuracy of the integer model read
from the JSON its folder already holds (``integer_accuracy``; nothing is re-evaluated), and the chip figures
of the ``board.json`` (``board_i8_w4_a4.json`` for a 4-bit model) written by ``qana deploy`` on a board for
that model (``board_figures``); beside the folder's 8-bit Akida model, its CPU/MCU TFLite int8 export
(``tflite_export``: `qana export`, not Akida). Writes ``reports/hardware/hardware_table.md`` and
``.json`` and, with ``readme``, the ``report:hardware-table`` block of the README.
"""
from __future__ import annotations

import re
from pathlib import Path

from qana_keras.runtime.devices import NO_BOARD_NOTE, STANDARD_DEVICES
from qana_keras.io import atomic_write_text, read_classes, read_json, required_values, write_json
from qana_keras.plots import plot_accuracy_vs_cost
from qana_keras.runs import precision_suffix
from qana_keras.runtime.safe_load import inside_folder, load_akida_model, reports_naming

BLOCK = "report:hardware-table"


def published_models(models_dir: str | Path) -> list[Path]:
    """The ``.fbz`` files of the published model folders (``models/X/`` and ``models/GROUP/X/``)."""
    models_dir = Path(models_dir)
    return sorted([*models_dir.glob("*/*.fbz"), *models_dir.glob("*/*/*.fbz")])


def _read(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _headline(source: str, top1, balanced, macro_f1, n=None, note: str | None = None) -> dict:
    return {"top1": top1, "balanced_accuracy": balanced, "macro_f1": macro_f1, "n_images": n, "source": source,
            "note": note}


def _from_learning(fbz: Path) -> dict | None:
    """A model written by `qana learn` (``<variant>_learn_<protocol>.fbz``): the HAM10000 test row of the written
    readout in ``learn_<protocol>.json`` (exact integer emulation of the written layer, checked end to end)."""
    match = re.search(r"_learn_(.+)\.fbz$", fbz.name)
    data = _read(fbz.parent / f"learn_{match.group(1)}.json") if match else None
    if not isinstance(data, dict) or data.get("written_model") != fbz.name:
        return None
    source = f"learn_{match.group(1)}.json"
    rows, chosen = data.get("rows"), data.get("written_model_row")
    if isinstance(rows, dict) and "ham_test" in rows.get(chosen, {}):
        h = rows[chosen]["ham_test"]
        return _headline(source, h.get("accuracy"), h.get("balanced_accuracy"), h.get("macro_f1"), h.get("n"),
                         f"row {chosen!r}")
    for row in rows if isinstance(rows, list) else []:
        if f"shots {row.get('shots')}, {row.get('step')}" == chosen:  # class-incremental: known classes only
            return _headline(source, row.get("accuracy_known"), None, row.get("macro_f1_known"), None,
                             f"row {chosen!r}, classes learned so far")
    return None


def _conversion_suffixes(fbz: Path) -> list[str]:
    """Suffixes ("" or "_i8_w4_a4") of the conversion reports whose Akida artifact is ``fbz``; without one, the
    suffix its name carries (``runs.artifact_paths``: ``<variant>_i8_w4_a4.fbz`` is the 4-bit model)."""
    found = [path.stem[len("conversion"):] for path, _ in reports_naming(fbz)]
    if found:
        return found
    tag = precision_suffix(4)
    return [tag if fbz.stem.endswith(tag) else ""]


def integer_accuracy(fbz: Path) -> dict:
    """HAM10000 test top-1 / balanced accuracy / macro-F1 of the integer model ``fbz``, from its folder's JSON:
    a `qana evaluate` of this file (evaluate_*test*.json), else `qana deploy`'s fidelity.json (Akida simulator),
    else a `qana learn` report; else all None with ``source`` None. A smoke run (``"quick": true``) never counts."""
    for path in sorted(fbz.parent.glob("evaluate_*.json")):
        e = _read(path)
        if isinstance(e, dict) and e.get("split") == "test" and not e.get("quick") \
                and e.get("format", "ham10000") == "ham10000" and Path(str(e.get("model", ""))).name == fbz.name:
            a = required_values(path, e, ("top1", "balanced_accuracy", "macro_f1"))
            return _headline(path.name, a["top1"], a["balanced_accuracy"], a["macro_f1"], e.get("n_images"))
    for suffix in _conversion_suffixes(fbz):
        path = fbz.parent / f"fidelity{suffix}.json"
        f = _read(path)
        if isinstance(f, dict) and f.get("split") == "test" and not f.get("quick"):
            a = required_values(path, f, ("models.akida.top1", "models.akida.balanced_accuracy",
                                          "models.akida.macro_f1"))
            return _headline(path.name, a["top1"], a["balanced_accuracy"], a["macro_f1"], f.get("n_images"))
    learned = _from_learning(fbz)
    if learned:
        return learned
    return _headline(None, None, None, None, note="no HAM10000 test evaluation of this integer model in its folder")


def board_figures(fbz: Path) -> dict:
    """The chip figures `qana deploy` wrote on a board for ``fbz``: ``board<suffix>.json`` of its precision,
    unless its ``model`` names another file; else ``{"measured_on_chip": False, ...}``."""
    for suffix in _conversion_suffixes(fbz):
        board = _read(fbz.parent / f"board{suffix}.json")
        if isinstance(board, dict) and board.get("measured_on_chip") \
                and ("model" not in board or Path(str(board["model"])).name == fbz.name):
            return board
    return {"measured_on_chip": False, "note": NO_BOARD_NOTE}


TFLITE_LABEL = "CPU/MCU TFLite int8 (not Akida)"


def tflite_export(fbz: Path) -> dict | None:
    """The `qana export` TFLite int8 model of the float model behind ``fbz`` (the 8-bit Akida model its folder's
    ``conversion.json`` names, converted from the float model ``export.json`` names): size, HAM10000 test
    figures and argmax agreement with the float model, from ``export.json``; None without one."""
    path = fbz.parent / "export.json"
    converted = [report for source, report in reports_naming(fbz) if source.name == "conversion.json"]
    if not path.is_file() or not converted:
        return None
    export = read_json(path)
    figures = required_values(path, export, ("artifacts.tflite", "artifacts.float", "bytes", "test.tflite_int8.top1",
                                             "test.tflite_int8.balanced_accuracy", "test.tflite_int8.macro_f1",
                                             "test.argmax_agreement", "test.n_images"))
    if figures["float"] != converted[0]["artifacts"].get("float"):
        return None  # exported from another float model than the one converted for Akida
    tflite = inside_folder(fbz.parent, figures["tflite"], path)
    if not tflite.is_file() or tflite.stat().st_size != figures["bytes"]:
        raise ValueError(f"{path}: records {figures['tflite']} of {figures['bytes']:,} bytes, but "
                         f"{'its size differs' if tflite.is_file() else 'it is missing'}; re-run qana export "
                         f"--run {fbz.parent} --overwrite")
    return {"label": TFLITE_LABEL, "file": figures["tflite"], "source": path.name,
            **{k: figures[k] for k in ("bytes", "top1", "balanced_accuracy", "macro_f1", "argmax_agreement",
                                       "n_images")}}


def model_entry(fbz: Path, root: Path) -> dict:
    """The table's record for one ``.fbz``: IP, MACs, classes, every standard device, compute_min_device, board."""
    from qana_keras.runtime.devices import device_reports, ip_of, min_device_report, model_macs

    model = load_akida_model(fbz)
    classes = read_classes(fbz.parent)
    hybrid = next((report["hybrid"] for _, report in reports_naming(fbz) if report.get("hybrid")), None)
    return {"model": _relative(fbz, root), "ip": ip_of(model), "macs": model_macs(model),
            "outputs": int(model.output_shape[-1]),
            "hybrid_cut_after": hybrid.get("cut_after") if hybrid else None,
            "classes": list(classes) if classes else None,
            "accuracy": integer_accuracy(fbz),
            "devices": {r["device"]: _slim(r) for r in device_reports(model)},
            "compute_min_device": min_device_report(model),
            "chip": board_figures(fbz),
            "tflite_int8": tflite_export(fbz)}


def _slim(row: dict) -> dict:
    keep = ("status", "label", "passes", "nps", "nps_available", "program_bytes", "components", "mode", "error")
    return {k: row.get(k) for k in keep}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def build_table(models_dir: str | Path, root: str | Path | None = None) -> dict:
    import akida

    models_dir = Path(models_dir)
    root = Path(root) if root else models_dir.parent
    models = published_models(models_dir)
    if not models:
        raise ValueError(f"{models_dir}: no published Akida model (*/*.fbz or */*/*.fbz); convert and publish one")
    return {"generated_by": "qana hardware-table", "akida_version": akida.__version__,
            "devices": [{"name": d.name, "akida": d.factory, "ip": d.ip, "nps": d.nps} for d in STANDARD_DEVICES],
            "mapping": "model.map(device, hw_only=True): MapMode.AllNps (one pass if it fits), else MapMode.HwPr",
            "models": [model_entry(p, root) for p in models]}


# --------------------------------------------------------------------------------------------------
# Markdown


def _cell(row: dict) -> str:
    if row["status"] in ("one-pass", "multi-pass"):
        nps = f"{row['nps']} NPs" if row["status"] == "one-pass" else f"{row['nps']} NPs over the passes"
        return f"{row['label']}, {nps}, {row['program_bytes']:,} B"
    return row["label"]


def _fmt(value) -> str:
    return f"{value:.3f}" if value is not None else "—"


def _chip(chip: dict) -> str:
    if not chip.get("measured_on_chip"):
        return "not measured (no board)"
    energy = chip.get("energy_mj_per_image")
    return (f"{chip['latency_ms_batch1']:.2f} ms (b1), {chip['latency_ms_per_image_batched']:.2f} ms/img "
            f"(b{chip['batch_size']}), " + (f"{energy:.3f} mJ/img" if energy is not None else "power not measured")
            + f" on {chip['device']}")


def _tflite(t: dict | None) -> str:
    if not t:
        return "—"
    return (f"{_fmt(t['top1'])} / {_fmt(t['balanced_accuracy'])} / {_fmt(t['macro_f1'])}, {t['bytes']:,} B "
            f"(`{t['file']}`; argmax = float on {t['argmax_agreement']:.1%})")


def _min(m: dict) -> str:
    if m.get("one_pass_nps") is None and m.get("hwpr_nps") is None:
        return "n/a (v2 only)" if "v2" in str(m.get("one_pass_error")) else "n/a"
    return f"{m.get('one_pass_nps') or '—'} / {m.get('hwpr_nps') or '—'}"


def is_headline(model: str) -> bool:
    """A model of its own folder (``models/X/file.fbz``), not one of a group (ablations, seeds, crop fine-tunes)."""
    return len(Path(model).parts) == 3


def render_markdown(data: dict, headline_only: bool = False) -> str:
    """The table (models x devices) with a legend; every figure comes from ``data`` (``build_table``).
    ``headline_only`` (the README) keeps the models of their own folders and links the whole table."""
    header = ["model", "IP", "MACs", "top-1 / bal. acc. / macro-F1 (test)",
              *[d["name"] for d in data["devices"]], "min NPs (1 pass / HwPr)", "chip latency, energy",
              f"{TFLITE_LABEL}: top-1 / bal. acc. / macro-F1 (test), size"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    models = [m for m in data["models"] if is_headline(m["model"])] if headline_only else data["models"]
    for m in models:
        a = m["accuracy"]
        acc = (f"{_fmt(a['top1'])} / {_fmt(a['balanced_accuracy'])} / {_fmt(a['macro_f1'])} ({a['source']})"
               if a["source"] else "not evaluated")
        macs = f"{m['macs'] / 1e6:.1f} M" if m["macs"] else "n/a"
        name = f"`{m['model']}`" + (f" (hybrid: Akida runs up to `{m['hybrid_cut_after']}`, the rest on the host)"
                                    if m.get("hybrid_cut_after") else "")
        lines.append("| " + " | ".join([name, m["ip"], macs, acc,
                                        *[_cell(m["devices"][d["name"]]) for d in data["devices"]],
                                        _min(m["compute_min_device"]), _chip(m["chip"]),
                                        _tflite(m.get("tflite_int8"))]) + " |")
    measured = any(m["chip"].get("measured_on_chip") for m in data["models"])
    chip_note = ("Chip latency and energy: from the `board.json` that `qana deploy` wrote on a real board." if measured
                 else f"Chip latency and energy: only from a `board.json` that `qana deploy` writes on a real board; "
                      f"{NO_BOARD_NOTE}.")
    devices = ", ".join(f"{d['name']} ({d['akida']}, IP {d['ip']}, {d['nps']} NPs)" for d in data["devices"])
    notes = [
        f"Generated by `qana hardware-table` (akida {data['akida_version']}) from the `.fbz` files in `models/` and "
        "the JSON beside them; nothing is re-evaluated.",
        f"Devices: {devices}. Cells: mapped with `hw_only=True` in one pass (`MapMode.AllNps`), else in N passes "
        "(the mode that worked, HwPr = partial reconfiguration), NPs used, program bytes; \"does not map\"; "
        "\"IP vN only\" when the model is for the other Akida IP version.",
        "Accuracy: HAM10000 lesion-level test split, integer (Akida) model, from the named file: `evaluate_*.json` "
        "(`qana evaluate` of this .fbz), `fidelity.json` (`qana deploy`, Akida simulator), or `learn_*.json` "
        "(`qana learn`: exact integer emulation of the written readout; class-incremental rows: accuracy and "
        "macro-F1 over the classes learned so far, no balanced accuracy). 5-class models are scored on their 5 "
        "classes. MACs: `akida.Model.macs`; for IP v1 models, where akida reports none, counted from the layers' "
        "shapes. "
        f"{TFLITE_LABEL}: `qana export` of the float model the folder's Akida model was converted from (full-integer "
        "TFLite for CPUs and microcontrollers, run with the TFLite interpreter; figures from `export.json`).",
        "min NPs: `akida.compute_min_device` without and with `enable_hwpr` (— where akida cannot size it).",
        chip_note,
    ]
    if headline_only:
        notes.insert(0, f"Models of their own `models/` folder; all {len(data['models'])} (with the ablations, seeds "
                        "and crop fine-tunes): [reports/hardware/hardware_table.md](reports/hardware/hardware_table.md).")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write_hardware_table(models_dir: str | Path = "models", out_dir: str | Path = "reports/hardware",
                         readme: str | Path | None = None, root: str | Path | None = None, log=print) -> dict:
    """Build the table, write ``hardware_table.md`` / ``.json`` in ``out_dir`` and the README block."""
    from qana_keras.markdown import rewrite_block

    data = build_table(models_dir, root)
    out_dir = Path(out_dir)
    markdown = render_markdown(data)
    write_json(out_dir / "hardware_table.json", data)
    plot_accuracy_vs_cost(data["models"], out_dir / "accuracy_vs_cost.png")
    atomic_write_text(out_dir / "hardware_table.md", "# Published Akida models on the standard devices\n\n"
                      + markdown)
    log(f"wrote {out_dir / 'hardware_table.md'}, hardware_table.json and accuracy_vs_cost.png ({len(data['models'])} models x "
        f"{len(data['devices'])} devices)")
    if readme:
        changed = rewrite_block(readme, render_markdown(data, headline_only=True), BLOCK)
        log(f"{readme}: block {BLOCK} {'rewritten' if changed else 'unchanged'}")
    return data
