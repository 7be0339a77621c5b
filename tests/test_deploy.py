"""Virtual-device mapping, simulator run and fidelity report with the real akida package (no board here)."""
from __future__ import annotations

import numpy as np
import pytest
from fixtures import random_images
from test_convert import converted_tiny_run

from qana_keras import CLASSES
from qana_keras.onchip.deploy import (VIRTUAL_DEVICES, deploy_run, fidelity_markdown, fidelity_report, near_ties,
                                     virtual_device_report)
from qana_keras.runtime.progress import run_with_progress
from qana_keras.runtime.load import predict_logits
from qana_keras.runtime.devices import NO_BOARD_NOTE, STANDARD_DEVICES, DeviceError
from qana_keras.io import read_json


@pytest.fixture(scope="module")
def tiny_akida(tiny_qana):
    return tiny_qana.qmodel, tiny_qana.akida()


def test_virtual_device_report_on_a_tiny_model(tiny_akida):
    qmodel, ak = tiny_akida
    lines = []
    rows = virtual_device_report(ak, log=lines.append)
    assert [r["device"] for r in rows] == [*VIRTUAL_DEVICES, "compute_min_device"]
    assert len(lines) == len(rows)
    by_name = {r["device"]: r for r in rows}
    assert [by_name[n]["nps_available"] for n in VIRTUAL_DEVICES] == [8, 16, 24, 48]
    big = by_name["TwelveNodesIPv2"]
    assert big["ok"] and big["single_pass"] and big["sequences"] == 1 and big["passes"] == 1
    assert big["nps"] == sum(n for t, n in big["components"].items() if t.startswith(("CNP", "FNP", "TNP")))
    assert big["components"]["FNP3"] == 1 or big["components"].get("FNP2") == 1  # the dense head
    assert big["program_bytes"] > 0 and big["external_memory_bytes"] >= 0
    assert by_name["compute_min_device"]["ok"] and by_name["compute_min_device"]["single_pass"]
    for row in rows:  # either mapped in one hardware sequence, or the akida error says why not
        assert row["ok"] or "Cannot map" in row["error"] or row["error"]
    # The report leaves the model unmapped, so it still runs on the software backend.
    x = random_images(8, seed=5)
    np.testing.assert_array_equal(predict_logits(ak, x), predict_logits(ak, x))
    assert ak.sequences[0].backend.name == "Software"


def test_run_with_progress_prints_periodic_lines(tiny_akida):
    _, ak = tiny_akida
    lines = []
    logits, seconds = run_with_progress(ak, random_images(25, seed=6), "sim", batch_size=10, every_seconds=0.0,
                                        log=lines.append)
    assert logits.shape == (25, 7) and seconds > 0
    assert [line.split()[1] for line in lines] == ["10/25", "20/25", "25/25"]


def _onehot_logits(pred: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASSES), dtype=np.float32)[pred]


def test_fidelity_report_checks_the_targets():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), 30)
    groups = np.arange(len(labels)) // 2  # two images per lesion
    float_pred = np.where(rng.random(len(labels)) < 0.8, labels, (labels + 1) % 7)
    logits = _onehot_logits(float_pred)
    same = fidelity_report(labels, groups, {"float": logits, "quantized": logits, "akida": logits}, r_succ=1.0)
    assert same["all_targets_met"] and same["argmax_agreement"]["akida_vs_float"] == 1.0
    assert same["max_abs_logit_diff_akida_vs_quantized"] == 0.0
    assert set(same["models"]) == {"float", "quantized", "akida"}
    for m in same["models"].values():
        assert set(m) >= {"top1", "balanced_accuracy", "macro_f1", "per_class"}
        assert set(m["per_class"]) == set(CLASSES)
    # Akida gets three more 'vasc' images wrong: agreement 98.6 %, vasc recall -10 pt.
    worse = float_pred.copy()
    vasc = np.flatnonzero((labels == 6) & (float_pred == 6))[:3]
    worse[vasc] = 0
    report = fidelity_report(labels, groups, {"float": _onehot_logits(float_pred),
                                              "quantized": _onehot_logits(float_pred), "akida": _onehot_logits(worse)},
                             r_succ=1.0)
    assert not report["all_targets_met"]
    assert not report["checks"]["no_class_recall_drop_over_2pt"]
    assert not report["checks"]["argmax_agreement_at_least_99pct"]
    assert report["worst_class_recall_drop"]["class"] == "vasc"
    assert report["worst_class_recall_drop"]["pt"] == pytest.approx(10.0)
    md = fidelity_markdown({**report, "akida_backend": "test"}, "t")
    assert "| recall vasc (n=30) |" in md and "**no**" in md


