"""Standard Akida devices, --device names, fit checks, board measurement and the hardware table.

Everything maps with the real akida library on its virtual devices; only ``measure_board`` is fed a fake
board-like object, because no Akida board exists on this machine (see that test's docstring).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from fixtures import QUIET, random_images, tiny_model

from qana_keras.conversion.quantize import quantize_for_akida, to_akida
from qana_keras.runtime.load import predict_logits
from qana_keras.runtime.devices import (NO_BOARD_NOTE, STANDARD_DEVICES, DeviceError, check_fit, choose_device,
                                device_reports, find_board, map_device, measure_board, min_device_report,
                                model_macs, parse_device, smallest)
from qana_keras.io import read_json, write_json


@pytest.fixture(scope="module")
def tiny_v1(tmp_path_factory):
    """A tiny 4-bit Akida 1.0 model (as in test_edge), saved as .fbz."""
    model = tiny_model("qana-akd1000", size=32)
    qmodel, _ = quantize_for_akida(model, random_images(32, size=32), "qana-akd1000", bits=4, batch_size=16, **QUIET)
    fbz = tmp_path_factory.mktemp("tiny_v1") / "qana-akd1000_i8_w4_a4.fbz"
    to_akida(qmodel, strict=True, variant="qana-akd1000", **QUIET).save(str(fbz))
    return fbz


def test_v1_macs_are_counted_from_the_layers_as_in_the_float_graph(tiny_v1):
    """akida reports 0 MACs for IP v1 models; the count from the layers' shapes (separable convolutions,
    pooling after the convolution, the dense head) equals the float Keras graph's."""
    import akida

    from qana_keras.evaluation.hardware_cost import count_macs

    ak = akida.Model(str(tiny_v1))
    assert int(ak.macs) == 0 and "SeparableConvolutional" in {x.parameters.layer_type.name for x in ak.layers}
    assert model_macs(ak) == count_macs(tiny_model("qana-akd1000", size=32)) > 0


def test_v1_macs_follow_strides_valid_padding_and_non_square_shapes():
    """A v1 model built with akida's own layers: width x height 33 x 21, a 3x5 kernel with stride (2, 1) and
    valid padding, a same-padded stride (1, 2) convolution before 2x2 pooling, a separable layer, a dense head."""
    import akida

    ak = akida.Model()
    ak.add(akida.InputConvolutional(input_shape=(33, 21, 3), kernel_size=(3, 5), filters=8, kernel_stride=(2, 1),
                                    padding=akida.Padding.Valid, weights_bits=8, act_bits=4))
    ak.add(akida.Convolutional(kernel_size=(3, 3), filters=16, kernel_stride=(1, 2), padding=akida.Padding.Same,
                               pool_type=akida.PoolType.Max, pool_size=(2, 2), pool_stride=(2, 2), weights_bits=4,
                               act_bits=4))
    ak.add(akida.SeparableConvolutional(kernel_size=(3, 3), filters=12, weights_bits=4, act_bits=4))
    ak.add(akida.FullyConnected(units=5, weights_bits=4, act_bits=1, activation=False))
    assert [list(x.output_dims) for x in ak.layers] == [[16, 17, 8], [8, 5, 16], [8, 5, 12], [1, 1, 5]]
    assert model_macs(ak) == (16 * 17 * 3 * 5 * 3 * 8      # valid: (33-3)//2+1 by (21-5)//1+1
                              + 16 * 9 * 3 * 3 * 8 * 16     # same: 16 by ceil(17/2), before pooling
                              + 8 * 5 * (3 * 3 * 16 + 16 * 12)
                              + 8 * 5 * 12 * 5)


def test_device_names_aliases_and_a_wrong_name():
    assert [d.name for d in STANDARD_DEVICES] == ["akd1000", "akd1500", "two-nodes-v2", "four-nodes-v2",
                                                   "six-nodes-v2", "twelve-nodes-v2"]
    for text, name in (("akd1000", "akd1000"), ("AKD1500", "akd1500"), ("SixNodesIPv2", "six-nodes-v2"),
                       ("six-nodes", "six-nodes-v2"), ("12-nodes", "twelve-nodes-v2"),
                       ("Two_Nodes_IPv2", "two-nodes-v2")):
        choice = parse_device(text)
        assert choice.kind == "standard" and choice.device.name == name, text
    # The names build the akida device they claim, with the NP count and IP version in the table.
    for device in STANDARD_DEVICES:
        built = device.build()
        assert len(built.mesh.nps) == device.nps and str(built.ip_version).endswith(device.ip)
    assert parse_device(None).kind == "default"
    assert parse_device("min").kind == "min" and parse_device("compute_min_device").kind == "min"
    assert (parse_device("board").kind, parse_device("board").board_index) == ("board", 0)
    assert parse_device("board:2").board_index == 2 and parse_device("1").board_index == 1
    with pytest.raises(DeviceError) as error:
        parse_device("SevenNodes")
    message = str(error.value)
    assert "\n" not in message and "'SevenNodes'" in message
    assert all(d.name in message for d in STANDARD_DEVICES) and "board" in message


