"""`qana report`: marked blocks, ablation tables, the report from committed JSON, and a tiny model end to end."""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from fixtures import REPO, write_ham10000_fixture, write_pad_ufes_fixture

from qana_keras import CLASSES
from qana_keras.evaluation.evaluate import evaluation_metrics
from qana_keras.io import read_json, write_json
from qana_keras.markdown import ReportError, fmt_ci, replace_block, rewrite_block
from qana_keras.reporting.ablations import ablation_result, fill_ablation_row, load_ablation, render_ablation
from qana_keras.reporting.evaluations import fingerprint
from qana_keras.reporting.report import build_report

QUIET = dict(log=lambda *_: None)
COMMITTED = REPO / "models" / "qana"


# --------------------------------------------------------------------------------------------------
# Marked blocks


def test_replace_block_rewrites_only_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# title\nintro\n<!-- report:start -->\nold table\n<!-- report:end -->\nafter\n")
    assert rewrite_block(readme, "| new | table |")
    text = readme.read_text()
    assert text == "# title\nintro\n<!-- report:start -->\n| new | table |\n<!-- report:end -->\nafter\n"
    assert not rewrite_block(readme, "| new | table |")  # idempotent: unchanged the second time
    card = ("a\n<!-- report:metrics:start -->\nx\n<!-- report:metrics:end -->\n"
            "<!-- report:start -->\ny\n<!-- report:end -->")
    assert replace_block(card, "M", "report:metrics") == card.replace("\nx\n", "\nM\n")


@pytest.mark.parametrize("text, message", [
    ("no markers at all\n", r"README.md: expected the marker <!-- report:start --> exactly once, found it 0 times"),
    ("<!-- report:start -->\n<!-- report:start -->\n<!-- report:end -->\n", r"found it 2 times \(lines 1, 2\)"),
    ("<!-- report:end -->\n<!-- report:start -->\n", r"<!-- report:end --> \(line 1\) comes before"),
])
def test_replace_block_refuses_bad_markers(tmp_path, text, message):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(ReportError, match=message):
        rewrite_block(readme, "table")
    assert readme.read_text() == text  # untouched


# --------------------------------------------------------------------------------------------------
# Ablations


def _evaluation(accuracy: float, seed: int = 0) -> dict:
    """A real evaluate metrics dictionary of synthetic logits on 300 images of 150 lesions."""
    rng = np.random.default_rng(42)
    labels = rng.integers(0, 7, 300)
    hits = np.random.default_rng(seed).random(300) < accuracy
    logits = np.eye(7)[np.where(hits, labels, (labels + 1) % 7)] * 4
    meta = pd.DataFrame({"image_id": [f"ISIC_{i}" for i in range(300)], "dx": [CLASSES[c] for c in labels],
                         "lesion_id": [f"L{i // 2}" for i in range(300)]})
    return {"model": "runs/x/qana.fbz", **evaluation_metrics(meta, logits, "ham10000", n_boot=200)}


def test_planned_ablation_tables_render_not_run():
    paths = sorted((REPO / "models" / "ablations").glob("*.json"))
    assert paths, "models/ablations/*.json: the planned tables are missing"
    for path in paths:
        table = load_ablation(path)
        markdown = render_ablation(table)
        for row in table["rows"]:
            assert row["name"] in markdown
            if row["result"] is None:
                line = next(li for li in markdown.splitlines() if li.startswith(f"| {row['name']}"))
                assert line.count("not run") == 10


def _empty_ablation_plan():
    """The committed ablation plan with every result removed, so tests do not depend on which rows were run."""
    plan = load_ablation(REPO / "models" / "ablations" / "architecture.json")
    for row in plan["rows"]:
        row.pop("result", None)
    return plan