def test_near_ties_separate_coin_toss_flips_from_changed_decisions():
    rng = np.random.default_rng(1)
    rows = np.arange(400)
    reference = rng.normal(0, 1, (400, 7)).astype(np.float32)
    reference[rows, rng.integers(0, 7, 400)] += 6.0  # clear decisions ...
    order = np.argsort(reference, axis=1)
    reference[rows[:20], order[:20, -2]] = reference[rows[:20], order[:20, -1]] - 0.01  # ... but 20 near ties
    other = reference + rng.normal(0, 0.05, reference.shape).astype(np.float32)
    other[rows[:20], order[:20, -2]] += 0.2  # the near ties flip
    result = near_ties(reference, other)
    assert result["flips"] == 20 and result["flips_at_near_ties"] == 20
    assert result["agreement_beyond_near_ties"] == 1.0 and 0.05 <= result["near_tie_share"] < 0.2
    other[25, order[25, -2]] += 20.0  # a clear decision changed: not a near tie
    changed = near_ties(reference, other)
    assert changed["flips"] == 21 and changed["flips_at_near_ties"] <= 20 and changed["agreement_beyond_near_ties"] < 1
    labels = reference.argmax(1)
    report = fidelity_report(labels, rows, {"float": reference, "quantized": other, "akida": other}, r_succ=1.0)
    assert report["near_ties_akida_vs_float"] == changed
    assert "argmax flips are among them" in fidelity_markdown({**report, "akida_backend": "test"}, "t")


def test_fidelity_names_per_class_figures_by_the_runs_classes():
    """A 5-class run (no df, no vasc): its fourth output is mel, not CLASSES[3] = df."""
    classes = ("akiec", "bcc", "bkl", "mel", "nv")
    labels = np.repeat(np.arange(5), 10)
    groups = np.arange(len(labels))
    pred = labels.copy()
    pred[labels == 3] = 4  # every melanoma called a nevus
    logits = np.eye(5, dtype=np.float32)[pred]
    report = fidelity_report(labels, groups, {"float": logits, "quantized": logits, "akida": logits}, r_succ=1.0,
                             classes=classes)
    assert report["classes"] == list(classes)
    per_class = report["models"]["akida"]["per_class"]
    assert list(per_class) == list(classes)
    assert per_class["mel"]["recall"] == 0.0 and per_class["bkl"]["recall"] == 1.0
    md = fidelity_markdown({**report, "akida_backend": "test"}, "t")
    assert "| recall mel (n=10) | 0.00 | 0.00 | 0.00 |" in md and "recall df" not in md and "recall vasc" not in md
    with pytest.raises(ValueError, match="7 classes"):
        fidelity_report(labels, groups, {"float": logits, "quantized": logits, "akida": logits}, r_succ=1.0)


@pytest.fixture(scope="module")
def converted_run(tmp_path_factory):
    run, config, _ = converted_tiny_run(tmp_path_factory)
    return run, config


def test_deploy_without_board_maps_and_simulates(converted_run):
    import akida

    if akida.devices():
        pytest.skip("an Akida board is attached; this test covers the no-board path")
    run, _ = converted_run
    lines = []
    out = deploy_run(run, batch_size=4, log=lines.append)
    assert lines[0].startswith("loading the float, quantized and Akida models")  # progress before the slow load
    assert lines[1] == NO_BOARD_NOTE
    assert sum("no Akida board" in line for line in lines) == 1
    # The default device is the smallest standard one that runs the model in one pass, and the log says so.
    one_pass = [r for r in out["standard_devices"] if r["status"] == "one-pass"]
    assert out["device"] == min(one_pass, key=lambda r: r["nps_available"])["device"]
    assert lines[2].startswith(f"device: {out['device']} (chosen: the smallest standard device that runs it): one pass")
    assert [r["device"] for r in out["virtual_devices"]] == [d.name for d in STANDARD_DEVICES]
    assert out["board"] is None and out["chip_measurements"] == {"measured_on_chip": False, "note": NO_BOARD_NOTE}
    assert "not chip" in out["simulator"]["note"]
    assert any("Akida software simulator (CPU):" in line for line in lines)

    fidelity = read_json(run / "fidelity.json")
    assert fidelity["r_succ"] == 1.0 and fidelity["split"] == "test"
    assert set(fidelity["argmax_agreement"]) == {"quantized_vs_float", "akida_vs_float", "akida_vs_quantized"}
    assert fidelity["argmax_agreement"]["akida_vs_quantized"] == 1.0
    assert fidelity["max_abs_logit_diff_akida_vs_quantized"] < 1e-2
    for name in ("float", "quantized", "akida"):
        m = fidelity["models"][name]
        assert 0 <= m["top1"] <= 1 and set(m["per_class"]) == set(CLASSES)
        assert sum(m["per_class"][c]["support"] for c in CLASSES) == fidelity["n_images"]
    md = (run / "fidelity.md").read_text()
    assert "| top-1 |" in md and "| argmax agreement Akida vs float |" in md
    assert read_json(run / "deploy.json")["fidelity"]["checks"] == fidelity["checks"]


