"""`qana hardware-cost`: hardware cost of every ablation and baseline on Akida 2.0, without training.

usage: qana hardware-cost [NAME ...] [--json runs/ablations/hardware_cost.json]
       [--markdown FILE] [--widths tiny] [--calibration 32] [--set SECTION.KEY=VALUE]
       qana hardware-cost --render runs/ablations/hardware_cost.json [--markdown FILE]

(`qana hardware-table` is the other view: the published, trained ``.fbz`` files on every device.)

For each model (default: all of ``MODELS``; ``--list`` prints them), the untrained float model is
built from configs/qana.yaml plus the model's overrides, quantized to 8 bits (quantizeml, calibrated
on random uint8 images: the mapping depends on the graph and shapes, not on the weight values),
converted with cnn2snn under the strict hardware-native checks of ``qana_keras.conversion`` (r_succ
must be 1.0, nothing truncated), and mapped with ``hw_only=True`` on the standard Akida 2.0 virtual
devices (``TwoNodesIPv2`` 8 NPs, ``FourNodesIPv2`` 16, ``SixNodesIPv2`` 24, ``TwelveNodesIPv2`` 48)
and on ``akida.compute_min_device``.

One JSON row per model (a list, in ``--json``):
  name, variant, overrides, image_size    what was built (``overrides`` are ``qana train --set`` items)
  params                                  Keras parameters (BN included)
  macs                                    multiply-accumulates per image of the float Keras graph:
                                          Conv2D Ho*Wo*k*k*Cin*Cout, DepthwiseConv2D Ho*Wo*k*k*C,
                                          Dense in*out (BN, ReLU, pooling and Add not counted)
  akida_macs                              ``akida.Model.macs`` (counts the identity layers the
                                          converter inserts, so it can exceed ``macs``; IP v1
                                          models, where akida reports 0, counted from the layers)
  head_inputs                             values read by the last dense layer (<= 2048 to map)
  r_succ, akida_layers                    integer completeness; layers of the Akida model
  min_device                              smallest standard device with one hardware pass, or None
  one_pass                                True if some standard device runs it in one hardware pass
  nps, nps_by_type, program_bytes         of the mapping on ``min_device`` (None if none fits); the
                                          mapper spreads layers over a big device, so ``nps`` is what
                                          that device uses, not the smallest footprint
  compute_min_device                      the device akida.compute_min_device makes for the model:
                                          nps_available, nps (used), passes, program_bytes: the
                                          smallest footprint
  devices                                 per device: ok, single_pass, passes, nps, error
  seconds                                 build + quantize + convert + map
A model that fails to build, quantize or convert gets ``error`` (a message) and lacks the later fields;
``error`` is None otherwise. The exit status is 1 if any model failed.
"""
from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from qana_keras.config import REPO_ROOT, load_config

if TYPE_CHECKING:  # TensorFlow is imported only where a model is built: `qana --help` stays fast
    import tf_keras as keras

REFERENCE_CONFIG = REPO_ROOT / "configs" / "qana.yaml"

# name -> `qana train --set` overrides on top of configs/qana.yaml. ``qana`` is the reference model
# (64x64, SA-ECA in stages 2-4, additive SE); the others change one thing each.
MODELS: dict[str, list[str]] = {
    "qana": [],
    "qana-no-sa-eca": ["model.sa_eca_stages="],
    "qana-no-se": ["model.se=false"],
    "qana-no-attention": ["model.sa_eca_stages=", "model.se=false"],
    "qana-32": ["data.image_size=32"],
    "qana-48": ["data.image_size=48"],
    "qana-96": ["data.image_size=96"],
    "akidanet-0.25": ["model.variant=akidanet-0.25"],
    "akidanet-0.5": ["model.variant=akidanet-0.5"],
    "plain-cnn": ["model.variant=plain-cnn"],
    # Larger inputs need a fifth stage (head inputs <= 2048, a 94 px receptive field instead of 46 px);
    # narrow widths keep both on FourNodesIPv2 (16 NPs) and under the 64 px model's MACs.
    "plain-cnn-96": ["model.variant=plain-cnn", "data.image_size=96", "model.widths=16,32,64,128,128"],
    "plain-cnn-128": ["model.variant=plain-cnn", "data.image_size=128", "model.widths=16,32,64,128,128"],
    # The 64 px plain CNN widened to fill SixNodesIPv2 (24 NPs) instead of FourNodesIPv2 (16).
    "plain-cnn-24np": ["model.variant=plain-cnn", "model.widths=48,96,192,256"],
}

# Tiny widths for tests and smoke runs (``--widths tiny``); the AkidaNet baselines ignore them.
TINY_OVERRIDES = ["model.widths=8,16", "model.stem_filters=8", "model.head_channels=8", "model.se_ratio=4"]