def test_no_board_here_default_is_virtual_and_board_asked_is_a_one_line_error():
    import akida

    if akida.devices():
        pytest.skip("an Akida board is attached")
    assert find_board(parse_device(None)) is None
    assert find_board(parse_device("six-nodes-v2")) is None
    with pytest.raises(DeviceError, match=r"no Akida board found .*--device NAME"):
        find_board(parse_device("board"))


def test_v2_model_on_every_standard_device(tiny_qana):
    ak = tiny_qana.akida()
    rows = device_reports(ak)
    by_name = {r["device"]: r for r in rows}
    assert list(by_name) == [d.name for d in STANDARD_DEVICES]
    assert by_name["akd1000"]["label"] == by_name["akd1500"]["label"] == "IP v2 only"
    big = by_name["twelve-nodes-v2"]
    assert big["status"] == "one-pass" and big["label"] == "one pass" and big["passes"] == 1
    assert 0 < big["nps"] <= 48 and big["program_bytes"] > 0 and big["macs"] == ak.macs > 0
    for row in rows:
        assert row["status"] in ("one-pass", "multi-pass", "no-map", "ip-mismatch")
        if row["status"] == "multi-pass":
            assert row["passes"] > 1 and row["label"].startswith(f"{row['passes']} passes")
    # The default is the smallest one-pass device, by NPs, and the model is left unmapped so it still runs.
    name, device, row, _, mins = choose_device(ak, parse_device(None), "tiny.fbz", "RUN")
    assert name == smallest(rows, "one-pass")["device"] and row["status"] == "one-pass"
    assert len(device.mesh.nps) == row["nps_available"]
    assert mins["one_pass_nps"] is not None and mins["one_pass_nps"] <= 48
    x = random_images(4, seed=1)
    np.testing.assert_array_equal(predict_logits(ak, x), predict_logits(tiny_qana.akida(), x))
    # A v2 model asked onto AKD1000: one line naming the device it fits and the compute_min_device sizes.
    with pytest.raises(DeviceError) as error:
        choose_device(ak, parse_device("akd1000"), "tiny.fbz", "runs/x")
    message = str(error.value)
    assert "\n" not in message
    assert "tiny.fbz is an IP v2 model and akd1000 is an IP v1 device" in message
    assert f"smallest standard device it fits: {name} (one pass)" in message
    assert f"compute_min_device {mins['one_pass_nps']} NPs in one pass" in message
    assert f"`qana deploy --run runs/x --device {name}`" in message


def test_a_device_too_small_is_a_one_line_error_naming_where_it_fits(tiny_qana):
    import akida

    ak = tiny_qana.akida()
    rows, mins = device_reports(ak), min_device_report(ak)
    # A real akida device with a single NP: the tiny model cannot map there (akida says why).
    row = {"device": "one-np", "nps_available": 1, **map_device(ak, akida.create_device(1, 0))}
    assert row["status"] == "no-map" and row["error"]
    with pytest.raises(DeviceError) as error:
        check_fit("tiny.fbz", row, rows, mins, "RUN")
    message = str(error.value)
    assert "\n" not in message and message.startswith("tiny.fbz does not map on one-np (1 NPs): ")
    assert "smallest standard device it fits: " in message and "--device " in message


def test_v1_model_maps_on_akida_1_devices_only(tiny_v1):
    import akida

    ak = akida.Model(str(tiny_v1))
    by_name = {r["device"]: r for r in device_reports(ak)}
    assert by_name["akd1000"]["status"] == by_name["akd1500"]["status"] == "one-pass"
    assert by_name["akd1500"]["nps"] <= 32 and by_name["akd1000"]["program_bytes"] > 0
    for name in ("two-nodes-v2", "four-nodes-v2", "six-nodes-v2", "twelve-nodes-v2"):
        assert by_name[name]["label"] == "IP v1 only"
    name, *_ = choose_device(ak, parse_device(None), "v1.fbz", "RUN")
    assert name == "akd1500"  # 32 NPs: the smaller of the two Akida 1.0 devices
    with pytest.raises(DeviceError) as error:
        choose_device(ak, parse_device("SixNodesIPv2"), "v1.fbz", "RUN")
    message = str(error.value)
    assert "\n" not in message and "IP v1 model and six-nodes-v2 is an IP v2 device" in message
    assert "akd1500 (one pass)" in message and "compute_min_device n/a in one pass, n/a with HwPr" in message
    with pytest.raises(DeviceError, match="compute_min_device cannot size v1.fbz"):
        choose_device(ak, parse_device("min"), "v1.fbz", "RUN")


