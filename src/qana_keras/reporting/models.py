"""The published model folders the report reads: which there are, and the figures each one's JSON holds."""
from __future__ import annotations

from pathlib import Path

from qana_keras.io import read_json
from qana_keras.markdown import ReportError


def read_optional_json(path: Path) -> dict | None:
    """The JSON in ``path``, None when there is no such file; a corrupt one is a ReportError naming it."""
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except ValueError as error:  # read_json names the file
        raise ReportError(str(error)) from None


def discover_models(models_dir: str | Path) -> list[Path]:
    """Folders of ``models_dir`` that hold a training ``metrics.json``, sorted by name.

    A model trained on a class subset (``classes.json``: the class-incremental backbones) is left out:
    the report's tables are over all 7 HAM10000 classes; those folders carry their own Markdown reports.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ReportError(f"models folder {models_dir} not found")
    return sorted(p.parent for p in models_dir.glob("*/metrics.json") if not (p.parent / "classes.json").exists())


def _smallest_device(devices: list[dict]) -> dict | None:
    """The standard virtual device with the fewest NPs available, or None."""
    return min(devices, key=lambda d: d.get("nps_available", 1e9)) if devices else None


def model_summary(model_dir: Path) -> dict:
    """The figures a report needs from one model folder's JSON files (None where a file is absent)."""
    metrics = read_optional_json(model_dir / "metrics.json")
    if metrics is None or "test" not in metrics:
        raise ReportError(f"{model_dir / 'metrics.json'}: no 'test' section; publish a trained run "
                          "(scripts/publish_model.py)")
    conversion, deploy, fidelity, bench = (read_optional_json(model_dir / f"{name}.json")
                                           for name in ("conversion", "deploy", "fidelity", "bench"))
    variant = metrics.get("variant", "qana")
    artifacts = {"float": f"{variant}_float.h5"}
    if conversion:
        artifacts.update({k: v for k, v in conversion.get("artifacts", {}).items() if k in ("quantized", "akida")})
    artifacts = {k: v for k, v in artifacts.items() if (model_dir / v).is_file()}
    ok = [d for d in (deploy or {}).get("virtual_devices", [])
          if d.get("ok") and d.get("device") != "compute_min_device"]
    one_pass = _smallest_device([d for d in ok if d.get("passes") == 1])
    mapped = one_pass or _smallest_device(ok)  # a one-pass mapping first: what a user deploys
    minimal = next((d for d in (deploy or {}).get("virtual_devices", [])
                    if d.get("device") == "compute_min_device" and d.get("ok")), None)
    sized = ((deploy or {}).get("compute_min_device") or {}).get("one_pass_nps")
    if minimal is None and sized:  # the current deploy.json layout: a top-level sizing
        minimal = {"device": "compute_min_device", "ok": True, "nps": sized, "nps_available": sized}
    source = (model_dir / "SOURCE").read_text().strip() if (model_dir / "SOURCE").is_file() else None
    return {"name": model_dir.name, "dir": str(model_dir), "variant": variant, "source": source,
            "metrics": metrics, "conversion": conversion, "deploy": deploy, "fidelity": fidelity, "bench": bench,
            "artifacts": artifacts, "parameters": metrics.get("parameters"),
            "macs": (conversion or {}).get("akida", {}).get("macs"), "smallest_device": mapped,
            "smallest_one_pass_device": one_pass, "compute_min_device": minimal}
