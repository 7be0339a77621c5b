"""Ablation tables (``models/ablations/*.json``, schema ``qana-ablation/1``): check, fill one row from
`qana evaluate` JSON files (`qana ablation-row`), render as Markdown."""
from __future__ import annotations

from pathlib import Path

from qana_keras.io import write_json
from qana_keras.markdown import ReportError, fmt_ci, fmt_diff, table
from qana_keras.reporting.evaluations import METRICS
from qana_keras.reporting.models import model_summary, read_optional_json


ABLATION_SCHEMA = "qana-ablation/1"


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
    data = read_optional_json(path)
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
    evaluation = read_optional_json(Path(evaluation_path))
    if evaluation is None:
        raise ReportError(f"evaluation {evaluation_path} not found; run `qana evaluate ... --json {evaluation_path}`")
    reference = None if is_reference else read_optional_json(Path(reference_path))
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
    fidelity = read_optional_json(Path(fidelity_path))
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
