"""Akida devices: the standard virtual devices, device names, how a model maps on each, and board measurement.

Standard devices (akida 2.19): ``akd1000`` and ``akd1500`` are Akida 1.0 silicon (78 and 32 NPs); the
``two/four/six/twelve-nodes-v2`` devices are Akida 2.0 IP configurations (8/16/24/48 NPs). A model maps in
one hardware pass, in several passes with partial reconfiguration (``MapMode.HwPr``), or not at all; akida
refuses a model of the other IP version, which is reported as "IP v1 only" / "IP v2 only".

A real board is found with ``akida.devices()``; ``measure_board`` times ``predict`` on it and reads its SoC
power meter. Without a board nothing is measured on a chip, and the simulator's speed is never reported as
chip speed (``NO_BOARD_NOTE``).
"""
from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass

NP_TYPES_NOT_NPS = ("HRC", "SKIP_DMA_STORE", "SKIP_DMA_LOAD")  # mapped components that are not neural processors

NO_BOARD_NOTE = ("no Akida board found: latency, power and energy not measured; simulator speed is not chip speed")


class DeviceError(ValueError):
    """A device name, IP version, fit or board problem; the message is one line and says what to do."""


@dataclass(frozen=True)
class StandardDevice:
    """One standard device: its CLI name, the akida factory, IP version, NP count and accepted aliases."""

    name: str
    factory: str
    ip: str
    nps: int
    aliases: tuple[str, ...] = ()

    def build(self):
        import akida

        return getattr(akida, self.factory)()


STANDARD_DEVICES = (
    StandardDevice("akd1000", "AKD1000", "v1", 78),
    StandardDevice("akd1500", "AKD1500", "v1", 32),
    StandardDevice("two-nodes-v2", "TwoNodesIPv2", "v2", 8, ("2-nodes", "two-nodes", "2-nodes-v2")),
    StandardDevice("four-nodes-v2", "FourNodesIPv2", "v2", 16, ("4-nodes", "four-nodes", "4-nodes-v2")),
    StandardDevice("six-nodes-v2", "SixNodesIPv2", "v2", 24, ("6-nodes", "six-nodes", "6-nodes-v2")),
    StandardDevice("twelve-nodes-v2", "TwelveNodesIPv2", "v2", 48, ("12-nodes", "twelve-nodes", "12-nodes-v2")),
)
"""In table order; ``choose_device`` picks by NP count, not by this order."""

MIN_DEVICE = "min"  # the device akida.compute_min_device builds for the model (Akida 2.0 only)
BOARD = "board"


@dataclass(frozen=True)
class DeviceChoice:
    """What ``--device`` asked for: ``default`` (none given), ``standard``, ``min`` or ``board`` (with an index)."""

    kind: str
    device: StandardDevice | None = None
    board_index: int = 0


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def valid_names() -> str:
    """The names ``--device`` accepts, for error messages and help."""
    return ", ".join([d.name for d in STANDARD_DEVICES] + [MIN_DEVICE, BOARD, "board:N"])


def parse_device(text: str | None) -> DeviceChoice:
    """``--device`` text -> DeviceChoice; accepts the names, akida class names (``SixNodesIPv2``) and aliases."""
    if text is None or text == "":
        return DeviceChoice("default")
    key = _key(text)
    for device in STANDARD_DEVICES:
        if key in {_key(device.name), _key(device.factory), *(_key(a) for a in device.aliases)}:
            return DeviceChoice("standard", device)
    if key in (MIN_DEVICE, "computemindevice"):
        return DeviceChoice(MIN_DEVICE)
    board = re.fullmatch(r"board(\d*)", key) or re.fullmatch(r"(\d+)", key)
    if board:
        return DeviceChoice(BOARD, board_index=int(board.group(1) or 0))
    raise DeviceError(f"unknown device {text!r}; valid names: {valid_names()}")


def standard_device(name: str) -> StandardDevice:
    choice = parse_device(name)
    if choice.kind != "standard":
        raise DeviceError(f"{name!r} is not a standard device; standard devices: "
                          + ", ".join(d.name for d in STANDARD_DEVICES))
    return choice.device


def ip_of(obj) -> str:
    """``v1`` / ``v2`` of an akida Model or Device (``IpVersion.v1`` -> ``v1``)."""
    return str(obj.ip_version).split(".")[-1]


_V1_CONVOLUTIONS = ("InputConvolutional", "Convolutional", "SeparableConvolutional")


