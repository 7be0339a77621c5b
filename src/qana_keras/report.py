"""`qana report`: reports/ (Markdown + PNG) from JSON files only.

Inputs: each published model folder under ``models/`` (``metrics.json`` from training, and when present
``conversion.json``, ``deploy.json``, ``fidelity.json``, ``bench.json``), fresh ``qana evaluate`` runs of
its models on the HAM10000 test split and PAD-UFES-20 (cached in ``reports/evaluate/`` and redone only
when the model, data, split or evaluation code changes), and ablation tables (``models/ablations/*.json``,
format in ``load_ablation``), and the side studies' JSON (head ablation, crop, hardware cost, seeds;
rendered by ``qana_keras.studies``). Every number in the output is read from one of those files; a row that has
no result says "not run", a figure nobody measured says "not measured".

Marked blocks (``<!-- report:start -->`` ... ``<!-- report:end -->``, or ``<!-- report:NAME:start -->``)
of a README or model card are rewritten with generated Markdown by ``replace_block``.

TensorFlow is imported only when an evaluation has to be computed.
"""
from __future__ import annotations

import glob
import os
import time
from pathlib import Path

from qana_keras import CLASSES
from qana_keras.io import atomic_write_text, read_json, sha256_file, write_json
from qana_keras.markdown import (ReportError, _rewrite_present_blocks, fmt_ci, fmt_diff, has_block,  # noqa: F401
                                 replace_block, rewrite_block, rewrite_blocks_across, table)

REFERENCE_MODEL = "qana"  # the folder every other model is paired against in the tables
EVALUATION_VERSION = 1  # bump when `qana evaluate` output changes: cached evaluations are then recomputed
METRICS = (("top1", "top-1"), ("balanced_accuracy", "balanced acc."), ("macro_f1", "macro-F1"))
ABLATION_SCHEMA = "qana-ablation/1"
HAM_TEST = "ham10000-test"
PAD_UFES = "pad-ufes-20"
DATASET_TITLES = {HAM_TEST: "HAM10000 lesion-level test split", PAD_UFES: "PAD-UFES-20 (partial copy, external)"}


# ---------------------------------------------------------------------------------------------------
# Model folders


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except ValueError as error:  # read_json names the file
        raise ReportError(str(error)) from None


def discover_models(models_dir: str | Path) -> list[Path]:
    """Folders of ``models_dir`` that hold a training ``metrics.json``, sorted by name.

    A model trained on a class subset (``classes.json``: the class-incremental backbones) is left out:
    the report's tables are over all 7 HAM10000 classes; those folders carry their own Markdown reports.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ReportError(f"models folder {models_dir} not found")
    return sorted(p.parent for p in models_dir.glob("*/metrics.json") if not (p.parent / "classes.json").exists())


def _smallest_device(devices: list[dict]) -> dict | None:
    """The standard virtual device with the fewest NPs available, or None."""
    return min(devices, key=lambda d: d.get("nps_available", 1e9)) if devices else None


def model_summary(model_dir: Path) -> dict:
    """The figures a report needs from one model folder's JSON files (None where a file is absent)."""
    metrics = _read(model_dir / "metrics.json")
    if metrics is None or "test" not in metrics:
        raise ReportError(f"{model_dir / 'metrics.json'}: no 'test' section; publish a trained run "
                          "(scripts/publish_model.py)")
    conversion, deploy = _read(model_dir / "conversion.json"), _read(model_dir / "deploy.json")
    fidelity, bench = _read(model_dir / "fidelity.json"), _read(model_dir / "bench.json")
    variant = metrics.get("variant", "qana")
    artifacts = {"float": f"{variant}_float.h5"}
    if conversion:
        artifacts.update({k: v for k, v in conversion.get("artifacts", {}).items() if k in ("quantized", "akida")})
    artifacts = {k: v for k, v in artifacts.items() if (model_dir / v).is_file()}
    ok = [d for d in (deploy or {}).get("virtual_devices", [])
          if d.get("ok") and d.get("device") != "compute_min_device"]
    one_pass = _smallest_device([d for d in ok if d.get("passes") == 1])
    mapped = one_pass or _smallest_device(ok)  # a one-pass mapping first: what a user deploys
    minimal = next((d for d in (deploy or {}).get("virtual_devices", [])
                    if d.get("device") == "compute_min_device" and d.get("ok")), None)
    source = (model_dir / "SOURCE").read_text().strip() if (model_dir / "SOURCE").is_file() else None
    return {"name": model_dir.name, "dir": str(model_dir), "variant": variant, "source": source,
            "metrics": metrics, "conversion": conversion, "deploy": deploy, "fidelity": fidelity, "bench": bench,
            "artifacts": artifacts, "parameters": metrics.get("parameters"),
            "macs": (conversion or {}).get("akida", {}).get("macs"), "smallest_device": mapped,
            "smallest_one_pass_device": one_pass, "compute_min_device": minimal}


# ---------------------------------------------------------------------------------------------------
# Evaluations (cached)


