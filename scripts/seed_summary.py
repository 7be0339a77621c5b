#!/usr/bin/env python
"""Mean and spread of test metrics over runs that differ only in seed.

usage: python scripts/seed_summary.py runs/qana-ref runs/qana-seed1 runs/qana-seed2 [--akida] [--json OUT]

Float Keras figures come from each run's metrics.json; with ``--akida`` the Akida integer model's test
figures come from the run's fidelity JSON (``qana deploy``: fidelity.json, or the one fidelity_<precision>.json).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from qana_keras.failures import run_main
from qana_keras.io import read_json, write_json
from qana_keras.reporting.studies import SEED_COLUMNS, seed_table

KEYS = ("top1", "balanced_accuracy", "macro_f1")
RARE = ("akiec", "df", "vasc")


def akida_test_figures(run: Path) -> dict:
    """The Akida model's test figures from the run's one fidelity JSON (written by ``qana deploy``)."""
    found = sorted(run.glob("fidelity*.json"))
    if len(found) != 1:
        raise ValueError(f"{run}: {len(found)} fidelity JSON files ({', '.join(p.name for p in found) or 'none'}); "
                         "--akida needs exactly one: run `qana deploy --run RUN` (with --bits for 4-bit models)")
    fidelity = read_json(found[0])
    if fidelity.get("split") != "test" or fidelity.get("quick"):
        raise ValueError(f"{found[0]}: not a full test-split deployment; re-run `qana deploy` without --quick")
    return fidelity["models"]["akida"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--akida", action="store_true", help="the Akida integer model's test figures (fidelity JSON)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = []
    for run in args.runs:
        test = akida_test_figures(Path(run)) if args.akida else read_json(Path(run) / "metrics.json")["test"]
        row = {"run": run, "seed": None, **{k: test[k] for k in KEYS},
               **{f"recall_{c}": test["per_class"][c]["recall"] for c in RARE}}
        config = (Path(run) / "config.yaml").read_text()
        row["seed"] = next((line.split(":")[1].strip() for line in config.splitlines()
                            if line.strip().startswith("seed:")), None)
        rows.append(row)
    summary = {c: {"mean": float(np.mean([r[c] for r in rows])), "std": float(np.std([r[c] for r in rows], ddof=1))
                   if len(rows) > 1 else 0.0} for c in SEED_COLUMNS}
    result = {"model": "akida" if args.akida else "float", "runs": rows, "summary": summary}
    print(seed_table(result))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    sys.exit(run_main(main))