def test_ablation_rows_from_evaluations_render_with_paired_differences(tmp_path):
    reference, better = _evaluation(0.5), _evaluation(0.9, seed=1)
    plan = _empty_ablation_plan()
    plan["rows"][0]["result"] = ablation_result(reference, macs=110_487_552, params=403_383, nps=46)
    plan["rows"][2]["result"] = ablation_result(better, reference, macs=90_000_000, params=300_000, nps=None)
    path = tmp_path / "ablation.json"
    write_json(path, plan)
    markdown = render_ablation(load_ablation(path))
    row = next(li for li in markdown.splitlines() if li.startswith("| no SA-ECA"))
    diff = plan["rows"][2]["result"]["paired_vs_reference"]["macro_f1"]
    assert diff["real"] and diff["low"] > 0
    assert f"**{100 * diff['difference']:+.1f} [" in row  # bold: the interval excludes zero
    top1 = plan["rows"][2]["result"]["paired_vs_reference"]["top1"]
    assert f"{100 * top1['difference']:+.1f} [{100 * top1['low']:+.1f}, {100 * top1['high']:+.1f}]" in row
    assert fmt_ci(better["top1"], better["bootstrap_95"]["top1"]) in row
    assert "| 90.0 | 300,000 | not measured |" in row
    assert "110.5 | 403,383 | 46 |" in markdown
    assert next(li for li in markdown.splitlines() if li.startswith("| no SE")).count("not run") == 10

    other = copy.deepcopy(better)
    other["predictions"]["image_id"] = other["predictions"]["image_id"][::-1]
    with pytest.raises(ReportError, match="not evaluated on the same images"):
        ablation_result(other, reference)


def test_bad_ablation_tables_name_the_file_and_row(tmp_path):
    plan = load_ablation(REPO / "models" / "ablations" / "architecture.json")
    plan["rows"][1]["result"] = {"top1": {"value": 1.3, "low": 0.1, "high": 0.2}, "macs": -1,
                                 "float_vs_akida": {"float": {"top1": 0.7}}}
    plan["reference"] = "nobody"
    path = tmp_path / "bad.json"
    write_json(path, plan)
    with pytest.raises(ReportError) as error:
        load_ablation(path)
    text = str(error.value)
    assert str(path) in text and "reference 'nobody'" in text
    assert "row 2 ('qana-paper (gated SA-ECA and SE)'): result.top1 must be" in text
    assert "result.macs must be a non-negative integer" in text and "result.macro_f1" in text
    assert "result.float_vs_akida must be" in text


# --------------------------------------------------------------------------------------------------
# The report from the committed reference models (JSON only, no evaluation)


def _is_twelve_nodes(device: dict) -> bool:
    """A deploy.json device entry for TwelveNodesIPv2 (older reports name it by its akida class only)."""
    return device.get("akida_device", device["device"]) == "TwelveNodesIPv2"


