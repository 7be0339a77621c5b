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
        "*.fbz", "conversion*.json", "fidelity*.json", "fidelity*.md", "deploy*.json", "board*.json", "bench.json", "head_ablation.json",
        "learn_*.json", "learn_*.md", "edge_learning.json", "edge_learning.md", "*.png")
MAX_BYTES = 5_000_000  # anything larger does not belong in git


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("name")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    run, dest = Path(args.run), Path(__file__).resolve().parents[1] / "models" / args.name
    if not (run / "metrics.json").exists():
        print(f"error: {run} has no metrics.json; finish training first", file=sys.stderr)
        return 1
    files = sorted({p for pattern in KEEP for p in run.glob(pattern)})
    too_big = [f"{p} ({p.stat().st_size} bytes)" for p in files if p.stat().st_size > MAX_BYTES]
    if too_big:
        print(f"error: over {MAX_BYTES} bytes, not committed: {too_big}", file=sys.stderr)
        return 1
    if dest.exists() and not args.overwrite:
        print(f"error: {dest} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in files:
        shutil.copy2(p, tmp / p.name)
    (tmp / "SOURCE").write_text(f"copied from {run}\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    print(f"published {len(files)} files to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
