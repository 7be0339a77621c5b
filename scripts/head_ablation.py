#!/usr/bin/env python
"""Ablation of the embedding-space head on the lesion-level test split, against the head as trained.

usage: python scripts/head_ablation.py RUN [--akida] [--cache FILE] [--n-boot 1000]
       python scripts/head_ablation.py RUN --sweep [--cache FILE]

Rows (all on the same frozen backbone; b-e share one PCA whitening fitted on training embeddings):
  a  baseline      the run's head/dense as trained
  b  no rebalance  linear head refitted on real embeddings, no class weights
  c  class weights linear head refitted on real embeddings, balanced class weights
  d  SMOTE safe    embedding SMOTE from safe anchors (HeadConfig defaults)
  e  SMOTE all     the same without safe-anchor filtering
The inverse L2 strength C of rows b-e is picked per row on VALIDATION macro-F1; nothing is picked on
test. ``--sweep`` instead runs the validation search that chose the HeadConfig defaults (sampler,
safe anchors, ratio, noise, C, components, embedding), writes head_sweep.json and stops.

Columns: "float" = the float Keras model with the folded head (float embeddings); "quantized" = the
folded head on the quantized backbone's embeddings (what the Akida dense layer reads); "akida" (with
--akida, or when the run has been converted) = each folded model quantized and converted with
qana_keras.conversion and run in the Akida simulator. Paired lesion bootstrap (1000 resamples) of every
row against row a, per column. Writes head_ablation.json into RUN.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401

from qana_keras import CLASSES
from qana_keras.config import load_config
from qana_keras.failures import run_main
from qana_keras.refit.head import DENSE_LAYER, run_embeddings, with_dense
from qana_keras.runs import artifact_paths, calibration_indices
from qana_keras.refit.head_fit import HeadConfig, fit_head, fit_whitening
from qana_keras.io import atomic_path, write_json
from qana_keras.metrics import (bootstrap_intervals, classification_metrics, macro_f1,
                                paired_bootstrap_difference)
from qana_keras.reporting.studies import head_ablation_markdown
from qana_keras.runtime.safe_load import load_keras_model

RARE = ("df", "vasc", "akiec")
C_GRID = (0.01, 0.03, 0.1, 0.3)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_key(model_path: Path, data, config: HeadConfig) -> str:
    """What the embeddings depend on: the model file, the quantization settings and the images."""
    return json.dumps({"model": _sha256(model_path), "basis": "float model (equalization undone)",
                       "bits": config.bits, "calibration": config.calibration,
                       "seed": config.seed, "n": {s: len(d) for s, d in data.items()},
                       "images": hashlib.sha256(b"".join(d.images.tobytes() for d in data.values())).hexdigest()},
                      sort_keys=True)


def load_embeddings(run_dir: Path, model, data, variant: str, config: HeadConfig, cache: Path | None, log) -> dict:
    """Float and quantized embeddings of every split, from ``cache`` when it was made from the same inputs."""
    key = cache_key(artifact_paths(run_dir, variant)["float"], data, config)
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as f:
            if str(f["key"]) == key:
                log(f"embeddings from {cache}")
                return {kind: {s: f[f"{kind}_{s}"].astype(np.float64) for s in data} for kind in ("float", "quantized")}
        log(f"{cache} was made from other inputs; recomputing")
    emb = run_embeddings(model, data, variant, ("float", "quantized"), config, log)
    if cache is not None:
        with atomic_path(cache, suffix=".npz") as tmp:
            np.savez(tmp, key=np.array(key), **{f"{k}_{s}": v.astype(np.float32) for k, d in emb.items()
                                                for s, v in d.items()})
    return emb


def _scores(labels, logits) -> dict:
    pred = logits.argmax(1)
    m = classification_metrics(labels, logits)
    return {"top1": m["top1"], "macro_f1": m["macro_f1"], "balanced_accuracy": m["balanced_accuracy"],
            "recall": {c: m["per_class"][c]["recall"] for c in CLASSES}, "predictions": pred}


# --------------------------------------------------------------------------------------------------
# Validation search for the defaults


def sweep(emb, labels_train, labels_val, log) -> dict:
    """Greedy coordinate search on validation macro-F1 of the quantized-embedding logits (the Akida proxy).

    Starts from HeadConfig() and varies one setting at a time in a fixed order, keeping the best
    value before the next setting. Greedy on a 1503-image validation split: the ranking of close
    settings is noise; the test comparison in the ablation is what says whether it helps.
    """
    whitenings = {}

    def evaluate(cfg: HeadConfig) -> dict:
        wkey = (cfg.embedding, cfg.components)
        if wkey not in whitenings:
            whitenings[wkey] = fit_whitening(emb[cfg.embedding]["train"], cfg.components, cfg.whiten_eps)
        began = time.perf_counter()
        head = fit_head(emb[cfg.embedding]["train"], labels_train, cfg, whitening=whitenings[wkey])
        q = head.logits(emb["quantized"]["val"]).argmax(1)
        f = head.logits(emb["float"]["val"]).argmax(1)
        row = {"config": asdict(cfg), "val_macro_f1_quantized": macro_f1(labels_val, q),
               "val_macro_f1_float": macro_f1(labels_val, f),
               "val_balanced_accuracy_quantized": float(np.mean([np.mean(q[labels_val == c] == c)
                                                                 for c in range(len(CLASSES))])),
               "generated": {k: v.get("made") for k, v in head.report["generated"].items()},
               "seconds": round(time.perf_counter() - began, 1)}
        log(f"  {json.dumps({k: v for k, v in asdict(cfg).items() if v != getattr(HeadConfig(), k)})}: "
            f"val macro-F1 quantized {row['val_macro_f1_quantized']:.4f} float {row['val_macro_f1_float']:.4f}")
        return row

    axes = [("sampler", ["smote", "borderline", "svm", "adasyn"]), ("safe_anchors", [True, False]),
            ("ratio", [0.1, 0.25, 0.5, 1.0]), ("noise", [0.0, 0.1, 0.3]), ("C", list(C_GRID)),
            ("components", [128, 256, 512]), ("embedding", ["quantized", "float"])]
    best_cfg, rows, seen = HeadConfig(), [], {}
    for name, values in axes:
        log(f"sweep {name}: {values}")
        scored = []
        for value in values:
            cfg = replace(best_cfg, **{name: value})
            key = json.dumps(asdict(cfg), sort_keys=True)
            if key not in seen:
                seen[key] = evaluate(cfg)
                rows.append(seen[key])
            scored.append((seen[key]["val_macro_f1_quantized"], value))
        best_value = max(scored, key=lambda s: s[0])[1]  # first maximum wins: values are listed simplest first
        best_cfg = replace(best_cfg, **{name: best_value})
        log(f"  -> {name} = {best_value}")
    return {"selection": sweep.__doc__.split("\n\n")[0].strip(), "axes": [[n, v] for n, v in axes],
            "best": asdict(best_cfg), "rows": rows}


# --------------------------------------------------------------------------------------------------
# Ablation


def row_configs(default: HeadConfig) -> dict[str, tuple[str, HeadConfig | None]]:
    return {"a": ("baseline head (as trained)", None),
            "b": ("no rebalancing", replace(default, sampler="none", class_weight="none")),
            "c": ("class weights only", replace(default, sampler="none", class_weight="balanced")),
            "d": ("embedding SMOTE, safe anchors", replace(default, safe_anchors=True)),
            "e": ("embedding SMOTE, no safe-anchor filter", replace(default, safe_anchors=False))}


def pick_c(emb, labels_train, labels_val, cfg: HeadConfig, whitening, log) -> tuple[HeadConfig, dict, tuple]:
    """The C of C_GRID with the best validation macro-F1 (quantized embeddings) for this row.

    The synthetic samples do not depend on C: they are made once and returned for the final fit.
    """
    from qana_keras.refit.head_fit import oversample

    synthetic = oversample(whitening.transform(emb[cfg.embedding]["train"]), labels_train, cfg)
    scores = {}
    for c in C_GRID:
        head = fit_head(emb[cfg.embedding]["train"], labels_train, replace(cfg, C=c), whitening=whitening,
                        synthetic=synthetic)
        scores[c] = macro_f1(labels_val, head.logits(emb["quantized"]["val"]).argmax(1))
    best = max(C_GRID, key=lambda c: scores[c])
    log(f"  C by validation macro-F1: {', '.join(f'{c:g}: {s:.4f}' for c, s in scores.items())} -> {best:g}")
    return replace(cfg, C=best), {str(c): s for c, s in scores.items()}, synthetic


def akida_logits_of(model, data, variant: str, config: HeadConfig, log) -> dict:
    """Quantize (same calibration draw as `qana convert`) and convert ``model``; Akida logits of val and test."""
    from qana_keras.conversion.quantize import integer_completeness, quantize_for_akida, to_akida
    from qana_keras.runtime.load import akida_logits

    picked = calibration_indices(len(data["train"]), config.calibration, config.seed)
    qmodel, _ = quantize_for_akida(model, data["train"].images[picked], variant, bits=config.bits, log=log)
    r_succ = integer_completeness(qmodel)["r_succ"]
    ak = to_akida(qmodel, strict=True, variant=variant, log=log)
    return {"r_succ": r_succ, **{s: akida_logits(ak, data[s].images) for s in ("val", "test")}}


def with_overrides(config: HeadConfig, items: list[str]) -> HeadConfig:
    """``key=value`` strings applied to ``config``, each value parsed as the type of the default."""
    values = {}
    for item in items:
        key, _, value = item.partition("=")
        if not hasattr(config, key):
            raise SystemExit(f"--set {item}: HeadConfig has no setting {key!r}")
        current = getattr(config, key)
        values[key] = value.lower() in ("1", "true", "yes") if isinstance(current, bool) else type(current)(value)
    return replace(config, **values).validate()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--sweep", action="store_true",
                        help="only run the validation search for the defaults (writes head_sweep.json)")
    parser.add_argument("--akida", action="store_true", help="also quantize, convert and simulate every row")
    parser.add_argument("--cache", help="npz caching the embeddings between invocations (e.g. /tmp/emb.npz)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a HeadConfig default (exploration and smoke tests only: the defaults were "
                             "picked on validation data)")
    args = parser.parse_args(argv)

    from qana_keras.runs import load_splits

    began = time.perf_counter()
    run_dir = Path(args.run)
    run_config = load_config(run_dir / "config.yaml")
    variant = run_config.model.variant
    default = with_overrides(HeadConfig(), args.set)
    model = load_keras_model(artifact_paths(run_dir, variant)["float"])
    data = load_splits(run_config.data)
    emb = load_embeddings(run_dir, model, data, variant, default, Path(args.cache) if args.cache else None, print)
    y = {s: d.labels for s, d in data.items()}
    groups = {s: d.frame["lesion_id"].to_numpy() for s, d in data.items()}

    out = {"run": str(run_dir), "variant": variant, "defaults": asdict(default), "n_boot": args.n_boot}
    if args.sweep:
        result = sweep(emb, y["train"], y["val"], print)
        write_json(run_dir / "head_sweep.json", result)
        same = result["best"] == asdict(default)
        print(f"validation search: best {result['best']}\n"
              + ("these are the HeadConfig defaults" if same else f"the HeadConfig defaults differ: {asdict(default)}")
              + f"\nwrote {run_dir / 'head_sweep.json'}")
        return
    if (run_dir / "head_sweep.json").exists():
        out["sweep_best"] = json.loads((run_dir / "head_sweep.json").read_text())["best"]

    akida = args.akida or artifact_paths(run_dir, variant)["report"].exists()
    kernel0, bias0 = (w.astype(np.float64) for w in model.get_layer(DENSE_LAYER).get_weights())
    whitening = fit_whitening(emb[default.embedding]["train"], default.components, default.whiten_eps)
    rows = {}
    for key, (name, cfg) in row_configs(default).items():
        print(f"row {key}: {name}")
        row = {"name": name}
        if cfg is None:
            kernel, bias = kernel0, bias0
            folded = model
        else:
            cfg, row["val_macro_f1_by_C"], synthetic = pick_c(emb, y["train"], y["val"], cfg, whitening, print)
            head = fit_head(emb[cfg.embedding]["train"], y["train"], cfg, whitening=whitening, synthetic=synthetic)
            kernel, bias = head.kernel, head.folded_bias
            row.update(config=asdict(cfg), synthetic=head.report["synthetic"], anchors=head.report["anchors"])
            folded = with_dense(model, kernel, bias)
        logits = {s: {"float": emb["float"][s] @ kernel + bias, "quantized": emb["quantized"][s] @ kernel + bias}
                  for s in ("val", "test")}
        if cfg is not None:
            # The folded Keras model must compute exactly what the head computes on the float embedding.
            keras_logits = folded.predict(data["test"].images, batch_size=256, verbose=0)
            row["folded_model_max_abs_diff"] = float(np.max(np.abs(keras_logits - logits["test"]["float"])))
        if akida:
            ak = akida_logits_of(folded, data, variant, default, print)
            row["akida_r_succ"] = ak["r_succ"]
            for s in ("val", "test"):
                logits[s]["akida"] = ak[s]
            # The quantized column predicts the chip up to the dense layer's own 8-bit weights.
            row["akida_vs_quantized_test_agreement"] = float(np.mean(
                ak["test"].argmax(1) == logits["test"]["quantized"].argmax(1)))
        for s in ("val", "test"):
            row[s] = {col: _scores(y[s], lg) for col, lg in logits[s].items()}
        rows[key] = row

    for s in ("val", "test"):
        for col in rows["a"][s]:
            base = rows["a"][s][col]["predictions"]
            for key, row in rows.items():
                m = row[s][col]
                m["bootstrap_95"] = bootstrap_intervals(y[s], m["predictions"], groups[s], n_boot=args.n_boot)
                if key != "a":
                    m["vs_baseline_95"] = paired_bootstrap_difference(y[s], base, m["predictions"], groups[s],
                                                                      n_boot=args.n_boot)
    for row in rows.values():
        for s in ("val", "test"):
            for m in row[s].values():
                m.pop("predictions")
    out["rows"] = rows
    out["test_split"] = {"images": len(data["test"]), "lesions": int(len(np.unique(groups["test"]))),
                         "groups": "lesion_id"}
    out["seconds"] = round(time.perf_counter() - began, 1)
    out["markdown"] = head_ablation_markdown(out, run_dir.name)
    write_json(run_dir / "head_ablation.json", out)
    print(out["markdown"])
    print(f"wrote {run_dir / 'head_ablation.json'} ({out['seconds']:.0f}s)")


if __name__ == "__main__":
    sys.exit(run_main(main))
