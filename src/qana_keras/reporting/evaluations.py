"""The report's own evaluations: every model folder's float and Akida model on the HAM10000 test split and
PAD-UFES-20, run through `qana evaluate` into ``reports/evaluate/`` and redone only when an input changes."""
from __future__ import annotations

import os
import time
from pathlib import Path

from qana_keras.io import sha256_file, write_json
from qana_keras.reporting.models import read_optional_json


EVALUATION_VERSION = 1  # bump when `qana evaluate` output changes: cached evaluations are then recomputed
METRICS = (("top1", "top-1"), ("balanced_accuracy", "balanced acc."), ("macro_f1", "macro-F1"))
HAM_TEST = "ham10000-test"
PAD_UFES = "pad-ufes-20"
DATASET_TITLES = {HAM_TEST: "HAM10000 lesion-level test split", PAD_UFES: "PAD-UFES-20 (partial copy, external)"}


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
    from qana_keras.evaluation.evaluate import evaluate_to_json

    results = {}
    for entry in plan:
        if entry.get("skip"):
            log(f"report: skipping {entry['name']}: {entry['skip']}")
            continue
        path = out_dir / f"{entry['name']}.json"
        key = fingerprint(entry, n_boot)
        cached = read_optional_json(path) if path.exists() and not force else None
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
