#!/usr/bin/env python
"""Mean and spread of test metrics over runs that differ only in seed.

usage: python scripts/seed_summary.py runs/qana-ref runs/qana-seed1 runs/qana-seed2 [--json OUT]
"""
import argparse
import json
from pathlib import Path

import numpy as np

KEYS = ("top1", "balanced_accuracy", "macro_f1")
RARE = ("akiec", "df", "vasc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        metrics = json.loads((Path(run) / "metrics.json").read_text())
        test = metrics["test"]
        row = {"run": run, "seed": None, **{k: test[k] for k in KEYS},
               **{f"recall_{c}": test["per_class"][c]["recall"] for c in RARE}}
        config = (Path(run) / "config.yaml").read_text()
        row["seed"] = next((line.split(":")[1].strip() for line in config.splitlines()
                            if line.strip().startswith("seed:")), None)
        rows.append(row)
    columns = [*KEYS, *(f"recall_{c}" for c in RARE)]
    print("| run | seed | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for r in rows:
        print(f"| {r['run']} | {r['seed']} | " + " | ".join(f"{r[c]:.3f}" for c in columns) + " |")
    summary = {c: {"mean": float(np.mean([r[c] for r in rows])), "std": float(np.std([r[c] for r in rows], ddof=1))
                   if len(rows) > 1 else 0.0} for c in columns}
    print("| mean ± sd | | " + " | ".join(f"{summary[c]['mean']:.3f} ± {summary[c]['std']:.3f}" for c in columns) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
