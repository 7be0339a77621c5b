"""Markdown tables of the side studies, read from the JSON their commands wrote.

- readout head ablation: ``scripts/head_ablation.py RUN --akida`` -> ``models/<model>/head_ablation.json``
- lesion crop: ``qana crop --json`` -> ``reports/crop/*.json``
- hardware cost: ``qana hardware-cost --json`` -> ``models/hardware_cost.json``
- seeds: ``scripts/seed_summary.py`` -> ``models/seeds/summary.json`` (reference recipe), ``<recipe>_summary.json``
  (``--akida``: ``<recipe>_akida_summary.json``, the Akida integer models)

Their commands print these tables and ``qana report`` renders them into reports/README.md and the docs/*.md
pages that hold their markers, so no figure of a study is typed by hand.
"""
from __future__ import annotations

from pathlib import Path

from qana_keras import CLASSES
from qana_keras.io import display_path
from qana_keras.markdown import ReportError, table
from qana_keras.reporting.models import read_optional_json


PAIRED = (("top1", "Δ top-1"), ("macro_f1", "Δ macro-F1"), ("balanced_accuracy", "Δ bal. acc."))
CROP_VARIANTS = {"whole": "whole image", "saliency_crop": "saliency crop",
                 "saliency_crop_tiling": "saliency crop + 2x2 tiling fallback", "mask_crop": "mask crop (oracle)",
                 "centre_crop": "centred box of the saliency box's size"}


SEED_COLUMNS = ("top1", "balanced_accuracy", "macro_f1", "recall_akiec", "recall_df", "recall_vasc")


def _diff_points(d: dict) -> str:
    """A paired difference in points with its interval; ``*`` when the interval excludes zero."""
    return (f"{100 * d['difference']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
            + (" *" if d.get("real") else ""))


def head_ablation_table(data: dict, column: str) -> str:
    """One column ("float", "quantized" or "akida") of a head ablation: test figures and recalls per row,
    paired lesion-bootstrap differences against row a."""
    header = ["row", "top-1", "macro-F1", "bal. acc.", *(f"recall {c}" for c in CLASSES),
              "Δ macro-F1 vs a (pt)", "Δ bal. acc. vs a (pt)"]
    rows = []
    for key, row in data["rows"].items():
        m = row["test"][column]
        d = m.get("vs_baseline_95")
        no_delta = key == "a" or d is None
        delta = ["—", "—"] if no_delta else [_diff_points(d[k]) for k in ("macro_f1", "balanced_accuracy")]
        rows.append([f"{key} {row['name']}", *(f"{m[k]:.3f}" for k in ("top1", "macro_f1", "balanced_accuracy")),
                     *(f"{m['recall'][c]:.3f}" for c in CLASSES), *delta])
    return table(header, rows)


def head_ablation_markdown(data: dict, title: str) -> str:
    """Every column the ablation measured, each under its own heading line."""
    split = data.get("test_split", {})
    parts = []
    for column in ("float", "quantized", "akida"):
        if column in next(iter(data["rows"].values()))["test"]:
            parts.append(f"**{title}, {column}** (test split, {split.get('images', '?')} images, "
                         f"{split.get('lesions', '?')} lesions):\n\n{head_ablation_table(data, column)}")
    return "\n\n".join(parts + ["\\* the paired lesion-bootstrap interval (1,000 resamples) excludes 0."])


def crop_table(report: dict, split: str = "test") -> str:
    """Whole image against the crop views of one ``qana crop`` evaluation, with paired differences."""
    r = report[split]
    classifier, whole_classifier = report["classifier"], report.get("baseline") or report["classifier"]
    rows = []
    for key, name in CROP_VARIANTS.items():
        if key not in r["variants"]:
            continue
        s = r["variants"][key]
        paired = r["paired_vs_whole"].get(key)
        rows.append([name, f"`{whole_classifier if key == 'whole' else classifier}`",
                     *(f"{s[k]:.3f}" for k in ("top1", "macro_f1", "balanced_accuracy")),
                     *(["—"] * 3 if paired is None else [_diff_points(paired[k]) for k, _ in PAIRED])])
    header = ["view", "classifier", "top-1", "macro-F1", "bal. acc.", *(f"{t} vs whole (pt)" for _, t in PAIRED)]
    t = r["tiling"]
    return "\n".join([
        f"{split} split: {r['n_images']} images, {r['n_lesions']} lesions; `{report.get('command', 'qana crop')}`", "",
        table(header, rows), "",
        f"Tiling fallback: max softmax < {t['threshold']:.3f} (chosen on validation) on {t['triggered']} images "
        f"({100 * t['trigger_rate']:.1f}%), {t['changed_predictions']} predictions changed. Saliency box vs mask box: "
        f"mean IoU {r['iou']['salient_box_vs_mask_box']['mean']:.3f}. \\* the paired lesion-bootstrap interval "
        "excludes 0."])