def _sha256(path: str | Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return sha256_file(path)


def evaluation_plan(summaries: list[dict], ham_dir: str | None, pad_dir: str | None) -> list[dict]:
    """One entry per (model folder, artifact, dataset): float and (when converted) Akida, on HAM10000
    test and PAD-UFES-20. Entries whose data is missing carry ``skip`` (the reason)."""
    from qana_keras.config import load_config

    plan = []
    for s in summaries:
        config = load_config(Path(s["dir"]) / "config.yaml")
        ham = ham_dir or config.data.data_dir
        for kind in ("float", "akida"):
            if kind not in s["artifacts"]:
                continue
            model = Path(s["dir"]) / s["artifacts"][kind]
            for dataset, data in ((HAM_TEST, ham), (PAD_UFES, pad_dir)):
                entry = {"name": f"{s['name']}__{kind}__{dataset}", "model_name": s["name"], "kind": kind,
                         "dataset": dataset, "model": str(model), "data": data,
                         "split_file": config.data.split_file if dataset == HAM_TEST else None}
                marker = "HAM10000_metadata.csv" if dataset == HAM_TEST else "metadata.csv"
                if not data or not (Path(data) / marker).is_file():
                    entry["skip"] = (f"no {DATASET_TITLES[dataset]} at {data}" if data else
                                     f"no {DATASET_TITLES[dataset]} given (--pad-ufes or $QANA_PAD_UFES_DIR)")
                plan.append(entry)
    return plan


def fingerprint(entry: dict, n_boot: int) -> dict:
    """What an evaluation depends on; a cached evaluation is reused only when all of it is equal."""
    model = Path(entry["model"])
    marker = "HAM10000_metadata.csv" if entry["dataset"] == HAM_TEST else "metadata.csv"
    return {"version": EVALUATION_VERSION, "model": _sha256(model), "config": _sha256(model.parent / "config.yaml"),
            "conversion": _sha256(model.parent / "conversion.json") if model.suffix == ".fbz" else None,
            "metadata": _sha256(Path(entry["data"]) / marker), "split_file": _sha256(entry["split_file"]),
            "n_images_dir": len(os.listdir(Path(entry["data"]) / "images"))
            if entry["dataset"] == PAD_UFES else None, "n_boot": n_boot}


def run_evaluations(plan: list[dict], out_dir: Path, cache_dir: str | None = None, force: bool = False,
                    n_boot: int = 1000, log=print) -> dict[str, dict]:
    """Evaluate every runnable plan entry into ``out_dir/<name>.json`` (+ PNGs), reusing matching results."""
    from qana_keras.evaluate import evaluate_to_json

    results = {}
    for entry in plan:
        if entry.get("skip"):
            log(f"report: skipping {entry['name']}: {entry['skip']}")
            continue
        path = out_dir / f"{entry['name']}.json"
        key = fingerprint(entry, n_boot)
        cached = _read(path) if path.exists() and not force else None
        if cached and cached.get("fingerprint") == key:
            log(f"report: {path} is up to date")
            results[entry["name"]] = cached
            continue
        began = time.perf_counter()
        result = evaluate_to_json(path, model_path=entry["model"], data=entry["data"],
                                  fmt="ham10000" if entry["dataset"] == HAM_TEST else PAD_UFES,
                                  split="test" if entry["dataset"] == HAM_TEST else None,
                                  split_file=entry["split_file"], cache_dir=cache_dir, n_boot=n_boot, log=log)
        result["fingerprint"] = key
        write_json(path, result)
        log(f"report: evaluated {entry['name']} in {time.perf_counter() - began:.0f} s")
        results[entry["name"]] = result
    return results


# ---------------------------------------------------------------------------------------------------
# Ablations


def load_ablation(path: str | Path) -> dict:
    """Read and check an ablation table. Format (``schema`` "qana-ablation/1")::

        {"schema": "qana-ablation/1", "title": "...", "description": "...",
         "evaluated_on": "HAM10000 lesion-level test split", "reference": "<name of the reference row>",
         "rows": [{"name": "...", "description": "...", "command": "...",
                   "result": null  # not run yet
                          | {"artifact": "akida" | "quantized" | "float", "source": "<evaluate JSON>",
                             "n_images": int, "n_units": int,
                             "top1": {"value", "low", "high"}, "balanced_accuracy": {...}, "macro_f1": {...},
                             "macs": int | null, "params": int | null, "nps": int | null,
                             "nps_device": absent (NPs on the smallest one-pass standard device)
                                           | "compute_min_device" (fits no standard device),
                             "paired_vs_reference": null | {"top1": {"difference", "low", "high", "real"}, ...},
                             "float_vs_akida": absent | null | {"source": "<fidelity.json>", "n_images": int,
                                 "float": {"top1", "balanced_accuracy", "macro_f1"}, "akida": {...},
                                 "argmax_agreement": float, "all_targets_met": bool}}}]}

    Raises ReportError naming the file and row of every problem.
    """
    path = Path(path)
    data = _read(path)
    if data is None:
        raise ReportError(f"ablation table {path} not found")
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not an ablation table (a JSON object with schema {ABLATION_SCHEMA!r}); "
                          "move other JSON files out of models/ablations/")
    problems = []
    if data.get("schema") != ABLATION_SCHEMA:
        problems.append(f"schema is {data.get('schema')!r}, expected {ABLATION_SCHEMA!r}")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        problems.append("'rows' must be a non-empty list")
        rows = []
    names = [r.get("name") for r in rows if isinstance(r, dict)]
    if data.get("reference") not in names:
        problems.append(f"reference {data.get('reference')!r} is not the name of a row ({', '.join(map(str, names))})")
    for i, row in enumerate(rows, 1):
        where = f"row {i} ({row.get('name')!r})" if isinstance(row, dict) else f"row {i}"
        if not isinstance(row, dict) or not row.get("name"):
            problems.append(f"{where}: needs a 'name'")
            continue
        if names.count(row["name"]) > 1:
            problems.append(f"{where}: name used twice")
        result = row.get("result")
        if result is None:
            continue
        if not isinstance(result, dict):
            problems.append(f"{where}: 'result' must be an object or null (not run)")
            continue
        for key, _ in METRICS:
            m = result.get(key)
            if not (isinstance(m, dict) and all(isinstance(m.get(f), (int, float)) and 0 <= m[f] <= 1
                                                for f in ("value", "low", "high")) and m["low"] <= m["high"]):
                problems.append(f"{where}: result.{key} must be {{value, low, high}} in [0, 1] with low <= high, "
                                f"got {m!r}")
        for key in ("macs", "params", "nps"):
            if result.get(key) is not None and not (isinstance(result[key], int) and result[key] >= 0):
                problems.append(f"{where}: result.{key} must be a non-negative integer or null, got {result[key]!r}")
        if result.get("nps_device", "compute_min_device") != "compute_min_device":
            problems.append(f"{where}: result.nps_device must be absent or 'compute_min_device', "
                            f"got {result['nps_device']!r}")
        paired = result.get("paired_vs_reference")
        if paired is not None:
            for key, d in paired.items():
                if not (isinstance(d, dict) and all(isinstance(d.get(f), (int, float))
                                                    for f in ("difference", "low", "high"))):
                    problems.append(f"{where}: paired_vs_reference.{key} must be {{difference, low, high, real}}")
        fa = result.get("float_vs_akida")
        if fa is not None and not (isinstance(fa, dict) and all(
                isinstance(fa.get(kind), dict) and all(isinstance(fa[kind].get(k), (int, float)) for k, _ in METRICS)
                for kind in ("float", "akida")) and isinstance(fa.get("argmax_agreement"), (int, float))
                and isinstance(fa.get("all_targets_met"), bool)):
            problems.append(f"{where}: result.float_vs_akida must be absent, null or {{float, akida, argmax_agreement, "
                            "all_targets_met}} (refill the row with `qana ablation-row ... --overwrite`)")
    if problems:
        raise ReportError(f"ablation table {path} is not usable:\n" + "\n".join(f"  - {p}" for p in problems))
    return data


