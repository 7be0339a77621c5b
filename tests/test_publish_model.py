"""scripts/publish_model.py: only folders under models/, the run's small artifacts, and an old folder replaced whole."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def publish(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("publish_model", REPO / "scripts" / "publish_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "MODELS", tmp_path / "models")
    return module


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "r"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("metrics.json", "config.yaml", "qana.fbz", "evaluate_akida_pad-ufes-20.json", "export.json",
                 "qana_int8.tflite", "checkpoints/epoch_1.h5", "train.log"):
        (run / name).write_text(name)
    return run


@pytest.mark.parametrize("name", ["", ".", "..", "../elsewhere", "/tmp/outside", "a/../../b"])
def test_a_name_outside_models_is_refused(publish, tmp_path, name):
    with pytest.raises(ValueError, match="give a folder name under models/"):
        publish.main([str(_run(tmp_path)), name, "--overwrite"])


def test_publishes_the_small_artifacts_and_replaces_only_with_overwrite(publish, tmp_path):
    run = _run(tmp_path)
    publish.main([str(run), "ablations/x"])
    dest = tmp_path / "models" / "ablations" / "x"
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["SOURCE", "metrics.json", "config.yaml", "qana.fbz", "evaluate_akida_pad-ufes-20.json", "export.json",
         "qana_int8.tflite"])
    with pytest.raises(FileExistsError, match="exists; pass --overwrite"):
        publish.main([str(run), "ablations/x"])
    (run / "metrics.json").write_text("new")
    publish.main([str(run), "ablations/x", "--overwrite"])
    assert (dest / "metrics.json").read_text() == "new"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x"]  # no .tmp or .old folder left behind


def test_a_run_without_metrics_and_an_oversized_file_are_refused(publish, tmp_path):
    with pytest.raises(FileNotFoundError, match="has no metrics.json; finish training first"):
        publish.main([str(tmp_path / "nowhere"), "x"])
    run = _run(tmp_path)
    with open(run / "big_float.h5", "wb") as f:
        f.truncate(publish.MAX_BYTES + 1)
    with pytest.raises(ValueError, match=r"over 5000000 bytes, not committed: .*big_float.h5"):
        publish.main([str(run), "x"])
    assert not (tmp_path / "models" / "x").exists()