def model_config(name: str, extra: list[str] | None = None, config_path=REFERENCE_CONFIG):
    """The full Config of ``name``: the reference YAML, then the model's overrides, then ``extra``."""
    if name not in MODELS:
        raise ValueError(f"unknown ablation/baseline {name!r}; known: {', '.join(MODELS)}")
    overrides = MODELS[name] + list(extra or [])
    if any(o.startswith("model.widths=") for o in extra or []):
        # Tiny widths have fewer stages: keep only the SA-ECA stages that still exist.
        config = load_config(config_path, overrides)
        n = len(config.model.widths)
        config.model.sa_eca_stages = tuple(s for s in config.model.sa_eca_stages if s <= n)
        return config
    return load_config(config_path, overrides)


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates per image of the convolutions and dense layers of a float Keras model."""
    import tf_keras as keras

    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
            _, ho, wo, cout = layer.output_shape
            cin = layer.input_shape[-1]
            kh, kw = layer.kernel_size
            if kind == "Conv2D":
                total += ho * wo * kh * kw * (cin // layer.groups) * cout
            elif kind == "DepthwiseConv2D":
                total += ho * wo * kh * kw * cin * layer.depth_multiplier
            else:  # fused separable: depthwise then pointwise
                total += ho * wo * (kh * kw * cin + cin * cout)
        elif kind == "Dense":
            total += int(np.prod(layer.input_shape[1:])) * layer.units
        elif isinstance(layer, keras.Model):
            total += count_macs(layer)
    return int(total)


def head_inputs(model: keras.Model) -> int | None:
    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
    return int(np.prod(dense[-1].input_shape[1:])) if dense else None


def hardware_cost(model: keras.Model, variant: str, calibration: int = 32, seed: int = 0, log=print) -> dict:
    """Quantize (random calibration), convert strictly and map ``model`` on the Akida 2.0 virtual devices."""
    from qana_keras.conversion.quantize import integer_completeness, quantize_for_akida, to_akida

    quiet = lambda *_: None  # noqa: E731
    size = model.input_shape[1]
    samples = np.random.default_rng(seed).integers(0, 256, (calibration, size, size, 3), dtype=np.uint8)
    qmodel, _ = quantize_for_akida(model, samples, variant, batch_size=min(16, calibration),
                                   hardware_native=True, log=quiet)
    akida_model = to_akida(qmodel, strict=True, variant=variant, log=quiet)
    return mapping_cost(akida_model, r_succ=integer_completeness(qmodel)["r_succ"], log=log)


def mapping_cost(akida_model, r_succ: float | None = None, log=print) -> dict:
    """Mapping figures of a converted akida.Model on the standard devices (see the module docstring)."""
    from qana_keras.onchip.deploy import NP_TYPES_NOT_NPS, VIRTUAL_DEVICES, virtual_device_report
    from qana_keras.runtime.devices import model_macs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = virtual_device_report(akida_model, VIRTUAL_DEVICES, include_min=True, log=lambda *_: None)
    standard = [r for r in rows if r["device"] in VIRTUAL_DEVICES]
    fitting = [r for r in standard if r["ok"] and r["single_pass"]]
    best = fitting[0] if fitting else None
    cmd = next(r for r in rows if r["device"] == "compute_min_device")
    out = {"r_succ": r_succ, "akida_layers": len(akida_model.layers), "akida_macs": model_macs(akida_model),
           "min_device": best["device"] if best else None, "one_pass": best is not None,
           "nps": best["nps"] if best else None,
           "nps_by_type": {t: n for t, n in best["components"].items() if t not in NP_TYPES_NOT_NPS} if best else None,
           "program_bytes": best["program_bytes"] if best else None,
           "compute_min_device": {"nps_available": cmd.get("nps_available"), "ok": cmd["ok"],
                                  "passes": cmd.get("passes"), "nps": cmd.get("nps"),
                                  "program_bytes": cmd.get("program_bytes"), "error": cmd.get("error")},
           "devices": {r["device"]: {"ok": r["ok"], "single_pass": r["single_pass"], "passes": r.get("passes"),
                                     "nps": r.get("nps"), "error": r["error"].splitlines()[0][:200] if r["error"] else None}
                       for r in standard}}
    log(f"    min device {out['min_device']}, {out['nps']} NPs {out['nps_by_type']}, program {out['program_bytes']} B; "
        f"compute_min_device {cmd.get('nps_available')} NPs, {cmd.get('passes')} pass(es)")
    return out


def cost_row(name: str, extra: list[str] | None = None, calibration: int = 32, log=print) -> dict:
    """Build ``name`` (untrained) and measure its hardware cost; errors are reported in the row."""
    import tf_keras as keras

    from qana_keras.models.qana import build_model

    began = time.perf_counter()
    config = model_config(name, extra)
    row = {"name": name, "variant": config.model.variant, "overrides": MODELS[name] + list(extra or []),
           "image_size": config.data.image_size}
    try:
        keras.backend.clear_session()
        model = build_model(config.model, input_size=config.data.image_size)
        row.update(params=int(model.count_params()), macs=count_macs(model), head_inputs=head_inputs(model))
        log(f"{name}: {row['params']:,} params, {row['macs'] / 1e6:.1f} M MACs, head {row['head_inputs']} inputs")
        row.update(hardware_cost(model, config.model.variant, calibration=calibration, log=log), error=None)
    except Exception as error:  # one failing model must not hide the others' figures
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        log(f"    {name}: {row['error']}")
    row["seconds"] = round(time.perf_counter() - began, 1)
    return row



def cost_rows(names: list[str] | None = None, widths: str = "reference", extra: list[str] | None = None,
              calibration: int = 32, log=print) -> list[dict]:
    """``cost_row`` of each of ``names`` (default: every model of ``MODELS``); ``widths="tiny"`` for smoke runs."""
    unknown = [n for n in names or [] if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    if widths not in ("reference", "tiny"):
        raise ValueError(f"widths must be 'reference' or 'tiny', not {widths!r}")
    overrides = (TINY_OVERRIDES if widths == "tiny" else []) + list(extra or [])
    return [cost_row(name, overrides, calibration=calibration, log=log) for name in (names or MODELS)]