def test_report_from_committed_json_without_evaluating(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(COMMITTED, models / "qana", ignore=shutil.ignore_patterns("*.h5", "*.fbz", "*.png"))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- report:start -->\n<!-- report:end -->\n")
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("".join(f"<!-- report:{n}:start -->\n<!-- report:{n}:end -->\n"
                            for n in ("metrics", "subgroups", "hardware")))
    summary = build_report(models, tmp_path / "reports", evaluate=False, ablations=[], readme=readme,
                           model_card=card, **QUIET)
    assert summary["evaluations"] == [] and str(readme) in summary["changed"]
    test = read_json(COMMITTED / "metrics.json")["test"]
    block = readme.read_text()
    assert fmt_ci(test["top1"], test["bootstrap_95"]["top1"]) in block  # 0.743 [0.716, 0.768]
    assert fmt_ci(test["macro_f1"], test["bootstrap_95"]["macro_f1"]) in block
    deploy = read_json(COMMITTED / "deploy.json")
    twelve = next(d for d in deploy["virtual_devices"] if _is_twelve_nodes(d))
    hardware = card.read_text()
    assert f"{twelve['nps']} on {twelve['device']}" in hardware
    assert f"{read_json(COMMITTED / 'conversion.json')['akida']['macs']:,}" in hardware
    assert "not measured (no board)" in hardware
    report = (tmp_path / "reports" / "README.md").read_text()
    assert "Integer-graph completeness r_succ 1.000" in report and "does not map" in report
    assert (tmp_path / "reports" / "results_block.md").read_text().strip() in block


def test_the_hardware_sentence_needs_the_folders_akida_model(tmp_path):
    from qana_keras.reporting.models import model_summary
    from qana_keras.reporting.tables import results_block

    folder = tmp_path / "qana"
    shutil.copytree(COMMITTED, folder, ignore=shutil.ignore_patterns("*.h5", "*.png"))
    assert "`models/qana` on Akida: maps in 1 hardware pass(es)" in results_block([model_summary(folder)], {})
    (folder / "qana.fbz").unlink()  # weights not published (like models/qana-r40): no sentence about them
    assert "on Akida" not in results_block([model_summary(folder)], {})


def test_board_figures_in_the_hardware_block_and_on_chip_learning_stays_unmeasured(tmp_path):
    from qana_keras.reporting.models import model_summary
    from qana_keras.reporting.tables import hardware_block

    folder = tmp_path / "qana"
    shutil.copytree(COMMITTED, folder, ignore=shutil.ignore_patterns("*.h5", "*.fbz", "*.png"))
    board = {"measured_on_chip": True, "device": "PCIe/NSoC_v2/0", "batch_size": 100, "latency_ms_batch1": 1.25,
             "latency_ms_per_image_batched": 0.5, "throughput_images_per_second": 2000.0, "average_power_mw": 1100.0,
             "energy_mj_per_image": 0.55}
    write_json(folder / "deploy.json", {**read_json(COMMITTED / "deploy.json"), "board": board})
    rows = {line.split(" | ")[1]: line for line in hardware_block([model_summary(folder)]).splitlines()
            if line.startswith("| `models/qana`")}
    assert "1.25 ms at batch 1, 0.50 ms/image at batch 100 on PCIe/NSoC_v2/0" in rows["Akida chip latency per image"]
    assert "2000.0 images/s at batch 100" in rows["Akida chip throughput"]
    (power,) = [line for item, line in rows.items() if item.startswith("power and energy")]
    assert "0.550 mJ/image at 1100 mW average" in power
    assert "not measured" in rows["on-chip learning on silicon"] and "measured on" not in rows["on-chip learning on silicon"]
    write_json(folder / "deploy.json", {**read_json(COMMITTED / "deploy.json"), "board": {**board,
               "energy_mj_per_image": None, "average_power_mw": None, "power_note": "the board exposes no SoC power meter"}})
    rows = hardware_block([model_summary(folder)])
    assert "not measured (the board exposes no SoC power meter) on PCIe/NSoC_v2/0" in rows


def _study_readme(tmp_path, names=("head", "crop", "hardware-cost", "seeds", "ablations")):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- report:start -->\n<!-- report:end -->\n"
                      + "".join(f"text\n<!-- report:{n}:start -->\nold {n}\n<!-- report:{n}:end -->\n" for n in names))
    return readme