def ablation_result(evaluation: dict, reference: dict | None = None, macs: int | None = None,
                    params: int | None = None, nps: int | None = None, source: str | None = None,
                    artifact: str | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """An ablation row's ``result`` from a ``qana evaluate`` JSON and (not for the reference row) the
    reference's: metrics with intervals, and the paired lesion bootstrap of row minus reference on the
    same images. The two evaluations must cover the same images."""
    from qana_keras.metrics import paired_confusion_bootstrap

    ci = evaluation["bootstrap_95"]
    out = {"artifact": artifact or _artifact_kind(evaluation.get("model", "")), "source": source,
           "n_images": evaluation["n_images"], "n_units": ci.get("n_units"),
           **{k: {"value": evaluation[k], "low": ci[k]["low"], "high": ci[k]["high"]} for k, _ in METRICS},
           "macs": macs, "params": params, "nps": nps, "paired_vs_reference": None}
    if reference is not None:
        a, b = reference["predictions"], evaluation["predictions"]
        if a["image_id"] != b["image_id"] or a["label"] != b["label"]:
            raise ReportError(f"{source or 'evaluation'} and the reference were not evaluated on the same images "
                              "in the same order; evaluate both on the same split")
        out["paired_vs_reference"] = paired_confusion_bootstrap(a["label"], a["predicted"], b["predicted"],
                                                                a["group"], n_boot=n_boot, seed=seed)
    return out


def fill_ablation_row(table_path: str | Path, row: str, evaluation_path: str | Path,
                      reference_path: str | Path | None = None, run_dir: str | Path | None = None,
                      n_boot: int = 1000, overwrite: bool = False) -> dict:
    """Write the ``result`` of row ``row`` of the ablation table at ``table_path`` from a ``qana evaluate``
    JSON (and the reference row's, unless ``row`` is the reference). MACs, parameters and NPs come from
    ``run_dir`` (default: the folder of the evaluated model): conversion.json, metrics.json, deploy.json (NPs of the
    smallest standard device that runs it in one pass);
    those absent stay null ("not measured"). A filled row is replaced only with ``overwrite``. Returns the row."""
    table_path = Path(table_path)
    data = load_ablation(table_path)
    names = [r["name"] for r in data["rows"]]
    if row not in names:
        raise ReportError(f"{table_path}: no row named {row!r}; rows are {', '.join(names)}")
    if data["rows"][names.index(row)].get("result") is not None and not overwrite:
        raise ReportError(f"{table_path}: row {row!r} already has a result (from "
                          f"{data['rows'][names.index(row)]['result'].get('source')}); pass --overwrite to replace it")
    is_reference = row == data["reference"]
    if not is_reference and reference_path is None:
        raise ReportError(f"{table_path}: row {row!r} needs --reference, the evaluate JSON of the reference row "
                          f"{data['reference']!r} on the same images (for the paired bootstrap)")
    evaluation = _read(Path(evaluation_path))
    if evaluation is None:
        raise ReportError(f"evaluation {evaluation_path} not found; run `qana evaluate ... --json {evaluation_path}`")
    reference = None if is_reference else _read(Path(reference_path))
    if not is_reference and reference is None:
        raise ReportError(f"reference evaluation {reference_path} not found")
    run_dir = Path(run_dir) if run_dir else Path(evaluation["model"]).parent
    summary = {"macs": None, "parameters": None, "smallest_one_pass_device": None, "compute_min_device": None}
    if (run_dir / "metrics.json").is_file():
        summary = model_summary(run_dir)
    device = summary["smallest_one_pass_device"]  # the NPs of a one-pass mapping, as in the hardware-cost table
    # A model too big for every standard device still has a footprint: the NPs of the device akida sizes for it.
    device = device or summary["compute_min_device"]
    result = ablation_result(evaluation, reference, macs=summary["macs"], params=summary["parameters"],
                             nps=device["nps"] if device else None, source=str(evaluation_path), n_boot=n_boot)
    if device is not None and device["device"] == "compute_min_device":
        result["nps_device"] = "compute_min_device"
    result["float_vs_akida"] = float_vs_akida(run_dir / "fidelity.json")
    data["rows"][names.index(row)]["result"] = result
    write_json(table_path, data)
    load_ablation(table_path)  # the table still passes its own checks
    return data["rows"][names.index(row)]


def float_vs_akida(fidelity_path: Path) -> dict | None:
    """The float and Akida test figures of a run's fidelity.json (``qana deploy``), for the ablation tables'
    float-vs-Akida view; None when the run has no fidelity report."""
    fidelity = _read(Path(fidelity_path))
    if fidelity is None:
        return None
    try:
        return {"source": str(fidelity_path), "n_images": fidelity["n_images"],
                **{kind: {k: fidelity["models"][kind][k] for k, _ in METRICS} for kind in ("float", "akida")},
                "argmax_agreement": fidelity["argmax_agreement"]["akida_vs_float"],
                "all_targets_met": fidelity["all_targets_met"]}
    except (KeyError, TypeError) as e:
        raise ReportError(f"{fidelity_path}: not a fidelity report of `qana deploy` (missing {e}); "
                          "re-run `qana deploy --run <run>`") from None


def _artifact_kind(model: str) -> str:
    return "akida" if model.endswith(".fbz") else "float" if model.endswith("_float.h5") else "quantized"


def _fmt_nps(result: dict) -> str:
    if result.get("nps") is None:
        return "not measured"
    if result.get("nps_device") == "compute_min_device":
        return f"{result['nps']} (fits no standard device)"
    return str(result["nps"])


def render_ablation(data: dict) -> str:
    """Markdown table of an ablation; rows without a result read "not run", absent hardware figures
    "not measured". Paired differences (points) in bold when their 95% interval excludes zero."""
    header = ["row", "artifact", *[f"{t} [95% CI]" for _, t in METRICS], *[f"Δ {t} vs ref (pt)" for _, t in METRICS],
              "Akida MACs (M)", "params", "NPs"]
    rows = []
    for row in data["rows"]:
        name = row["name"] + (" (reference)" if row["name"] == data["reference"] else "")
        r = row.get("result")
        if r is None:
            rows.append([name] + ["not run"] * (len(header) - 1))
            continue
        paired = r.get("paired_vs_reference") or {}
        reference = row["name"] == data["reference"]
        rows.append([name, r.get("artifact") or "?",
                     *[fmt_ci(r[k]["value"], r[k]) for k, _ in METRICS],
                     *["—" if reference else fmt_diff(paired.get(k)) if paired else "not computed"
                       for k, _ in METRICS],
                     f"{r['macs'] / 1e6:.1f}" if r.get("macs") is not None else "not measured",
                     f"{r['params']:,}" if r.get("params") is not None else "not measured",
                     _fmt_nps(r)])
    lines = [f"### {data.get('title', 'Ablation')}", ""]
    if data.get("description"):
        lines += [data["description"], ""]
    lines += [f"Evaluated on: {data.get('evaluated_on', 'not stated')}.", "", table(header, rows)]
    lines += _float_vs_akida_table(data)
    commands = [f"- {row['name']}: `{row['command']}`" for row in data["rows"] if row.get("command")]
    if commands:
        lines += ["", "Commands:", "", *commands]
    return "\n".join(lines)


def _float_vs_akida_table(data: dict) -> list[str]:
    """Markdown lines: each run row's float Keras and Akida test figures side by side (from fidelity.json)."""
    rows = []
    for row in data["rows"]:
        if row.get("result") is None:
            continue
        fa = row["result"].get("float_vs_akida")
        if fa is None:
            rows.append([row["name"]] + ["no fidelity.json"] * 8)
            continue
        rows.append([row["name"], *[f"{fa['float'][k]:.3f}" for k, _ in METRICS],
                     *[f"{fa['akida'][k]:.3f}" for k, _ in METRICS],
                     f"{100 * fa['argmax_agreement']:.1f} %", "yes" if fa["all_targets_met"] else "no"])
    if not rows:
        return []
    header = ["row", *[f"float {t}" for _, t in METRICS], *[f"Akida {t}" for _, t in METRICS],
              "argmax agreement Akida vs float", "fidelity targets met"]
    return ["", "Float Keras model and its Akida conversion on the same test images (`fidelity.json` of "
            "`qana deploy`; targets: top-1 within 0.5 pt, macro-F1 within 1 pt, agreement >= 99 %, no class "
            "recall down > 2 pt):", "", table(header, rows)]


# ---------------------------------------------------------------------------------------------------
# Markdown


def _headline_rows(summaries: list[dict], evaluations: dict, dataset: str) -> list[list[str]]:
    rows = []
    for s in summaries:
        for kind in ("float", "akida"):
            e = evaluations.get(f"{s['name']}__{kind}__{dataset}")
            if e is None:
                continue
            ci = e["bootstrap_95"]
            rows.append([f"`models/{s['name']}`", kind, f"{e['n_images']:,} ({ci['n_units']:,} {ci['unit']})",
                         *[fmt_ci(e[k], ci[k]) for k, _ in METRICS], fmt_ci(e.get("macro_auc"), ci.get("macro_auc"))])
    return rows


HEADLINE = ["model", "artifact", "images (resampled units)", *[f"{t} [95% CI]" for _, t in METRICS],
            "macro AUC [95% CI]"]


def paired_comparisons(evaluations: dict, dataset: str, n_boot: int = 1000) -> str:
    """Paired lesion bootstrap of every evaluation on ``dataset`` minus the reference model's float one (the first
    one when there is none) on the same images:
    differences in points, bold when the 95% interval excludes zero. Empty when there is < 2."""
    from qana_keras.metrics import paired_confusion_bootstrap

    names = [n for n in evaluations if n.endswith(f"__{dataset}")]
    if len(names) < 2:
        return ""
    # The reference model's float evaluation first (models are listed by folder name, and "akd..." sorts earlier).
    reference = f"{REFERENCE_MODEL}__float__{dataset}"
    names.sort(key=lambda n: n != reference)
    ref = evaluations[names[0]]["predictions"]
    rows = []
    for name in names[1:]:
        other = evaluations[name]["predictions"]
        if other["image_id"] != ref["image_id"] or other["label"] != ref["label"]:
            rows.append([name.replace("__", " / "), "other images: not comparable", "", ""])
            continue
        diff = paired_confusion_bootstrap(ref["label"], ref["predicted"], other["predicted"], ref["group"],
                                          n_boot=n_boot)
        rows.append([name.replace("__", " / "), *[fmt_diff(diff[k]) for k, _ in METRICS]])
    return (f"Paired differences against {names[0].replace('__', ' / ')} on the same images (points, 95% interval "
            f"from {n_boot:,} paired resamples of {evaluations[names[0]]['bootstrap_95']['unit']}; bold: the "
            "interval excludes zero):\n\n" + table(["evaluation", *[f"Δ {t}" for _, t in METRICS]], rows))


def results_block(summaries: list[dict], evaluations: dict) -> str:
    """The README results table: HAM10000 test split, every evaluated model, intervals; hardware line."""
    rows = _headline_rows(summaries, evaluations, HAM_TEST)
    if not rows:  # no fresh evaluation: fall back to the training-time metrics.json
        rows = [[f"`models/{s['name']}`", "float (metrics.json)", f"{s['metrics']['test']['n_images']:,}",
                 *[fmt_ci(s["metrics"]["test"][k], s["metrics"]["test"].get("bootstrap_95", {}).get(k))
                   for k, _ in METRICS], fmt_ci(s["metrics"]["test"].get("macro_auc"), None)] for s in summaries]
    lines = ["Generated by `make report` (`qana report`) from the JSON files in `models/` and `reports/evaluate/`; "
             "details in [reports/README.md](reports/README.md). HAM10000 lesion-level test split, 95% intervals "
             f"from {_n_boot(evaluations):,} bootstrap resamples of lesions.", "", table(HEADLINE, rows)]
    paired = paired_comparisons(evaluations, HAM_TEST)
    if paired:
        lines += ["", paired]
    hw = [_hardware_sentence(s) for s in summaries if s["deploy"]]
    if hw:
        lines += ["", *hw]
    return "\n".join(lines)


def _n_boot(evaluations: dict) -> int:
    """The bootstrap count of the evaluations (training's metrics.json uses 1,000); one number or an error."""
    counts = {e["bootstrap_95"]["n_boot"] for e in evaluations.values()} or {1000}
    if len(counts) > 1:
        raise ReportError(f"evaluations with different bootstrap counts {sorted(counts)}; rerun with --force")
    return counts.pop()


def _hardware_sentence(s: dict) -> str:
    d = s["smallest_device"]
    sim = (s["deploy"] or {}).get("simulator", {})
    parts = [f"`models/{s['name']}` on Akida:"]
    hybrid = (s["conversion"] or {}).get("hybrid")
    if hybrid:  # the figures below are then the Akida prefix's; the rest runs on the host CPU
        c = s["conversion"]
        parts.append(f"hybrid, only the prefix up to `{hybrid['cut_after']}` runs on Akida "
                     f"({c.get('integer_layers')} of {c.get('counted_layers')} layers, r_succ {c.get('r_succ', 0):.3f}; "
                     f"{hybrid.get('host_layers')} layers on the host CPU)")
    if d:
        parts.append(f"{'the prefix ' if hybrid else ''}maps in {d.get('passes', '?')} hardware pass(es) on "
                     f"`{d['device']}` ({d.get('nps')} of "
                     f"{d.get('nps_available')} NPs, program {d.get('program_bytes', 0):,} bytes)")
    else:
        parts.append("maps on none of the virtual devices tried")
    if s["macs"]:
        parts.append(f"{s['macs'] / 1e6:.1f} M MACs per image{' on Akida' if hybrid else ''}")
    if sim.get("images_per_second_cpu"):
        parts.append(f"software simulator{' + host tail' if hybrid else ''} {sim['images_per_second_cpu']:.1f} "
                     "images/s on this CPU (not chip speed)")
    board = (s["deploy"] or {}).get("board")
    where = board.get("device") if isinstance(board, dict) else board  # deploy.json holds the board's figures
    parts.append(f"chip latency, power and energy: measured on {where}" if board else
                 "chip latency, power and energy: not measured (no Akida board)")
    return parts[0] + " " + "; ".join(parts[1:]) + "."


def _per_class_table(e: dict) -> str:
    rows = []
    for c in CLASSES:
        p = e["per_class"][c]
        if not p["support"]:
            rows.append([c, "0", "—", "—", "—"])
            continue
        rows.append([c, str(p["support"]), fmt_ci(p["recall"], p.get("recall_95")), f"{p['precision']:.3f}",
                     fmt_ci(p.get("auc"), p.get("auc_95"))])
    return table(["class", "images", "recall [95% CI]", "precision", "AUC one-vs-rest [95% CI]"], rows)


def subgroup_tables(e: dict, attributes: list[str] | None = None) -> str:
    sub = e["subgroups"]
    out = [f"Groups with fewer than {sub['min_units']} {sub['unit']} values are marked *too few to judge*: their "
           "intervals are too wide to separate a real gap from chance (see `qana_keras.subgroups`). Macro metrics "
           "inside a group average the classes present in it. Groups differ in class mix (in HAM10000, follow-up cases "
           "are all nevi), so a gap between groups is not by itself a bias of the model."]
    for attribute, rows in sub["attributes"].items():
        if attributes and attribute not in attributes:
            continue
        body = [[r["value"], str(r["n_images"]), str(r["n_units"]),
                 ", ".join(f"{c} {n}" for c, n in r["class_counts"].items()),
                 *[fmt_ci(r[k], r["bootstrap_95"][k]) for k, _ in METRICS],
                 "too few to judge" if r["too_few"] else ""] for r in rows]
        out += ["", f"**{attribute}**", "",
                table([attribute, "images", sub["unit"], "classes", *[f"{t} [95% CI]" for _, t in METRICS], "note"],
                      body)]
    if sub.get("missing_columns"):
        out += ["", f"Not available in this metadata: {', '.join(sub['missing_columns'])}."]
    return "\n".join(out)


def _conversion_section(s: dict) -> list[str]:
    c, f, b = s["conversion"], s["fidelity"], s["bench"]
    lines = [f"### `models/{s['name']}`", ""]
    if not c:
        return lines + ["Not converted to Akida (no conversion.json): float model only.", ""]
    lines += [f"- Integer-graph completeness r_succ {c['r_succ']:.3f} ({c.get('integer_layers')} of "
              f"{c.get('counted_layers')} layers); hybrid: {'yes' if c.get('hybrid') else 'no'}; Akida layers "
              f"{c.get('akida', {}).get('layers')}; MACs {s['macs']:,}; parameters "
              f"{s['parameters']:,}." if s["macs"] and s["parameters"] else
              f"- Integer-graph completeness r_succ {c['r_succ']:.3f}."]
    for d in (s["deploy"] or {}).get("virtual_devices", []):
        if d.get("ok"):
            lines.append(f"- `{d['device']}` ({d['nps_available']} NPs): maps, {d.get('passes')} pass(es), "
                         f"{d.get('nps')} NPs ({', '.join(f'{k} {v}' for k, v in d.get('components', {}).items())}), "
                         f"program {d.get('program_bytes', 0):,} bytes")
        else:
            lines.append(f"- `{d['device']}` ({d['nps_available']} NPs): does not map ({d.get('error')})")
    if f:
        agree = f["argmax_agreement"]
        lines.append(f"- Fidelity on {f['n_images']} test images: argmax agreement Akida vs float "
                     f"{100 * agree['akida_vs_float']:.2f}%, Akida vs quantized "
                     f"{100 * agree['akida_vs_quantized']:.2f}%; "
                     f"top-1 drop {f['akida_vs_float']['top1_drop_pt']:+.2f} pt, macro-F1 drop "
                     f"{f['akida_vs_float']['macro_f1_drop_pt']:+.2f} pt, worst class recall drop "
                     f"{f['worst_class_recall_drop']['class']} {f['worst_class_recall_drop']['pt']:+.2f} pt; "
                     f"all targets met: {'yes' if f['all_targets_met'] else 'no'} "
                     f"(details `models/{s['name']}/fidelity.md`).")
    if b:
        rows = [[r["model"], str(r["batch_size"]), f"{r['images_per_second']:.1f}", f"{r['ms_per_image']:.1f}"]
                for r in b.get("rows", [])]
        lines += ["", f"CPU speed on this machine ({b.get('machine', {}).get('cpus')} cores; `bench.json`). "
                  "The Akida row is the software simulator, not the chip:", "",
                  table(["model", "batch", "images/s", "ms/image"], rows)]
    return lines + [""]


HARDWARE_NOT_MEASURED = ("Akida chip latency per image", "Akida chip throughput", "power and energy per image "
                         "(needs a board: `device.soc.power_measurement_enabled`)", "on-chip learning on silicon")


def board_rows(board) -> list[tuple[str, str, str]]:
    """(item, value, source) of each ``HARDWARE_NOT_MEASURED`` item: the figures ``devices.measure_board`` wrote
    into deploy.json when it ran on a board, else "not measured". Deploy never measures on-chip learning."""
    if not isinstance(board, dict) or not board.get("measured_on_chip"):
        return [(item, "not measured (no board)", "—") for item in HARDWARE_NOT_MEASURED]

    def num(key, spec):
        return format(board[key], spec) if isinstance(board.get(key), (int, float)) else "not recorded"

    on = f"on {board.get('device', 'the board')}"
    energy = (f"{num('energy_mj_per_image', '.3f')} mJ/image at {num('average_power_mw', '.0f')} mW average "
              f"(batch {board.get('batch_size')}) {on}" if board.get("energy_mj_per_image") is not None
              else f"not measured ({board.get('power_note', 'no power figures')}) {on}")
    source = "deploy.json (board)"
    latency, throughput, power, learning = HARDWARE_NOT_MEASURED
    return [(latency, f"{num('latency_ms_batch1', '.2f')} ms at batch 1, {num('latency_ms_per_image_batched', '.2f')} "
                      f"ms/image at batch {board.get('batch_size')} {on}", source),
            (throughput, f"{num('throughput_images_per_second', '.1f')} images/s at batch {board.get('batch_size')} "
                         f"{on}", source),
            (power, energy, source),
            (learning, "not measured (qana deploy runs inference only)", "—")]


def hardware_block(summaries: list[dict]) -> str:
    rows = []
    for s in summaries:
        d, dep = s["smallest_device"], s["deploy"] or {}
        if not dep:
            continue
        sim, fid = dep.get("simulator", {}), s["fidelity"]
        rows += [[f"`models/{s['name']}`", "parameters", f"{s['parameters']:,}" if s["parameters"] else "n/a",
                  "metrics.json"],
                 [f"`models/{s['name']}`", "MACs per image", f"{s['macs']:,}" if s["macs"] else "not measured",
                  "conversion.json (akida.Model.macs)"]]
        if fid:
            worst = fid["worst_class_recall_drop"]
            rows += [[f"`models/{s['name']}`", "argmax agreement Akida (simulator) vs float, test",
                      f"{100 * fid['argmax_agreement']['akida_vs_float']:.2f}%", "fidelity.json"],
                     [f"`models/{s['name']}`", "worst class-recall drop Akida vs float",
                      f"{worst['class']} {worst['pt']:+.2f} pt", "fidelity.json"],
                     [f"`models/{s['name']}`", "all fidelity targets met", "yes" if fid["all_targets_met"] else "no",
                      "fidelity.json"]]
        rows += [[f"`models/{s['name']}`", "NPs / device (single pass)",
                  f"{d['nps']} on {d['device']}" if d else "maps on no virtual device", "deploy.json (virtual device)"],
                 [f"`models/{s['name']}`", "program size", f"{d['program_bytes']:,} bytes" if d else "n/a",
                  "deploy.json"],
                 [f"`models/{s['name']}`", "simulator images/s (CPU)",
                  f"{sim['images_per_second_cpu']:.1f}" if sim.get("images_per_second_cpu") else "not measured",
                  "deploy.json (software backend, not chip speed)"]]
        rows += [[f"`models/{s['name']}`", item, value, source] for item, value, source in board_rows(dep.get("board"))]
    if not rows:
        return "No model has a deploy.json: nothing was mapped to Akida."
    return table(["model", "figure", "value", "source"], rows)


def find_studies(models_dir: Path, out_dir: Path) -> dict[str, list[Path]]:
    """The side studies' JSON files (see qana_keras.studies): head ablations, crop studies, hardware cost, seeds."""
    return {"head": sorted(models_dir.glob("*/head_ablation.json")), "crop": sorted((out_dir / "crop").glob("*.json")),
            "hardware_cost": [p for p in [models_dir / "hardware_cost.json"] if p.is_file()],
            # summary.json (the reference recipe) first, then one <recipe>_summary.json per other recipe
            "seeds": sorted((models_dir / "seeds").glob("*summary.json"), key=lambda p: (p.name != "summary.json", p))}


def study_blocks(studies: dict[str, list[Path]]) -> dict[str, str]:
    """Markdown of each side study. Keys ``report:NAME`` are README blocks; "head (all)" and "crop (all)"
    hold every file for reports/README.md."""
    from qana_keras import studies as st

    def render(path: Path, markdown, *args, data: dict | None = None) -> str:
        try:
            return f"From `{_relative(path)}`.\n\n{markdown(data or _read(path), *args)}"
        except (KeyError, TypeError, AttributeError, StopIteration) as error:
            raise ReportError(f"{path}: not the output of its study's command (missing or malformed {error}); "
                              "regenerate it with the command in the module docstring of qana_keras.studies") from None

    heads = [render(p, st.head_ablation_markdown, f"`{_relative(p.parent)}`") for p in studies["head"]]
    crops = [(data, render(p, st.crop_table, data=data)) for p, data in ((p, _read(p)) for p in studies["crop"])]
    blocks = {}
    if heads:  # models/qana sorts first: the README shows the reference's ablation
        blocks["report:head"], blocks["head (all)"] = heads[0], "\n\n".join(heads)
    if crops:  # the README shows the matched experiment: a classifier trained on crops against whole images
        matched = [text for data, text in crops if data.get("classifier_trained_on", "none") != "none"]
        blocks["report:crop"] = "\n\n".join(matched) or "No matched crop study."
        blocks["crop (all)"] = "\n\n".join(text for _, text in crops)
    for p in studies["hardware_cost"]:
        blocks["report:hardware-cost"] = render(p, st.hardware_cost_table)
    if studies["seeds"]:
        blocks["report:seeds"] = "\n\n".join(render(p, st.seed_table) for p in studies["seeds"])
    return blocks


def render_studies(blocks: dict[str, str]) -> list[str]:
    titles = (("report:seeds", "Seeds"), ("report:hardware-cost",
              "Hardware cost of every variant (untrained weights; mapping does not depend on them)"),
              ("head (all)", "Readout head: embedding-space SMOTE ablation"), ("crop (all)", "Lesion crop ablation"))
    lines = []
    for key, title in titles:
        if key in blocks:
            lines += [f"### {title}", "", blocks[key], ""]
    return lines


def render_report(summaries: list[dict], evaluations: dict, plan: list[dict], ablations: list[dict],
                  inputs: list[str], studies: dict[str, str] | None = None) -> str:
    lines = ["# QANA evaluation report", "",
             "Generated by `make report` (`qana report`); do not edit by hand. Every number below is read from "
             f"the JSON files listed at the end. Intervals: 95%, {_n_boot(evaluations):,} bootstrap resamples of "
             "lesions (HAM10000) or patients (PAD-UFES-20), never of images.", ""]
    lines += [f"## {DATASET_TITLES[HAM_TEST]}", ""]
    rows = _headline_rows(summaries, evaluations, HAM_TEST)
    lines += [table(HEADLINE, rows) if rows else "No evaluation on HAM10000 (data not found).", ""]
    paired = paired_comparisons(evaluations, HAM_TEST)
    lines += [paired, ""] if paired else []
    train_rows = [[f"`models/{s['name']}`", str(s["metrics"].get("selected_epoch")),
                   *[fmt_ci(s["metrics"]["test"][k], s["metrics"]["test"].get("bootstrap_95", {}).get(k))
                     for k, _ in METRICS]] for s in summaries]
    lines += ["Training-time figures (`metrics.json`, float model selected on validation macro-F1):", "",
              table(["model", "selected epoch", *[f"{t} [95% CI]" for _, t in METRICS]], train_rows), ""]
    for name, e in evaluations.items():
        if not name.endswith(HAM_TEST):
            continue
        lines += [f"### {name.replace('__', ' / ')}", "", _per_class_table(e), "",
                  f"![confusion](evaluate/{name}_confusion.png) ![ROC](evaluate/{name}_roc.png)", ""]
    lines += ["## Subgroups (HAM10000 test split)", ""]
    sub = _preferred(summaries, evaluations, HAM_TEST)
    if sub:
        lines += [f"Model: {sub[0].replace('__', ' / ')}.", "", subgroup_tables(sub[1]), "",
                  f"![subgroups](evaluate/{sub[0]}_subgroups.png)", ""]
    else:
        lines += ["Not evaluated.", ""]
    lines += [f"## {DATASET_TITLES[PAD_UFES]}", "",
              "Clinical smartphone photos (not dermoscopy), 686 of the 2,298 images, not a random subset: indicative "
              "only. df and vasc do not occur, so macro metrics average the five classes present. SCC (invasive "
              "squamous cell carcinoma) has no HAM10000 class and is left out of the metrics; what the model "
              "called those images is listed below.", ""]
    rows = _headline_rows(summaries, evaluations, PAD_UFES)
    lines += [table(HEADLINE, rows) if rows else "Not evaluated (PAD-UFES-20 not found).", ""]
    paired = paired_comparisons(evaluations, PAD_UFES)
    lines += [paired, ""] if paired else []
    pad = _preferred(summaries, evaluations, PAD_UFES)
    if pad:
        ex = pad[1].get("excluded", {})
        for label, info in ex.get("by_label", {}).items():
            called = ", ".join(f"{c} {n}" for c, n in info["predicted"].items() if n)
            lines += [f"{label} ({info['n_images']} images, {pad[0].replace('__', ' / ')}): predicted {called}.", ""]
        lines += [subgroup_tables(pad[1]), "", f"![subgroups](evaluate/{pad[0]}_subgroups.png)", ""]
    lines += ["## Akida conversion, mapping and fidelity", ""]
    for s in summaries:
        lines += _conversion_section(s)
    lines += ["## Hardware figures: measured and not measured", "", hardware_block(summaries), ""]
    lines += ["## Ablations and baselines", ""]
    if ablations:
        for a in ablations:
            lines += [render_ablation(a), ""]
    else:
        lines += ["No ablation table found (models/ablations/*.json).", ""]
    lines += render_studies(studies or {})
    skipped = [f"- {e['name']}: {e['skip']}" for e in plan if e.get("skip")]
    if skipped:
        lines += ["## Not evaluated", "", *skipped, ""]
    lines += ["## Inputs", "", *[f"- `{_relative(p)}`" for p in inputs], ""]
    return "\n".join(lines)


def _relative(path: str | Path) -> str:
    """``path`` relative to the repository (or the working directory) when it is inside it."""
    from qana_keras.config import REPO_ROOT

    path = Path(path).absolute()
    for root in (REPO_ROOT, Path.cwd()):
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


def _preferred(summaries: list[dict], evaluations: dict, dataset: str) -> tuple[str, dict] | None:
    """The evaluation subgroup tables show: the first model's Akida evaluation, else its float one."""
    for s in summaries:
        for kind in ("akida", "float"):
            name = f"{s['name']}__{kind}__{dataset}"
            if name in evaluations:
                return name, evaluations[name]
    return None


def model_card_blocks(summaries: list[dict], evaluations: dict) -> dict[str, str]:
    """Generated parts of MODEL_CARD.md: report:metrics, report:subgroups, report:hardware."""
    ham = _preferred(summaries, evaluations, HAM_TEST)
    pad = _preferred(summaries, evaluations, PAD_UFES)
    metrics = [results_block(summaries, evaluations)]
    if ham:
        metrics += ["", f"Per class, {ham[0].replace('__', ' / ')}:", "", _per_class_table(ham[1])]
    if pad:
        metrics += ["", f"External check on {DATASET_TITLES[PAD_UFES]} (clinical photos; five classes present):", "",
                    table(HEADLINE, _headline_rows(summaries, evaluations, PAD_UFES))]
    subgroups = []
    if ham:
        subgroups += [f"HAM10000 test split, {ham[0].replace('__', ' / ')}:", "", subgroup_tables(ham[1])]
    if pad:
        subgroups += ["", f"Fitzpatrick skin type (PAD-UFES-20, {pad[0].replace('__', ' / ')}; HAM10000 has no "
                      "skin-type labels):", "", subgroup_tables(pad[1], ["fitzpatrick"])]
    return {"report:metrics": "\n".join(metrics) or "Not evaluated.",
            "report:subgroups": "\n".join(subgroups) or "Not evaluated.",
            "report:hardware": hardware_block(summaries)}


# ---------------------------------------------------------------------------------------------------
# Entry point


def build_report(models_dir: str | Path = "models", out_dir: str | Path = "reports", data_dir: str | None = None,
                 pad_ufes_dir: str | None = None, cache_dir: str | None = None, evaluate: bool = True,
                 force: bool = False, ablations: list[str] | None = None,
                 readme: str | Path | list[str | Path] | None = None,
                 model_card: str | Path | None = None, n_boot: int = 1000, log=print) -> dict:
    """Write ``out_dir/README.md`` (+ evaluate/*.json|png, results_block.md); optionally rewrite the
    ``report`` block and the study blocks in ``readme`` (one file or several, e.g. README.md and docs/*.md:
    each block goes to the file that holds its markers) and the ``report:*`` blocks of ``model_card``.
    Returns a summary."""
    began = time.perf_counter()
    models_dir, out_dir = Path(models_dir), Path(out_dir)
    summaries = [model_summary(d) for d in discover_models(models_dir)]
    if not summaries:
        raise ReportError(f"{models_dir}: no model folder with a metrics.json")
    data_dir = data_dir or os.environ.get("QANA_DATA_DIR")
    pad_ufes_dir = pad_ufes_dir or os.environ.get("QANA_PAD_UFES_DIR")
    cache_dir = cache_dir or os.environ.get("QANA_CACHE_DIR")
    plan = evaluation_plan(summaries, data_dir, pad_ufes_dir) if evaluate else []
    evaluations = run_evaluations(plan, out_dir / "evaluate", cache_dir, force, n_boot, log) if evaluate else {}
    order = {f"{s['name']}__{kind}__{dataset}": i for i, (s, kind, dataset) in enumerate(
        (s, kind, dataset) for s in summaries for kind in ("float", "akida") for dataset in (HAM_TEST, PAD_UFES))}
    for path in sorted((out_dir / "evaluate").glob("*__*__*.json")):
        if path.stem not in order:  # a model folder that is gone or lost its weights
            log(f"report: removing {path} and its PNGs: no such model artifact in {models_dir} any more")
            for stale in path.parent.glob(f"{path.stem}*"):
                stale.unlink()
        elif not evaluate and path.stem not in evaluations:  # --no-evaluate: reuse what earlier runs left
            evaluations[path.stem] = read_json(path)
    evaluations = dict(sorted(evaluations.items(), key=lambda item: order[item[0]]))
    ablation_paths = ablations if ablations is not None else sorted(glob.glob(str(models_dir / "ablations" / "*.json")))
    ablation_tables = [load_ablation(p) for p in ablation_paths]
    inputs = [str(Path(s["dir"]) / f) for s in summaries for f in
              ("metrics.json", "conversion.json", "deploy.json", "fidelity.json", "bench.json")
              if (Path(s["dir"]) / f).is_file()]
    studies = find_studies(models_dir, out_dir)
    blocks = study_blocks(studies)
    blocks["report:ablations"] = "\n\n".join(render_ablation(a) for a in ablation_tables) or "No ablation table."
    inputs += [str(out_dir / "evaluate" / f"{n}.json") for n in evaluations] + [str(p) for p in ablation_paths]
    inputs += [str(p) for paths in studies.values() for p in paths]
    markdown = render_report(summaries, evaluations, plan, ablation_tables, inputs, blocks)
    atomic_write_text(out_dir / "README.md", markdown + "\n")
    block = results_block(summaries, evaluations)
    atomic_write_text(out_dir / "results_block.md", block + "\n")
    changed = []
    if readme:
        readmes = [readme] if isinstance(readme, (str, Path)) else list(readme)
        changed += rewrite_blocks_across(readmes, {"report": block, **blocks})
    if model_card:
        for name, content in model_card_blocks(summaries, evaluations).items():
            if rewrite_block(model_card, content, name):
                changed.append(f"{model_card} ({name})")
        changed += _rewrite_present_blocks(model_card, blocks)
    seconds = round(time.perf_counter() - began, 1)
    log(f"report: wrote {out_dir / 'README.md'} ({len(evaluations)} evaluations, {len(ablation_tables)} ablation "
        f"tables) in {seconds} s" + (f"; rewrote {', '.join(changed)}" if changed else ""))
    return {"evaluations": sorted(evaluations), "ablations": [str(p) for p in ablation_paths],
            "changed": changed, "seconds": seconds}