class _FakePowerMeter:
    def __init__(self, floor, powers):
        self.floor, self._powers, self.drained = floor, list(powers), 0

    def events(self):
        self.drained += 1
        out = [type("Event", (), {"power": p, "ts": i})() for i, p in enumerate(self._powers)]
        self._powers = []
        return out


class _FakeSoC:
    def __init__(self, meter):
        self.power_meter, self.power_measurement_enabled = meter, False


class _FakeBoard:
    """Board-like: ``desc`` and ``soc.power_meter`` as on an akida hardware device."""

    def __init__(self, soc):
        self.desc, self.soc = "PCIe/NSoC_v2/0 (fake)", soc


def test_measure_board_arithmetic_and_json(tmp_path):
    """Uses a fake board because no Akida board exists here: akida's virtual devices cannot run inference and
    have no SoC power meter, so the timing/power/energy arithmetic can only be fed by a board-like object."""
    meter = _FakePowerMeter(floor=900.0, powers=[])
    board = _FakeBoard(_FakeSoC(meter))
    durations = iter([0.010, 0.030, 0.020,  # batch 1: median 20 ms
                      0.40, 0.50, 0.45])  # batch of 10: median 0.45 s -> 45 ms/image
    now = [0.0]
    calls = []

    def clock():
        return now[0]

    def predict(x):
        calls.append(len(x))
        if len(calls) == 5:  # the batched warm-up: its events must be drained, not averaged
            meter._powers = [5000.0]
        if len(calls) in (1, 5):  # warm-up calls are not timed
            return
        if len(calls) == 6:  # the meter's events of the timed batched calls
            meter._powers = [1000.0, 1200.0, 1100.0]
        now[0] += next(durations)

    images = random_images(30, seed=2)
    figures = measure_board(board, predict, images, batch_size=10, repeats=3, clock=clock, sleep=lambda s: None)
    assert calls == [1, 1, 1, 1, 10, 10, 10, 10]
    assert board.soc.power_measurement_enabled
    assert figures["measured_on_chip"] and figures["device"] == board.desc
    assert figures["latency_ms_batch1"] == pytest.approx(20.0)
    assert figures["latency_ms_per_image_batched"] == pytest.approx(45.0)
    assert figures["throughput_images_per_second"] == pytest.approx(1 / 0.045)
    assert figures["floor_power_mw"] == 900.0 and figures["power_events"] == 3
    assert figures["average_power_mw"] == pytest.approx(1100.0)
    assert figures["energy_mj_per_image"] == pytest.approx(1100.0 * 0.045)  # mW x s = mJ
    assert figures["dynamic_energy_mj_per_image"] == pytest.approx(200.0 * 0.045)
    write_json(tmp_path / "board.json", figures)
    assert read_json(tmp_path / "board.json") == figures
    # No SoC: latency only, said so.
    now[0] = 0.0
    bare = measure_board(type("B", (), {"desc": "bare", "soc": None})(), lambda x: now.__setitem__(0, now[0] + 0.01),
                         images, batch_size=10, repeats=3, clock=clock, sleep=lambda s: None)
    assert bare["average_power_mw"] is None and bare["energy_mj_per_image"] is None
    assert "no SoC power meter" in bare["power_note"]


