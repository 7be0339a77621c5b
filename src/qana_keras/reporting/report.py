"""`qana report`: reports/ (Markdown + PNG) from JSON files only.

Inputs: each published model folder under ``models/`` (``metrics.json`` from training, and when present
``conversion.json``, ``deploy.json``, ``fidelity.json``, ``bench.json``), fresh ``qana evaluate`` runs of
its models on the HAM10000 test split and PAD-UFES-20 (cached in ``reports/evaluate/`` and redone only
when the model, data, split or evaluation code changes), and ablation tables (``models/ablations/*.json``,
format in ``reporting.ablations.load_ablation``), and the side studies' JSON (head ablation, crop, hardware cost,
seeds; rendered by ``reporting.studies``). Every number in the output is read from one of those files; a row
that has no result says "not run", a figure nobody measured says "not measured".

Marked blocks (``<!-- report:start -->`` ... ``<!-- report:end -->``, or ``<!-- report:NAME:start -->``)
of a README or model card are rewritten with generated Markdown by ``replace_block``.

TensorFlow is imported only when an evaluation has to be computed.
"""
from __future__ import annotations

import glob
import os
import time
from pathlib import Path

from qana_keras.io import atomic_write_text, read_json
from qana_keras.markdown import ReportError, rewrite_block, rewrite_blocks_across, rewrite_present_blocks
from qana_keras.reporting.ablations import load_ablation, render_ablation
from qana_keras.reporting.evaluations import HAM_TEST, PAD_UFES, evaluation_plan, run_evaluations
from qana_keras.reporting.models import discover_models, model_summary
from qana_keras.reporting.studies import find_studies, study_blocks
from qana_keras.reporting.tables import model_card_blocks, render_report, results_block


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
        changed += rewrite_present_blocks(model_card, blocks)
    seconds = round(time.perf_counter() - began, 1)
    log(f"report: wrote {out_dir / 'README.md'} ({len(evaluations)} evaluations, {len(ablation_tables)} ablation "
        f"tables) in {seconds} s" + (f"; rewrote {', '.join(changed)}" if changed else ""))
    return {"evaluations": sorted(evaluations), "ablations": [str(p) for p in ablation_paths],
            "changed": changed, "seconds": seconds}
