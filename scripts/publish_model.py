#!/usr/bin/env python
"""Copy a run's small, final artifacts into models/<name>/ (never checkpoints or logs).

usage: python scripts/publish_model.py runs/qana-ref qana [--overwrite]
"""
import argparse
import shutil
import sys
from pathlib import Path

from qana_keras.failures import run_main

KEEP = ("config.yaml", "versions.json", "metrics.json", "history.csv", "classes.json", "*_float.h5", "*_i8_w*_a*.h5",
        "*.fbz", "*.tflite", "conversion*.json", "fidelity*.json", "fidelity*.md", "deploy*.json", "board*.json",
        "bench.json", "head_ablation.json", "evaluate_*.json", "export*.json", "learn_*.json", "learn_*.md",
        "edge_learning.json", "edge_learning.md", "*.png")
MAX_BYTES = 5_000_000  # anything larger does not belong in git
MODELS = Path(__file__).resolve().parents[1] / "models"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("name", help="a plain folder name under models/ (e.g. qana, ablations/plain-cnn)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    run, dest = Path(args.run), MODELS / args.name
    parts = Path(args.name).parts
    # An empty, absolute or ".." name would point the copy (and --overwrite's delete) at models/ itself or outside it.
    if not parts or Path(args.name).is_absolute() or any(p in (".", "..") for p in parts):
        raise ValueError(f"model name {args.name!r}: give a folder name under models/, such as qana or "
                         "ablations/plain-cnn (not empty, absolute, or with . or ..)")
    if not (run / "metrics.json").exists():
        raise FileNotFoundError(f"{run} has no metrics.json; finish training first")
    files = sorted({p for pattern in KEEP for p in run.glob(pattern)})
    too_big = [f"{p} ({p.stat().st_size} bytes)" for p in files if p.stat().st_size > MAX_BYTES]
    if too_big:
        raise ValueError(f"over {MAX_BYTES} bytes, not committed: {', '.join(too_big)}; leave them out of the run "
                         "folder or publish the rest by hand")
    if dest.exists() and not args.overwrite:
        raise FileExistsError(f"{dest} exists; pass --overwrite to replace it")
    tmp, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in files:
        shutil.copy2(p, tmp / p.name)
    (tmp / "SOURCE").write_text(f"copied from {run}\n")
    # Swap by renames, so a crash leaves either the old folder or the new one in place, never neither.
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    print(f"published {len(files)} files to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