def test_hardware_table_from_model_folders(tmp_path, tiny_qana, tiny_v1):
    import akida

    from qana_keras.reporting.hardware import BLOCK, write_hardware_table

    models = tmp_path / "models"
    (models / "tiny").mkdir(parents=True)
    shutil.copy(tiny_qana.fbz, models / "tiny" / "qana.fbz")
    write_json(models / "tiny" / "conversion.json", {"artifacts": {"akida": "qana.fbz"}, "hybrid": None})
    write_json(models / "tiny" / "fidelity.json", {"split": "test", "n_images": 40, "models": {"akida": {
        "top1": 0.75, "balanced_accuracy": 0.5, "macro_f1": 0.25}}})
    (models / "group" / "v1").mkdir(parents=True)
    shutil.copy(tiny_v1, models / "group" / "v1" / tiny_v1.name)
    write_json(models / "group" / "v1" / "evaluate_akida_test.json", {
        "model": f"models/group/v1/{tiny_v1.name}", "split": "test", "format": "ham10000", "n_images": 40,
        "top1": 0.5, "balanced_accuracy": 0.4, "macro_f1": 0.3})
    write_json(models / "group" / "v1" / "board_i8_w4_a4.json", {  # the board file of a 4-bit model
        "model": f"models/group/v1/{tiny_v1.name}", "measured_on_chip": True, "device": "PCIe/NSoC_v1/0",
        "batch_size": 100, "latency_ms_batch1": 1.5, "latency_ms_per_image_batched": 0.5,
        "energy_mj_per_image": 0.25})
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n<!-- {BLOCK}:start -->\nstale block\n<!-- {BLOCK}:end -->\n\nafter\n")

    data = write_hardware_table(models, tmp_path / "reports" / "hardware", readme=readme, root=tmp_path, **QUIET)
    assert [m["model"] for m in data["models"]] == [f"models/group/v1/{tiny_v1.name}", "models/tiny/qana.fbz"]
    v1, v2 = data["models"]
    assert v1["ip"] == "v1" and v2["ip"] == "v2"
    assert v1["macs"] == model_macs(akida.Model(str(tiny_v1))) > 0  # counted, not akida's 0 for IP v1
    assert v1["devices"]["twelve-nodes-v2"]["label"] == "IP v1 only"
    assert v2["devices"]["akd1000"]["label"] == "IP v2 only"
    assert v1["devices"]["akd1500"]["status"] == v2["devices"]["twelve-nodes-v2"]["status"] == "one-pass"
    assert (v1["accuracy"]["top1"], v1["accuracy"]["source"]) == (0.5, "evaluate_akida_test.json")
    assert (v2["accuracy"]["macro_f1"], v2["accuracy"]["source"]) == (0.25, "fidelity.json")
    assert v1["chip"]["measured_on_chip"] and v2["chip"] == {"measured_on_chip": False, "note": NO_BOARD_NOTE}
    assert read_json(tmp_path / "reports" / "hardware" / "hardware_table.json") == data
    md = (tmp_path / "reports" / "hardware" / "hardware_table.md").read_text()
    assert "| `models/tiny/qana.fbz` | v2 |" in md
    assert "0.750 / 0.500 / 0.250 (fidelity.json)" in md and "0.500 / 0.400 / 0.300 (evaluate_akida_test.json)" in md
    assert "IP v1 only" in md and "IP v2 only" in md
    assert "1.50 ms (b1), 0.50 ms/img (b100), 0.250 mJ/img on PCIe/NSoC_v1/0" in md
    assert "not measured (no board)" in md
    text = readme.read_text()
    assert "stale block" not in text and "| `models/tiny/qana.fbz` | v2 |" in text and text.endswith("after\n")
    # The README keeps the models of their own folders; a group's models are in reports/hardware only.
    assert f"`models/group/v1/{tiny_v1.name}`" in md and f"`models/group/v1/{tiny_v1.name}`" not in text
    assert "all 2 (with the ablations" in text


_BOARD = {"measured_on_chip": True, "device": "PCIe/NSoC_v2/0", "batch_size": 100, "latency_ms_batch1": 1.0,
          "latency_ms_per_image_batched": 0.4, "energy_mj_per_image": 0.2}
_FIDELITY = {"split": "test", "n_images": 40, "models": {"akida": {"top1": 0.75, "balanced_accuracy": 0.5,
                                                                    "macro_f1": 0.25}}}


def _two_precisions(folder):
    """A run folder with an 8-bit and a 4-bit model (their .fbz need not be real here) and their reports."""
    folder.mkdir()
    for suffix in ("", "_i8_w4_a4"):
        (folder / f"qana{suffix}.fbz").write_bytes(b"fbz")
        write_json(folder / f"conversion{suffix}.json", {"artifacts": {"akida": f"qana{suffix}.fbz"}, "hybrid": None})
    return folder / "qana.fbz", folder / "qana_i8_w4_a4.fbz"


def test_board_figures_follow_the_precision_and_the_named_model(tmp_path):
    from qana_keras.reporting.hardware import board_figures

    w8, w4 = _two_precisions(tmp_path / "run")
    write_json(w8.parent / "board.json", {"model": str(w8), **_BOARD})
    assert board_figures(w8)["latency_ms_batch1"] == 1.0
    assert board_figures(w4) == {"measured_on_chip": False, "note": NO_BOARD_NOTE}  # not the 8-bit figures
    write_json(w8.parent / "board_i8_w4_a4.json", {"model": str(w8), **_BOARD})  # names another file
    assert board_figures(w4)["measured_on_chip"] is False
    write_json(w8.parent / "board_i8_w4_a4.json", {"model": str(w4), **_BOARD, "latency_ms_batch1": 2.0})
    assert board_figures(w4)["latency_ms_batch1"] == 2.0