def test_deploy_refuses_an_unknown_device_before_any_work(converted_run, tiny_akida):
    import akida

    if akida.devices():
        pytest.skip("an Akida board is attached")
    run, _ = converted_run
    with pytest.raises(DeviceError, match="unknown device 'NoSuchDevice'; valid names: akd1000, "):
        deploy_run(run, device="NoSuchDevice", log=lambda *_: None)
    # `--device TwelveNodesIPv2` restricts the report to that device.
    rows = virtual_device_report(tiny_akida[1], ("TwelveNodesIPv2",), include_min=False, log=lambda *_: None)
    assert [r["device"] for r in rows] == ["TwelveNodesIPv2"]


def test_cli_deploy_device_errors_are_one_line(converted_run, capsys):
    import akida

    from qana_keras.cli import main

    if akida.devices():
        pytest.skip("an Akida board is attached")
    run, _ = converted_run
    assert main(["deploy", "--run", str(run), "--device", "SevenNodes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "valid names: akd1000, akd1500, two-nodes-v2" in err
    # The tiny run is an Akida 2.0 model: AKD1000 (Akida 1.0) refuses it, with where it fits instead.
    assert main(["deploy", "--run", str(run), "--device", "AKD1000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "is an IP v2 model and akd1000 is an IP v1 device; smallest standard device it fits: " in err
    assert "compute_min_device " in err and f"`qana deploy --run {run} --device " in err
    assert main(["deploy", "--run", str(run), "--device", "board"]) == 2
    assert "no Akida board found" in capsys.readouterr().err


def test_bench_writes_cpu_figures(converted_run):
    from qana_keras.cli import main

    run, _ = converted_run
    assert main(["bench", "--run", str(run), "--min-seconds", "0.01"]) == 0
    bench = read_json(run / "bench.json")
    assert "not Akida chip" in bench["note"]
    assert len(bench["rows"]) == 6 and {r["batch_size"] for r in bench["rows"]} == {1, 100}
    assert any("Akida software backend" in r["model"] for r in bench["rows"])
    for row in bench["rows"]:
        assert row["images_per_second"] > 0
        assert row["ms_per_image"] == pytest.approx(1000 / row["images_per_second"])


def test_quick_profile_says_its_figures_mean_nothing(converted_run, tmp_path):
    import shutil

    from qana_keras.conversion.run import convert_run
    from qana_keras.runs import QUICK_NOTE

    run = tmp_path / "run"
    shutil.copytree(converted_run[0], run)  # the shared run stays as the other tests expect it
    lines = []
    report = convert_run(run, num_calibration=32, batch_size=16, qat_epochs=3, qat_threshold=-1.0, quick=True,
                         overwrite=True, log=lines.append)
    assert report["quick"] and report["note"] == QUICK_NOTE and "mean nothing" in QUICK_NOTE
    assert report["qat"]["epochs"] <= 1  # capped by the smoke profile
    assert lines[0] == QUICK_NOTE and lines[-1] == QUICK_NOTE
    out = deploy_run(run, batch_size=4, quick=True, log=lines.append)  # the smallest device it fits
    assert out["quick"] and read_json(run / "fidelity.json")["note"] == QUICK_NOTE
    assert QUICK_NOTE in (run / "fidelity.md").read_text() and lines[-1] == QUICK_NOTE