def model_macs(model) -> int:
    """Multiply-accumulates per image: ``akida.Model.macs``, or for an IP v1 model (akida reports 0 there)
    counted from its layers' shapes, like the float count of ``evaluation.hardware_cost.count_macs``."""
    macs = int(model.macs)
    if macs or ip_of(model) != "v1":
        return macs
    total = 0
    for layer in model.layers:
        p = layer.parameters
        kind = p.layer_type.name
        if kind in _V1_CONVOLUTIONS:
            # Akida 1.0 dims are (width, height, channels); output_dims come after pooling, while the
            # convolution itself runs at the pre-pooling size.
            x, y, cin = layer.input_dims
            same = int(p.padding) != 0
            xo = -(-x // p.stride_x) if same else (x - p.kernel_width) // p.stride_x + 1
            yo = -(-y // p.stride_y) if same else (y - p.kernel_height) // p.stride_y + 1
            window = p.kernel_width * p.kernel_height
            if kind == "SeparableConvolutional":
                total += xo * yo * (window * cin + cin * p.filters)
            else:
                total += xo * yo * window * cin * p.filters
        elif kind == "FullyConnected":
            x, y, c = layer.input_dims
            total += x * y * c * p.units
    return int(total)


# --------------------------------------------------------------------------------------------------
# Mapping


def _component_counts(model) -> Counter:
    counts = Counter()
    for sequence in model.sequences:
        for p in sequence.passes:
            for layer in p.layers:
                if layer.mapping is not None:
                    counts.update(np_.type.name for np_ in layer.mapping.nps)
    return counts


def mapping_summary(model) -> dict:
    """Sequences, passes, NPs by type, program bytes and external memory of a mapped akida.Model."""
    counts = _component_counts(model)
    sequences = []
    for sequence in model.sequences:
        hardware = sequence.backend.name == "Hardware"
        sequences.append({"name": sequence.name, "backend": sequence.backend.name, "passes": len(sequence.passes),
                          "program_bytes": len(sequence.program) if hardware and sequence.program is not None else 0})
    return {"sequences": len(sequences),
            "passes": sum(s["passes"] for s in sequences),
            "hardware_sequences": sum(s["backend"] == "Hardware" for s in sequences),
            "nps": sum(n for t, n in counts.items() if t not in NP_TYPES_NOT_NPS),
            "components": dict(sorted(counts.items())),
            "program_bytes": sum(s["program_bytes"] for s in sequences),
            "external_memory_bytes": int(model.external_memory_size),
            "sequence_detail": sequences}


def np_use(row: dict) -> str:
    """"24 of 24 NPs" for one pass; for several passes the NPs are summed over them and exceed the device's."""
    if row.get("passes", 1) > 1:
        return f"{row['nps']} NPs summed over the {row['passes']} passes on {row['nps_available']}"
    return f"{row['nps']} of {row['nps_available']} NPs"


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")


class MapError(Exception):
    """``map_hw`` found no mode that maps the model; ``errors``: the first line of akida's error per mode tried."""

    def __init__(self, errors: list[str]):
        super().__init__(errors[-1])
        self.errors = errors


def map_hw(model, device):
    """Map ``model`` on ``device`` in one hardware sequence (``hw_only=True``): one pass (``MapMode.AllNps``), else
    several passes with partial reconfiguration (``MapMode.HwPr``). Returns the mode used, the model left mapped;
    raises ``MapError`` if neither maps (akida raises RuntimeError or ValueError naming the layer that does not fit).
    """
    import akida

    errors = []
    # AllNps first: on a device where both work, HwPr splits even a model that fits into 2 passes.
    for mode in (akida.MapMode.AllNps, akida.MapMode.HwPr):
        try:
            model.map(device, hw_only=True, mode=mode)
            return mode
        except Exception as error:  # noqa: BLE001  (any akida mapping failure: try the next mode)
            errors.append(_first_line(error))
    raise MapError(errors)


def map_device(model, device) -> dict:
    """Map ``model`` on ``device`` (``map_hw``) and report how; leaves the model unmapped (a virtual device cannot
    run it)."""
    try:
        mode = map_hw(model, device)
        summary = mapping_summary(model)
    except MapError as error:
        return {"status": "no-map", "label": "does not map", "ok": False, "single_pass": False, "mode": None,
                "error": error.errors[-1], "errors": error.errors}
    finally:
        model.map(None)
    one = summary["passes"] == 1
    label = "one pass" if one else f"{summary['passes']} passes ({mode.name})"
    return {"status": "one-pass" if one else "multi-pass", "label": label, "ok": True,
            "single_pass": one, "mode": mode.name, "error": None, **summary}


def map_report(model, device: StandardDevice) -> dict:
    """How ``model`` maps on one standard device; a model of the other IP version is "IP vN only", not an error."""
    model_ip = ip_of(model)
    row = {"device": device.name, "akida_device": device.factory, "ip": device.ip, "nps_available": device.nps,
           "model_ip": model_ip, "macs": model_macs(model)}
    if model_ip != device.ip:
        return {**row, "status": "ip-mismatch", "label": f"IP {model_ip} only", "ok": False, "single_pass": False,
                "error": f"model is IP {model_ip}, device is IP {device.ip}"}
    return {**row, **map_device(model, device.build())}


def device_reports(model) -> list[dict]:
    """``map_report`` on every standard device, in table order."""
    return [map_report(model, device) for device in STANDARD_DEVICES]


def min_device_report(model) -> dict:
    """NPs of ``akida.compute_min_device`` for one pass and with HwPr (multi-pass); None with the reason when
    akida cannot size the model (it sizes Akida 2.0 models only)."""
    import akida

    out = {}
    for key, hwpr in (("one_pass_nps", False), ("hwpr_nps", True)):
        try:
            out[key] = len(akida.compute_min_device(model, enable_hwpr=hwpr).mesh.nps)
        except Exception as error:  # e.g. "Only IpVersion.v2 ... supported", or a branch HwPr cannot split
            out[key], out[key.replace("nps", "error")] = None, _first_line(error)
    return out


def _fmt_min(mins: dict) -> str:
    def one(key):
        return f"{mins[key]} NPs" if mins.get(key) is not None else "n/a"
    return f"compute_min_device {one('one_pass_nps')} in one pass, {one('hwpr_nps')} with HwPr (multi-pass)"


def smallest(rows: list[dict], status: str) -> dict | None:
    """The row with the fewest NPs available among those with ``status`` (one-pass / multi-pass)."""
    fits = [r for r in rows if r["status"] == status]
    return min(fits, key=lambda r: r["nps_available"]) if fits else None


def _advice(model_name: str, rows: list[dict], mins: dict, run_hint: str) -> str:
    """"smallest standard device ...; compute_min_device ...; use ..." for a one-line error."""
    best = smallest(rows, "one-pass") or smallest(rows, "multi-pass")
    if best:
        where = f"smallest standard device it fits: {best['device']} ({best['label']})"
        command = f"use `qana deploy --run {run_hint} --device {best['device']}`"
    else:
        where = "it maps on no standard device"
        command = (f"use `qana deploy --run {run_hint} --device {MIN_DEVICE}` (the computed device)"
                   if mins.get("one_pass_nps") else "make the model smaller or change its architecture")
    return f"{where}; {_fmt_min(mins)}; {command}"


def check_fit(model_name: str, row: dict, rows: list[dict], mins: dict, run_hint: str) -> None:
    """Raise a one-line DeviceError when ``row`` (the chosen device) cannot run the model."""
    if row["status"] == "ip-mismatch":
        raise DeviceError(f"{model_name} is an IP {row['model_ip']} model and {row['device']} is an IP "
                          f"{row['ip']} device; {_advice(model_name, rows, mins, run_hint)}")
    if row["status"] == "no-map":
        raise DeviceError(f"{model_name} does not map on {row['device']} ({row['nps_available']} NPs): "
                          f"{row['error']}; {_advice(model_name, rows, mins, run_hint)}")


def choose_device(model, choice: DeviceChoice, model_name: str, run_hint: str) -> tuple[str, object, dict, list, dict]:
    """The virtual device to map on: (name, akida device, its row, all standard rows, compute_min_device sizes).

    Default: the smallest standard device that runs the model in one hardware pass, else in several (HwPr).
    Raises DeviceError (one line) when the chosen device cannot run the model, or none can.
    """
    import akida

    rows, mins = device_reports(model), min_device_report(model)
    if choice.kind == "standard":
        row = next(r for r in rows if r["device"] == choice.device.name)
        check_fit(model_name, row, rows, mins, run_hint)
        return row["device"], choice.device.build(), row, rows, mins
    if choice.kind == MIN_DEVICE:
        if mins.get("one_pass_nps") is None:
            raise DeviceError(f"akida.compute_min_device cannot size {model_name}: {mins.get('one_pass_error')}; "
                              + _advice(model_name, rows, mins, run_hint))
        device = akida.compute_min_device(model)
        row = {"device": "compute_min_device", "nps_available": len(device.mesh.nps), "ip": ip_of(device),
               "model_ip": ip_of(model), "macs": model_macs(model), **map_device(model, device)}
        check_fit(model_name, row, rows, mins, run_hint)
        return row["device"], device, row, rows, mins
    row = smallest(rows, "one-pass") or smallest(rows, "multi-pass")
    if row is None:
        raise DeviceError(f"{model_name} (IP {ip_of(model)}) maps on no standard device; "
                          + _advice(model_name, rows, mins, run_hint))
    return row["device"], standard_device(row["device"]).build(), row, rows, mins


# --------------------------------------------------------------------------------------------------
# Boards


def find_board(choice: DeviceChoice):
    """The board ``choice`` asks for, the first board by default, or None (no board, or a virtual device asked)."""
    import akida

    if choice.kind in ("standard", MIN_DEVICE):
        return None
    boards = list(akida.devices())
    if choice.kind == "default":
        return boards[0] if boards else None
    if not boards:
        raise DeviceError(f"no Akida board found (akida.devices() is empty); use a virtual device: --device NAME "
                          f"with NAME in {', '.join(d.name for d in STANDARD_DEVICES)}, {MIN_DEVICE}")
    if choice.board_index >= len(boards):
        found = "; ".join(f"board:{i} {b.desc}" for i, b in enumerate(boards))
        raise DeviceError(f"no board {choice.board_index}: akida.devices() found {len(boards)} ({found})")
    return boards[choice.board_index]


def _median_seconds(predict, batch, repeats: int, clock) -> float:
    times = []
    for _ in range(repeats):
        began = clock()
        predict(batch)
        times.append(clock() - began)
    return statistics.median(times)


def measure_board(device, predict, images, batch_size: int = 100, repeats: int = 5, settle_seconds: float = 1.0,
                  clock=time.perf_counter, sleep=time.sleep) -> dict:
    """Latency per image (batch 1 and batched: median wall clock of ``repeats`` calls of ``predict`` on the board),
    SoC power (floor, and the mean of the power-meter events during the batched calls) and energy per image
    (mean power x batched time / images). ``predict`` must already run on ``device`` (the model mapped to it)."""
    one, batch = images[:1], images[:batch_size]
    soc = getattr(device, "soc", None)
    floor_mw = None
    if soc is not None:
        soc.power_measurement_enabled = True
        sleep(settle_seconds)  # the meter needs a moment before its floor reading is populated
        floor_mw = float(soc.power_meter.floor)
    predict(one)  # warm-up: the first call loads the program onto the chip
    latency_1 = _median_seconds(predict, one, repeats, clock)
    predict(batch)
    if soc is not None:
        soc.power_meter.events()  # drain: keep only the events of the timed batched calls
    batch_seconds = _median_seconds(predict, batch, repeats, clock)
    events = list(soc.power_meter.events()) if soc is not None else []
    power_mw = statistics.fmean(float(e.power) for e in events) if events else None
    per_image_s = batch_seconds / len(batch)
    out = {"measured_on_chip": True, "device": str(device.desc), "repeats": repeats, "batch_size": int(len(batch)),
           "latency_ms_batch1": latency_1 * 1000.0, "latency_ms_per_image_batched": per_image_s * 1000.0,
           "throughput_images_per_second": 1.0 / per_image_s,
           "floor_power_mw": floor_mw, "average_power_mw": power_mw, "power_events": len(events),
           "energy_mj_per_image": power_mw * per_image_s if power_mw is not None else None,
           "dynamic_energy_mj_per_image": ((power_mw - floor_mw) * per_image_s
                                           if power_mw is not None and floor_mw is not None else None),
           "method": f"median wall clock of {repeats} predict calls on the board (host transfer included); "
                     "power: mean of SoC power-meter events during the batched calls; energy = power x time / images"}
    if soc is None:
        out["power_note"] = "the board exposes no SoC power meter: latency only"
    elif not events:
        out["power_note"] = "no power-meter events during the timed calls: raise repeats or batch size"
    return out


def not_measured() -> dict:
    """The chip-measurement record when no board was used: nothing was measured on a chip."""
    return {"measured_on_chip": False, "note": NO_BOARD_NOTE}