def test_side_studies_render_from_their_committed_json_into_report_and_readme(tmp_path):
    models, reports = tmp_path / "models", tmp_path / "reports"
    shutil.copytree(COMMITTED, models / "qana", ignore=shutil.ignore_patterns("*.h5", "*.fbz", "*.png"))
    shutil.copytree(REPO / "models" / "seeds", models / "seeds", ignore=shutil.ignore_patterns("*.h5", "*.fbz"))
    shutil.copy(REPO / "models" / "hardware_cost.json", models / "hardware_cost.json")
    (reports / "crop").mkdir(parents=True)
    for name in ("finetune_crop_vs_whole.json", "e60_float_head.json"):
        shutil.copy(REPO / "reports" / "crop" / name, reports / "crop" / name)
    other = read_json(models / "seeds" / "summary.json")  # a second recipe's seeds: its own file, shown after
    other["runs"] = [{**r, "run": f"models/seeds/other-s{r['seed']}"} for r in other["runs"]]
    write_json(models / "seeds" / "other_summary.json", other)
    readme = _study_readme(tmp_path, names=("head", "crop", "hardware-cost", "seeds"))
    summary = build_report(models, reports, evaluate=False, ablations=[], readme=readme, **QUIET)
    text = readme.read_text()
    assert "old " not in text and f"{readme} (report:crop)" in summary["changed"]

    def block(name):
        return text.split(f"<!-- report:{name}:start -->")[1].split(f"<!-- report:{name}:end -->")[0]

    head = read_json(COMMITTED / "head_ablation.json")["rows"]
    d = head["d"]["test"]["akida"]
    assert f"| d {head['d']['name']} | {d['top1']:.3f} | {d['macro_f1']:.3f} |" in block("head")
    diff = d["vs_baseline_95"]["balanced_accuracy"]
    assert f"{100 * diff['difference']:+.1f} [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]" in block("head")
    crop = read_json(REPO / "reports" / "crop" / "finetune_crop_vs_whole.json")
    assert crop["command"] in block("crop") and "e60_float_head" not in block("crop")  # the matched experiment only
    mask = crop["test"]["variants"]["mask_crop"]
    assert f"| mask crop (oracle) | `{crop['classifier']}` | {mask['top1']:.3f} |" in block("crop")
    rows = read_json(models / "hardware_cost.json")
    assert all(f"| {r['name']} | {r['image_size']} | {r['params']:,} |" in block("hardware-cost") for r in rows)
    seeds = read_json(models / "seeds" / "summary.json")
    assert f"{seeds['summary']['macro_f1']['mean']:.3f} ± {seeds['summary']['macro_f1']['std']:.3f}" in block("seeds")
    assert 0 < block("seeds").index("seeds/summary.json") < block("seeds").index("seeds/other_summary.json") \
        < block("seeds").index("models/seeds/other-s1")
    report = (reports / "README.md").read_text()
    assert "e60_float_head.json" in report and "### Readout head" in report  # the report shows every study file
    assert "models/qana/head_ablation.json" in report.split("## Inputs")[1]