def test_integer_accuracy_skips_smoke_runs_and_names_a_partial_file(tmp_path):
    from qana_keras.reporting.hardware import integer_accuracy

    w8, _ = _two_precisions(tmp_path / "run")
    write_json(w8.parent / "fidelity.json", {**_FIDELITY, "quick": True, "note": "SMOKE PROFILE"})
    assert integer_accuracy(w8)["source"] is None
    write_json(w8.parent / "fidelity.json", {**_FIDELITY, "quick": False})
    assert integer_accuracy(w8)["top1"] == 0.75
    write_json(w8.parent / "evaluate_akida_test.json", {"model": str(w8), "split": "test", "top1": 0.5})
    with pytest.raises(ValueError, match=r"evaluate_akida_test\.json: no 'balanced_accuracy' in it"):
        integer_accuracy(w8)


def test_a_null_artifacts_report_is_not_a_crash(tmp_path):
    from qana_keras.runtime.load import conversion_report_for
    from qana_keras.reporting.hardware import integer_accuracy
    from qana_keras.runtime.safe_load import reports_naming

    w8, _ = _two_precisions(tmp_path / "run")
    write_json(w8.parent / "conversion_old.json", {"artifacts": None})
    assert [p.name for p, _ in reports_naming(w8)] == ["conversion.json"]
    assert conversion_report_for(w8)[0].name == "conversion.json"
    assert integer_accuracy(w8)["source"] is None


def test_corrupt_json_names_its_file(tmp_path):
    from qana_keras.reporting.hardware import integer_accuracy

    w8, _ = _two_precisions(tmp_path / "run")
    (w8.parent / "fidelity.json").write_text('{"split": "test", ')
    with pytest.raises(ValueError, match=r"^.*fidelity\.json: not valid JSON \(.*line 1\); fix or re-create it$"):
        integer_accuracy(w8)


class _Refusing:
    """An akida.Model stand-in whose ``map`` raises ``errors[mode name]`` (ValueError too, as akida does)."""

    def __init__(self, errors):
        self.errors, self.calls = errors, []

    def map(self, device, hw_only=False, mode=None):
        self.calls.append(None if device is None else getattr(mode, "name", mode))
        if device is not None and getattr(mode, "name", None) in self.errors:
            raise self.errors[mode.name]


def test_map_hw_falls_back_to_hwpr_on_any_akida_error_and_deploy_uses_it():
    import akida

    from qana_keras.onchip.deploy import run_on_board
    from qana_keras.runtime.devices import MapError, map_hw

    model = _Refusing({"AllNps": ValueError("layer conv: too many NPs\ndetails")})
    assert map_hw(model, object()) == akida.MapMode.HwPr and model.calls == ["AllNps", "HwPr"]
    model = _Refusing({"AllNps": RuntimeError("no fit"), "HwPr": ValueError("layer conv: does not fit\nmore")})
    with pytest.raises(MapError) as error:
        map_hw(model, object())
    assert error.value.errors == ["no fit", "layer conv: does not fit"]
    board = type("Board", (), {"desc": "PCIe/NSoC_v2/0 (fake)"})()
    with pytest.raises(DeviceError, match=r"does not map on board PCIe/NSoC_v2/0 \(fake\): layer conv: does not fit; "):
        run_on_board(model, board, random_images(2), **QUIET)


def test_np_figures_of_a_multi_pass_mapping_say_they_are_summed_over_the_passes():
    from qana_keras.reporting.hardware import _cell
    from qana_keras.runtime.devices import np_use

    one = {"status": "one-pass", "label": "one pass", "passes": 1, "nps": 24, "nps_available": 24,
           "program_bytes": 1000}
    several = {"status": "multi-pass", "label": "7 passes (AllNps)", "passes": 7, "nps": 159, "nps_available": 24,
               "program_bytes": 3588528}
    assert np_use(one) == "24 of 24 NPs"
    assert np_use(several) == "159 NPs summed over the 7 passes on 24"
    assert _cell(one) == "one pass, 24 NPs, 1,000 B"
    assert _cell(several) == "7 passes (AllNps), 159 NPs over the passes, 3,588,528 B"
