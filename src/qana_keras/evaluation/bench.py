"""`qana bench`: CPU inference speed of a run's float Keras, quantized Keras and Akida-software-backend models.

Measures images/s and ms/image at batch 1 and batch 100 on this machine's CPU and writes
``bench.json`` in the run folder. These are CPU figures: the Akida row is the software simulator,
not the chip, and says nothing about Akida hardware latency or throughput.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from qana_keras.runtime.safe_load import load_keras_model

BATCH_SIZES = (1, 100)


def _timed(fn, min_seconds: float, min_repeats: int) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds) per call of ``fn`` after one warm-up call, repeating until
    both minimums are met. CPU time counts every thread of this process, so on a loaded machine it
    shows what the work costs, where wall time also counts waiting for a core."""
    fn()
    repeats, began, cpu_began = 0, time.perf_counter(), time.process_time()
    while repeats < min_repeats or time.perf_counter() - began < min_seconds:
        fn()
        repeats += 1
    return (time.perf_counter() - began) / repeats, (time.process_time() - cpu_began) / repeats, repeats


def bench_model(name: str, model, images: np.ndarray, batch_sizes=BATCH_SIZES, min_seconds: float = 3.0,
                min_repeats: int = 3) -> list[dict]:
    """One row per batch size: images/s and ms/image for one model."""
    import tf_keras as keras

    from qana_keras.runtime.load import HybridModel, akida_logits

    rows = []
    for batch in batch_sizes:
        x = np.ascontiguousarray(images[:batch])
        if len(x) < batch:  # too few images: tile them (speed does not depend on content)
            x = np.resize(images, (batch, *images.shape[1:]))
        if isinstance(model, keras.Model):
            # predict_on_batch runs Keras's compiled predict function: no per-call data-pipeline overhead.
            fn = lambda: model.predict_on_batch(x)  # noqa: E731
        elif isinstance(model, HybridModel):
            fn = lambda: model.predict(x, batch_size=batch)  # noqa: E731
        else:
            fn = lambda: akida_logits(model, x, batch_size=batch)  # noqa: E731
        seconds, cpu_seconds, repeats = _timed(fn, min_seconds, min_repeats)
        rows.append({"model": name, "batch_size": batch, "images_per_second": batch / seconds,
                     "ms_per_image": 1000.0 * seconds / batch, "ms_per_batch": 1000.0 * seconds,
                     "cpu_ms_per_image": 1000.0 * cpu_seconds / batch, "repeats": repeats})
    return rows


def bench_run(run_dir: str | Path, bits: int = 8, min_seconds: float = 3.0, data_config=None, log=print) -> dict:
    """Benchmark the three models of ``run_dir`` on its test images; writes bench.json."""
    from qana_keras.io import display_path, write_json
    from qana_keras.runs import RunFolder, precision_tag

    run_dir = Path(run_dir)
    run = RunFolder.open(run_dir, f"train and convert a model there first (`qana convert --run {run_dir}`)")
    if data_config is not None:
        run.config.data = data_config
    converted = run.converted(bits)
    images = run.splits(log=log)["test"].images[:max(BATCH_SIZES)]
    models = {"float Keras (TensorFlow CPU)": load_keras_model(converted["paths"]["float"]),
              f"quantized Keras {precision_tag(bits)} (TensorFlow CPU)": converted["quantized"],
              "Akida software backend (CPU simulator)": converted["akida"]}
    rows = []
    load_before = os.getloadavg()
    for name, model in models.items():
        log(f"timing {name} ...")
        rows += bench_model(name, model, images, min_seconds=min_seconds)
    load_after = os.getloadavg()
    out = {"variant": converted["variant"], "precision": precision_tag(bits),
           "hybrid": bool(converted["report"].get("hybrid")),
           "note": "CPU figures on this machine. The Akida row is the software simulator running on the CPU; "
                   "it is not Akida chip latency or throughput.",
           "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                       "python": platform.python_version(),
                       "load_average_1min": {"before": load_before[0], "after": load_after[0]}},
           "cpu_ms_per_image": "process CPU time (all threads) per image: less sensitive to other load than "
                               "wall time, but not a speed; wall-time figures are the ones to quote on an idle machine",
           "rows": rows}
    bench_json = run.tagged("bench.json", bits)
    write_json(bench_json, out)
    log(format_table(rows))
    if max(load_before[0], load_after[0]) > (os.cpu_count() or 1):
        log(f"warning: load average {max(load_before[0], load_after[0]):.1f} on {os.cpu_count()} CPUs: other "
            "processes competed for the CPU; re-run on an idle machine for figures to quote")
    log(f"wrote {display_path(bench_json)}")
    return out


def format_table(rows: list[dict]) -> str:
    width = max(len(r["model"]) for r in rows)
    lines = ["CPU inference speed (this machine; Akida = software simulator, not the chip)",
             f"{'model':<{width}}  {'batch':>5}  {'images/s':>9}  {'ms/image':>9}  {'CPU ms/image':>12}"]
    for r in rows:
        lines.append(f"{r['model']:<{width}}  {r['batch_size']:>5}  {r['images_per_second']:>9.1f}  "
                     f"{r['ms_per_image']:>9.2f}  {r['cpu_ms_per_image']:>12.2f}")
    return "\n".join(lines)