def hardware_cost_table(rows: list[dict]) -> str:
    """One line per model. Float MACs count the Keras graph's convolutions and dense layers; Akida MACs are
    ``akida.Model.macs``, which also counts the layers the converter inserts. "NPs used" on a standard device
    grows with the device (the mapper spreads layers), so the smallest footprint is ``compute_min_device``."""
    lines = ["| model | input | params | float MMACs | Akida MMACs | head inputs | r_succ | smallest standard device, one "
             "pass | NPs used there (by type) | program KB | compute_min_device: NPs used / available, passes |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---|"]
    for r in rows:
        if r.get("params") is None:
            lines.append(f"| {r['name']} | {r['image_size']} | error: {r['error']} |" + " |" * 8)
            continue
        types = ", ".join(f"{t} {n}" for t, n in (r.get("nps_by_type") or {}).items())
        cmd = r.get("compute_min_device") or {}
        prog = f"{r['program_bytes'] / 1024:.0f}" if r.get("program_bytes") else "-"
        cmd_text = (f"{cmd.get('nps')} / {cmd.get('nps_available')}, {cmd.get('passes')}" if cmd.get("ok")
                    else "does not map")
        r_succ = r.get("r_succ") if r.get("r_succ") is not None else "-"
        akida_macs = f"{r['akida_macs'] / 1e6:.1f}" if r.get("akida_macs") is not None else "-"
        lines.append(f"| {r['name']} | {r['image_size']} | {r['params']:,} | {r['macs'] / 1e6:.1f} | {akida_macs} "
                     f"| {r['head_inputs']} | {r_succ} | {r.get('min_device') or 'none'} "
                     f"| {r.get('nps') or '-'} ({types or '-'}) | {prog} | {cmd_text} |"
                     + (f" error: {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def seed_table(summary: dict) -> str:
    """Test figures per seed and their mean ± sample standard deviation (of the float model, or of the Akida
    integer model for ``seed_summary.py --akida``)."""
    rows = [[f"`{r['run']}`", str(r["seed"]), *(f"{r[c]:.3f}" for c in SEED_COLUMNS)] for r in summary["runs"]]
    s = summary["summary"]
    rows.append([f"mean ± sd ({len(summary['runs'])} seeds)", "",
                 *(f"{s[c]['mean']:.3f} ± {s[c]['std']:.3f}" for c in SEED_COLUMNS)])
    header = ["run", "seed", "top-1", "bal. acc.", "macro-F1", "recall akiec", "recall df", "recall vasc"]
    what = "Akida integer model" if summary.get("model") == "akida" else "Float Keras model"
    return f"{what}, test split.\n\n" + table(header, rows)


def find_studies(models_dir: Path, out_dir: Path) -> dict[str, list[Path]]:
    """The side studies' JSON files (above): head ablations, crop studies, hardware cost, seeds."""
    return {"head": sorted(models_dir.glob("*/head_ablation.json")), "crop": sorted((out_dir / "crop").glob("*.json")),
            "hardware_cost": [p for p in [models_dir / "hardware_cost.json"] if p.is_file()],
            # summary.json (the reference recipe) first, then one <recipe>_summary.json per other recipe
            "seeds": sorted((models_dir / "seeds").glob("*summary.json"), key=lambda p: (p.name != "summary.json", p))}


def study_blocks(studies: dict[str, list[Path]]) -> dict[str, str]:
    """Markdown of each side study. Keys ``report:NAME`` are README blocks; "head (all)" and "crop (all)"
    hold every file for reports/README.md."""

    def render(path: Path, markdown, *args, data: dict | None = None) -> str:
        try:
            return f"From `{display_path(path)}`.\n\n{markdown(data or read_optional_json(path), *args)}"
        except (KeyError, TypeError, AttributeError, StopIteration) as error:
            raise ReportError(f"{path}: not the output of its study's command (missing or malformed {error}); "
                              "regenerate it with the command in the module docstring of "
                              "qana_keras.reporting.studies") from None

    heads = [render(p, head_ablation_markdown, f"`{display_path(p.parent)}`") for p in studies["head"]]
    crops = [(data, render(p, crop_table, data=data))
             for p, data in ((p, read_optional_json(p)) for p in studies["crop"])]
    blocks = {}
    if heads:  # models/qana sorts first: the README shows the reference's ablation
        blocks["report:head"], blocks["head (all)"] = heads[0], "\n\n".join(heads)
    if crops:  # the README shows the matched experiment: a classifier trained on crops against whole images
        matched = [text for data, text in crops if data.get("classifier_trained_on", "none") != "none"]
        blocks["report:crop"] = "\n\n".join(matched) or "No matched crop study."
        blocks["crop (all)"] = "\n\n".join(text for _, text in crops)
    for p in studies["hardware_cost"]:
        blocks["report:hardware-cost"] = render(p, hardware_cost_table)
    if studies["seeds"]:
        blocks["report:seeds"] = "\n\n".join(render(p, seed_table) for p in studies["seeds"])
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
