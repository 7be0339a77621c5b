#!/usr/bin/env python
"""Mean and spread of test metrics over runs that differ only in seed.

usage: python scripts/seed_summary.py runs/qana-ref runs/qana-seed1 runs/qana-seed2 [--akida [--bits 8|4]] [--json OUT]

Float Keras figures come from each run's metrics.json; with ``--akida`` the Akida integer model's test
figures come from the run's fidelity JSON (``qana deploy``: fidelity.json, or the one fidelity_<precision>.json;
``--bits`` chooses when a run has both). Every run must hold the same Akida model (variant and precision).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from qana_keras.failures import run_main
from qana_keras.io import read_json, required_values, write_json
from qana_keras.runs import precision_suffix
from qana_keras.reporting.studies import SEED_COLUMNS, seed_table

KEYS = ("top1", "balanced_accuracy", "macro_f1")
RARE = ("akiec", "df", "vasc")


def fidelity_file(run: Path, bits: int | None) -> Path:
    """The run's fidelity JSON of ``bits`` (as `qana deploy` names it), or its only one when ``bits`` is None."""
    if bits is not None:
        path = run / f"fidelity{precision_suffix(bits)}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `qana deploy --run {run} --bits {bits}` first")
        return path
    found = sorted(run.glob("fidelity*.json"))
    if len(found) != 1:
        raise ValueError(f"{run}: {len(found)} fidelity JSON files ({', '.join(p.name for p in found) or 'none'}); "
                         "--akida needs exactly one, or --bits 8/4 to choose: run `qana deploy --run RUN` "
                         "(with --bits for 4-bit models)")
    return found[0]


def akida_test_figures(run: Path, bits: int | None = None) -> tuple[dict, str, Path]:
    """The Akida model's test figures from the run's fidelity JSON (``qana deploy``), the model they are of, and
    the file."""
    path = fidelity_file(run, bits)
    fidelity = read_json(path)
    if not isinstance(fidelity, dict) or fidelity.get("split") != "test" or fidelity.get("quick"):
        raise ValueError(f"{path}: not a full test-split deployment; re-run `qana deploy` without --quick")
    what = required_values(path, fidelity, ("variant", "precision"))
    return required_values(path, fidelity, ("models.akida",))["akida"], f"{what['variant']} {what['precision']}", path


def run_row(run: Path, test: dict, source: Path) -> dict:
    """One run's figures: the headline metrics and the rare classes' recall (a one-line error when one is missing)."""
    row = {"run": str(run), "seed": None, **required_values(source, test, KEYS)}
    for c in RARE:
        row[f"recall_{c}"] = required_values(source, test, (f"per_class.{c}.recall",))["recall"]
    config = (run / "config.yaml").read_text()
    row["seed"] = next((line.split(":")[1].strip() for line in config.splitlines()
                        if line.strip().startswith("seed:")), None)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--akida", action="store_true", help="the Akida integer model's test figures (fidelity JSON)")
    parser.add_argument("--bits", type=int, choices=(8, 4), help="with --akida: the precision whose fidelity JSON "
                        "to read (default: the run's only one)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows, models = [], set()
    for run in map(Path, args.runs):
        if args.akida:
            test, model, source = akida_test_figures(run, args.bits)
            models.add(model)
        else:
            source = run / "metrics.json"
            test = required_values(source, read_json(source), ("test",))["test"]
        rows.append(run_row(run, test, source))
    if len(models) > 1:
        raise ValueError(f"the runs hold different Akida models ({', '.join(sorted(models))}); a seed summary "
                         "compares one recipe: pass runs of one variant and precision (--bits)")
    summary = {c: {"mean": float(np.mean([r[c] for r in rows])), "std": float(np.std([r[c] for r in rows], ddof=1))
                   if len(rows) > 1 else 0.0} for c in SEED_COLUMNS}
    result = {"model": "akida" if args.akida else "float", "runs": rows, "summary": summary}
    print(seed_table(result))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    sys.exit(run_main(main))
