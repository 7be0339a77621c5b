#!/usr/bin/env python
"""Mean and spread of test metrics over runs that differ only in seed.

usage: python scripts/seed_summary.py runs/qana-ref runs/qana-seed1 runs/qana-seed2 [--json OUT]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from qana_keras.failures import run_main
from qana_keras.io import write_json
from qana_keras.reporting.studies import SEED_COLUMNS, seed_table

KEYS = ("top1", "balanced_accuracy", "macro_f1")
RARE = ("akiec", "df", "vasc")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
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
    summary = {c: {"mean": float(np.mean([r[c] for r in rows])), "std": float(np.std([r[c] for r in rows], ddof=1))
                   if len(rows) > 1 else 0.0} for c in SEED_COLUMNS}
    result = {"runs": rows, "summary": summary}
    print(seed_table(result))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    sys.exit(run_main(main))