def test_a_malformed_study_json_names_the_file(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(COMMITTED, models / "qana", ignore=shutil.ignore_patterns("*.h5", "*.fbz", "*.png"))
    write_json(models / "seeds" / "summary.json", {"runs": [{"run": "x"}]})
    with pytest.raises(ReportError, match=r"seeds/summary.json: not the output of its study's command"):
        build_report(models, tmp_path / "reports", evaluate=False, ablations=[], **QUIET)


def test_readme_without_study_markers_gets_only_the_results_block(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(COMMITTED, models / "qana", ignore=shutil.ignore_patterns("*.h5", "*.fbz", "*.png"))
    shutil.copy(REPO / "models" / "hardware_cost.json", models / "hardware_cost.json")
    readme = _study_readme(tmp_path, names=("ablations",))
    ablation = tmp_path / "architecture.json"
    shutil.copy(REPO / "models" / "ablations" / "architecture.json", ablation)
    summary = build_report(models, tmp_path / "reports", evaluate=False, ablations=[str(ablation)], readme=readme,
                           **QUIET)
    assert f"{readme} (report:ablations)" in summary["changed"]
    assert "### Architecture ablation" in readme.read_text() and "hardware_cost" not in readme.read_text()


def test_blocks_go_to_whichever_readme_or_docs_file_holds_their_markers(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(COMMITTED, models / "qana", ignore=shutil.ignore_patterns("*.h5", "*.fbz", "*.png"))
    shutil.copy(REPO / "models" / "hardware_cost.json", models / "hardware_cost.json")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- report:start -->\n<!-- report:end -->\n")
    (tmp_path / "docs").mkdir()
    cost, other = tmp_path / "docs" / "ablations.md", tmp_path / "docs" / "crop.md"
    cost.write_text("# cost\n<!-- report:hardware-cost:start -->\nold\n<!-- report:hardware-cost:end -->\nafter\n")
    other.write_text("# nothing generated here\n")
    summary = build_report(models, tmp_path / "reports", evaluate=False, ablations=[],
                           readme=[readme, cost, other, str(cost)], **QUIET)  # a file named twice is one file
    assert summary["changed"] == [str(readme), f"{cost} (report:hardware-cost)"]
    assert "| qana | 64 | 403,383 |" in cost.read_text() and cost.read_text().endswith("after\n")
    assert "hardware_cost" not in readme.read_text() and other.read_text() == "# nothing generated here\n"
    # the results table must be in one of the files; a block in two files is refused; nothing is written then
    with pytest.raises(ReportError, match=r"docs/crop.md: expected the marker <!-- report:start --> exactly once"):
        build_report(models, tmp_path / "reports", evaluate=False, ablations=[], readme=[other, cost], **QUIET)
    twice = cost.read_text()
    readme.write_text("# x\n<!-- report:start -->\n<!-- report:end -->\n<!-- report:hardware-cost:start -->\nold\n"
                      "<!-- report:hardware-cost:end -->\n")
    before = readme.read_text()
    with pytest.raises(ReportError, match=r"block report:hardware-cost are in .*README.md and .*ablations.md"):
        build_report(models, tmp_path / "reports", evaluate=False, ablations=[], readme=[readme, cost], **QUIET)
    assert readme.read_text() == before and cost.read_text() == twice


# --------------------------------------------------------------------------------------------------
# A tiny real model, evaluated on HAM10000 and PAD-UFES-20 fixtures


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """models/tiny: an untrained tiny QANA (16x16) with config.yaml and a metrics.json; HAM and PAD fixtures."""
    from test_convert import TINY

    from qana_keras.config import Config, ModelConfig
    from qana_keras.data import ham10000, splits
    from qana_keras.metrics import classification_metrics
    from qana_keras.models.qana import build_model

    root = tmp_path_factory.mktemp("report")
    ham = write_ham10000_fixture(root / "ham", n_lesions_per_class=6, size=(40, 30))
    split_file = root / "split.csv"
    splits.write_split(splits.make_lesion_split(ham10000.load_metadata(ham), seed=1), split_file)
    pad = write_pad_ufes_fixture(root / "pad", per_diagnostic=4, missing_per_diagnostic=1, size=(32, 32))
    folder = root / "models" / "tiny"
    folder.mkdir(parents=True)
    config = Config()
    config.data.data_dir, config.data.split_file = str(ham), str(split_file)
    config.data.cache_dir, config.data.image_size = str(root / "cache"), 16
    config.model = ModelConfig(variant="qana", **TINY)
    config.save(folder / "config.yaml")
    model = build_model(config.model, input_size=16)
    model.save(folder / "qana_float.h5", include_optimizer=False, save_format="h5")
    labels = np.arange(21) % 7
    test = classification_metrics(labels, np.eye(7)[labels])
    write_json(folder / "metrics.json", {"variant": "qana", "selected_epoch": 1, "parameters": model.count_params(),
                                         "test": test})
    return root, ham, pad


def test_report_evaluates_models_caches_and_writes_numbers_from_the_json(tiny_models, monkeypatch):
    monkeypatch.delenv("QANA_PAD_UFES_DIR", raising=False)  # `make test` exports it
    root, ham, pad = tiny_models
    logs = []
    summary = build_report(root / "models", root / "reports", data_dir=str(ham), pad_ufes_dir=str(pad),
                           ablations=[], n_boot=100, log=logs.append)
    assert summary["evaluations"] == ["tiny__float__ham10000-test", "tiny__float__pad-ufes-20"]
    out = root / "reports"
    e = read_json(out / "evaluate" / "tiny__float__ham10000-test.json")
    n_test = int((pd.read_csv(root / "split.csv")["split"] == "test").sum())
    assert e["n_images"] == n_test and e["split"] == "test" and e["groups"]["column"] == "lesion_id"
    for suffix in ("confusion", "roc", "subgroups"):
        assert (out / "evaluate" / f"tiny__float__ham10000-test_{suffix}.png").stat().st_size > 1000
    p = read_json(out / "evaluate" / "tiny__float__pad-ufes-20.json")
    assert p["excluded"]["by_label"]["SCC"]["n_images"] == 4 and p["n_images"] == 20
    assert p["groups"]["column"] == "patient_id" and "fitzpatrick" in p["subgroups"]["attributes"]
    report = (out / "README.md").read_text()
    assert fmt_ci(e["top1"], e["bootstrap_95"]["top1"]) in report
    assert fmt_ci(p["macro_f1"], p["bootstrap_95"]["macro_f1"]) in report
    assert "SCC (4 images, tiny / float / pad-ufes-20): predicted" in report

    # Nothing changed: both evaluations are reused, not recomputed.
    logs.clear()
    build_report(root / "models", root / "reports", data_dir=str(ham), pad_ufes_dir=str(pad), ablations=[],
                 n_boot=100, log=logs.append)
    assert sum("is up to date" in line for line in logs) == 2 and not any("evaluated" in li for li in logs)
    # Another bootstrap count or other data means another fingerprint.
    entry = {"model": str(root / "models" / "tiny" / "qana_float.h5"), "dataset": "pad-ufes-20", "data": str(pad),
             "split_file": None}
    assert fingerprint(entry, 100) != fingerprint(entry, 1000)
    assert fingerprint(entry, 100) == read_json(out / "evaluate" / "tiny__float__pad-ufes-20.json")["fingerprint"]

    # Without PAD-UFES-20 the report says so (the HAM10000 evaluation is reused).
    build_report(root / "models", root / "reports", data_dir=str(ham), ablations=[], n_boot=100, **QUIET)
    report = (out / "README.md").read_text()
    assert "Not evaluated (PAD-UFES-20 not found)." in report
    assert "tiny__float__pad-ufes-20: no PAD-UFES-20 (partial copy, external) given" in report


def test_cli_evaluate_pad_ufes_20(tiny_models, tmp_path):
    from qana_keras.cli import main

    root, _, pad = tiny_models
    out = tmp_path / "pad.json"
    assert main(["evaluate", "--model", str(root / "models" / "tiny" / "qana_float.h5"), "--data", str(pad),
                 "--format", "pad-ufes-20", "--json", str(out), "--n-boot", "50", "--min-units", "3"]) == 0
    result = json.loads(out.read_text())
    assert result["format"] == "pad-ufes-20" and result["n_images"] == 20
    assert result["subgroups"]["min_units"] == 3
    assert result["bootstrap_95"]["n_boot"] == 50
    assert (tmp_path / "pad_roc.png").exists() and (tmp_path / "pad_subgroups.png").exists()
    assert main(["evaluate", "--model", str(root / "models" / "tiny" / "qana_float.h5"), "--data", str(pad),
                 "--format", "pad-ufes-20", "--split", "test", "--json", str(out)]) == 2


def test_cli_ablation_row_fills_a_row_with_hardware_figures_from_the_run(tmp_path):
    from qana_keras.cli import main

    table = tmp_path / "architecture.json"
    write_json(table, _empty_ablation_plan())
    write_json(tmp_path / "ref.json", _evaluation(0.5))
    write_json(tmp_path / "row.json", _evaluation(0.9, seed=1))
    args = ["ablation-row", "--table", str(table), "--evaluation", str(tmp_path / "row.json"), "--n-boot", "200"]
    assert main([*args, "--row", "no SE", "--run", str(COMMITTED)]) == 1  # no --reference: refused
    assert main([*args, "--row", "no SE", "--run", str(COMMITTED), "--reference", str(tmp_path / "ref.json")]) == 0
    assert main([*args, "--row", "nobody", "--reference", str(tmp_path / "ref.json")]) == 1
    result = next(r for r in load_ablation(table)["rows"] if r["name"] == "no SE")["result"]
    assert result["macs"] == read_json(COMMITTED / "conversion.json")["akida"]["macs"]
    assert result["params"] == read_json(COMMITTED / "metrics.json")["parameters"]
    deploy = read_json(COMMITTED / "deploy.json")["virtual_devices"]
    assert result["nps"] == next(d["nps"] for d in deploy if _is_twelve_nodes(d))  # its one-pass device
    assert next(d for d in deploy if _is_twelve_nodes(d))["passes"] == 1
    assert result["paired_vs_reference"]["top1"]["real"]
    fidelity = read_json(COMMITTED / "fidelity.json")  # float and Akida figures of the run, side by side
    assert result["float_vs_akida"]["float"]["macro_f1"] == fidelity["models"]["float"]["macro_f1"]
    assert result["float_vs_akida"]["akida"]["top1"] == fidelity["models"]["akida"]["top1"]
    line = next(li for li in render_ablation(load_ablation(table)).splitlines()
                if li.startswith("| no SE |") and "%" in li)
    assert f"| {fidelity['models']['float']['top1']:.3f} |" in line
    assert f"{100 * fidelity['argmax_agreement']['akida_vs_float']:.1f} %" in line
    assert "not run" in render_ablation(load_ablation(table))  # the other rows stay empty
    filled = ["--row", "no SE", "--run", str(COMMITTED), "--reference", str(tmp_path / "ref.json")]
    write_json(tmp_path / "row.json", _evaluation(0.5, seed=2))
    assert main([*args, *filled]) == 1  # a filled row is not replaced silently
    assert next(r for r in load_ablation(table)["rows"] if r["name"] == "no SE")["result"] == result
    assert main([*args, *filled, "--overwrite"]) == 0
    assert next(r for r in load_ablation(table)["rows"] if r["name"] == "no SE")["result"] != result

    run = tmp_path / "multi_pass"  # a smaller device that needs several passes does not count as its NPs
    run.mkdir()
    for name in ("metrics.json", "conversion.json"):
        shutil.copy(COMMITTED / name, run / name)
    smaller = {"device": "TwoNodesIPv2", "ok": True, "passes": 4, "nps": 7, "nps_available": 8}
    write_json(run / "deploy.json", {**read_json(COMMITTED / "deploy.json"), "virtual_devices": [smaller, *deploy]})
    assert main([*args, "--row", "no SA-ECA", "--run", str(run), "--reference", str(tmp_path / "ref.json")]) == 0
    result = next(r for r in load_ablation(table)["rows"] if r["name"] == "no SA-ECA")["result"]
    assert result["nps"] == next(d["nps"] for d in deploy if _is_twelve_nodes(d))
    assert "nps_device" not in result
    assert result["float_vs_akida"] is None  # this run has no fidelity.json, and the table says so
    assert "| no SA-ECA | no fidelity.json |" in render_ablation(load_ablation(table))
    write_json(run / "fidelity.json", {"n_images": 3, "models": {"float": {}}})  # not a deploy report
    with pytest.raises(ReportError, match="fidelity.json: not a fidelity report"):
        fill_ablation_row(table, "no SA-ECA", tmp_path / "row.json", tmp_path / "ref.json", run, n_boot=50,
                          overwrite=True)
    (run / "fidelity.json").unlink()

    # too big for every standard device (as at 96x96): the NPs of compute_min_device, and the table says so
    too_big = [{**d, "ok": False, "passes": None, "nps": None} for d in deploy]
    write_json(run / "deploy.json", {**read_json(COMMITTED / "deploy.json"), "virtual_devices": too_big,
                                     "compute_min_device": {"one_pass_nps": 72, "hwpr_nps": None}})
    assert main([*args, "--row", "input 96x96", "--run", str(run), "--reference", str(tmp_path / "ref.json")]) == 0
    result = next(r for r in load_ablation(table)["rows"] if r["name"] == "input 96x96")["result"]
    assert (result["nps"], result["nps_device"]) == (72, "compute_min_device")
    assert "| 72 (fits no standard device) |" in render_ablation(load_ablation(table))


@pytest.mark.slow
@pytest.mark.realdata
def test_evaluate_reproduces_the_committed_test_metrics_on_real_data(tmp_path):
    """qana evaluate of models/qana/qana_float.h5 on the real test split = metrics.json of training, intervals too."""
    from fixtures import real_data_dir

    from qana_keras.evaluation.evaluate import evaluate_model

    data = real_data_dir()
    if data is None:
        pytest.skip("real HAM10000 not found")
    result = evaluate_model(COMMITTED / "qana_float.h5", data, "ham10000", "test", cache_dir=tmp_path, **QUIET)
    test = read_json(COMMITTED / "metrics.json")["test"]
    assert result["confusion_matrix"] == test["confusion_matrix"]
    for key in ("top1", "balanced_accuracy", "macro_f1"):
        assert result[key] == pytest.approx(test[key], abs=1e-12)
        for end in ("low", "high"):
            assert result["bootstrap_95"][key][end] == pytest.approx(test["bootstrap_95"][key][end], abs=1e-12)
    assert result["groups"] == {"column": "lesion_id", "n": 1118}
    sexes = {r["value"]: r for r in result["subgroups"]["attributes"]["sex"]}
    assert sexes["male"]["n_images"] + sexes["female"]["n_images"] + sexes["unknown"]["n_images"] == 1503


def test_isic2018_images_are_their_own_lesions_unless_groupings_say_otherwise(tiny_models, tmp_path):
    from fixtures import write_isic2018_fixture

    from qana_keras.evaluation.evaluate import evaluate_model, load_dataset

    root, _, _ = tiny_models
    images, gt = write_isic2018_fixture(tmp_path / "isic", per_class=2, size=(32, 32))
    model = root / "models" / "tiny" / "qana_float.h5"
    meta = load_dataset(images.parent, "isic2018")
    alone = evaluation_metrics(meta, np.zeros((14, 7)), "isic2018", n_boot=20)
    assert alone["groups"] == {"column": "image_id", "n": 14}
    ids = pd.read_csv(gt)["image"].tolist()
    (tmp_path / "isic" / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text(
        "image,lesion_id,diagnosis_confirm_type\n" + "".join(f"{i},HAM_{k // 2},histo\n" for k, i in enumerate(ids)))
    grouped = evaluate_model(model, images, "isic2018", ground_truth=gt, n_boot=20, **QUIET)
    assert grouped["groups"] == {"column": "lesion_id", "n": 7} and grouped["n_images"] == 14


def test_paired_comparisons_against_the_first_evaluation():
    from qana_keras.metrics import paired_confusion_bootstrap
    from qana_keras.markdown import fmt_diff
    from qana_keras.reporting.tables import paired_comparisons

    a, b = _evaluation(0.5), _evaluation(0.9, seed=1)
    text = paired_comparisons({"m__float__ham10000-test": a, "m__akida__ham10000-test": b,
                               "m__float__pad-ufes-20": a}, "ham10000-test")
    p, q = a["predictions"], b["predictions"]
    diff = paired_confusion_bootstrap(p["label"], p["predicted"], q["predicted"], p["group"])
    assert "against m / float / ham10000-test" in text
    assert f"| m / akida / ham10000-test | {fmt_diff(diff['top1'])} |" in text and "**+" in text
    assert paired_comparisons({"m__float__ham10000-test": a}, "ham10000-test") == ""


def test_class_subset_models_are_left_out_of_the_7_class_report(tmp_path):
    from qana_keras.reporting.models import discover_models

    for name in ("qana", "qana-5class"):
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / "metrics.json", {"test": {}})
    write_json(tmp_path / "qana-5class" / "classes.json", {"classes": ["akiec", "bcc", "bkl", "mel", "nv"]})
    assert discover_models(tmp_path) == [tmp_path / "qana"]


def test_hybrid_models_say_that_only_their_prefix_runs_on_akida(tmp_path):
    """models/qana-paper: the hardware sentence names the cut and r_succ, and labels the speed as prefix + host."""
    paper = REPO / "models" / "qana-paper"
    models = tmp_path / "models"
    shutil.copytree(paper, models / "qana-paper", ignore=shutil.ignore_patterns("*.h5", "*.png"))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:start -->\n<!-- report:end -->\n")
    build_report(models, tmp_path / "reports", evaluate=False, ablations=[], readme=readme, **QUIET)
    conversion = read_json(paper / "conversion.json")
    block = readme.read_text()
    assert f"only the prefix up to `{conversion['hybrid']['cut_after']}` runs on Akida" in block
    assert f"r_succ {conversion['r_succ']:.3f}" in block and "software simulator + host tail" in block
