"""scripts/seed_summary.py: float figures from metrics.json, Akida figures (--akida) from the fidelity JSON."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from qana_keras.io import read_json, write_json

REPO = Path(__file__).resolve().parents[1]
SEEDS = [REPO / "models" / "akd1000-7class-96", REPO / "models" / "seeds" / "akd1000-7class-96-s1"]


def _seed_summary():
    spec = importlib.util.spec_from_file_location("seed_summary", REPO / "scripts" / "seed_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy(run: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for name in ("config.yaml", "metrics.json", "fidelity_i8_w4_a4.json"):
        shutil.copy(run / name, to / name)
    return to


def test_akida_figures_come_from_the_fidelity_json_and_float_from_metrics(tmp_path, capsys):
    runs = [_copy(run, tmp_path / run.name) for run in SEEDS]
    script = _seed_summary()
    script.main([str(r) for r in runs] + ["--akida", "--json", str(tmp_path / "akida.json")])
    script.main([str(r) for r in runs] + ["--json", str(tmp_path / "float.json")])
    akida, float_ = read_json(tmp_path / "akida.json"), read_json(tmp_path / "float.json")
    assert (akida["model"], float_["model"]) == ("akida", "float")
    expected = [read_json(r / "fidelity_i8_w4_a4.json")["models"]["akida"]["top1"] for r in runs]
    assert [row["top1"] for row in akida["runs"]] == expected
    assert akida["summary"]["top1"]["mean"] == pytest.approx(np.mean(expected))
    assert [row["top1"] for row in float_["runs"]] == [read_json(r / "metrics.json")["test"]["top1"] for r in runs]
    assert akida["summary"]["top1"] != float_["summary"]["top1"]  # two different models' figures
    assert [row["seed"] for row in akida["runs"]] == ["0", "1"]
    assert "Akida integer model, test split." in capsys.readouterr().out


def test_akida_needs_exactly_one_full_test_deployment(tmp_path):
    script = _seed_summary()
    run = _copy(SEEDS[0], tmp_path / "run")
    shutil.copy(run / "fidelity_i8_w4_a4.json", run / "fidelity.json")
    with pytest.raises(ValueError, match=r"run: 2 fidelity JSON files \(fidelity.json, fidelity_i8_w4_a4.json\)"):
        script.main([str(run), "--akida"])
    (run / "fidelity.json").unlink()
    quick = read_json(run / "fidelity_i8_w4_a4.json") | {"quick": True}
    write_json(run / "fidelity_i8_w4_a4.json", quick)
    with pytest.raises(ValueError, match="not a full test-split deployment"):
        script.main([str(run), "--akida"])


def test_bits_chooses_the_precision_and_different_models_are_refused(tmp_path):
    script = _seed_summary()
    run = _copy(SEEDS[0], tmp_path / "run")
    eight = read_json(run / "fidelity_i8_w4_a4.json") | {"precision": "i8_w8_a8", "variant": "plain-cnn"}
    write_json(run / "fidelity.json", eight)
    script.main([str(run), "--akida", "--bits", "4", "--json", str(tmp_path / "four.json")])
    assert read_json(tmp_path / "four.json")["runs"][0]["top1"] == \
        read_json(run / "fidelity_i8_w4_a4.json")["models"]["akida"]["top1"]
    other = _copy(SEEDS[1], tmp_path / "other")
    (other / "fidelity_i8_w4_a4.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"other/fidelity_i8_w4_a4.json not found: run `qana deploy"):
        script.main([str(other), "--akida", "--bits", "4"])
    # Another variant under the same precision tag is not the same recipe.
    write_json(other / "fidelity_i8_w4_a4.json", eight)
    with pytest.raises(ValueError, match=r"different Akida models \(plain-cnn i8_w8_a8, plain-cnn-v1 i8_w4_a4\)"):
        script.main([str(run), str(other), "--akida", "--bits", "4"])


def test_partial_fidelity_and_five_class_runs_are_one_line_errors(tmp_path):
    script = _seed_summary()
    run = _copy(SEEDS[0], tmp_path / "run")
    write_json(run / "fidelity_i8_w4_a4.json", {"split": "test"})
    with pytest.raises(ValueError, match=r"fidelity_i8_w4_a4.json: no 'variant' in it"):
        script.main([str(run), "--akida"])
    write_json(run / "fidelity_i8_w4_a4.json", [])
    with pytest.raises(ValueError, match="not a full test-split deployment"):
        script.main([str(run), "--akida"])
    metrics = read_json(run / "metrics.json")
    del metrics["test"]["per_class"]["df"]
    write_json(run / "metrics.json", metrics)
    with pytest.raises(ValueError, match=r"metrics.json: no 'per_class.df.recall' in it"):
        script.main([str(run)])
