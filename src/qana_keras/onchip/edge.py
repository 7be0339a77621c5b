"""Akida 1.0 on-chip learning for ``qana-akd1000``: a binary readout trained on the chip, one image at a time.

Akida 1.0 (AKD1000/AKD1500) can train its last layer itself (``AkidaUnsupervised``), but only on a v1
model whose last feature layer emits 1-bit spikes; QANA's Akida 2.0 layers cannot be that model, so
this route uses the sequential ``qana-akd1000`` variant (see ``qana_keras.models.qana``):

1. ``qana convert --run RUN --bits 4`` quantizes it for Akida 1.0 (4-bit, per-tensor, spike layer at
   1 bit) and converts it with cnn2snn ``AkidaVersion.v1``; it must map on ``akida.AKD1000()`` in one
   hardware pass (checked here).
2. The trained Keras head is popped and an ``akida.FullyConnected`` layer of ``neurons_per_class``
   neurons per class is added and compiled with ``AkidaUnsupervised``. Its ``num_weights`` (binary
   connections per neuron) is set from the mean spike count of the training images (x ``weight_factor``),
   as BrainChip's edge-learning guide advises; a spike layer that does not fire is an error.
3. ``fit(image, label)`` learns on the chip (here the akida software backend, the same integer
   semantics), ``add_classes`` grows the layer, ``predict_classes`` reads it.

Protocols (``edge_learn_run``), like ``qana learn`` but learned on the chip:
  class-incremental  the base classes of the run (``classes.json``), then vasc, then df with
                     5/10/20/all training images each; accuracy on the known classes and forgetting.
  domain             all 7 HAM10000 classes, then PAD-UFES-20 training patients (5 HAM classes).
  new-class          all 7, then PAD-UFES-20 training patients with SCC as an 8th class.
Each learns from at most ``max_per_class`` training images per HAM class (seeded draw): on-chip
learning reads one image at a time, and the rare classes have 80-230 images anyway.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qana_keras import CLASSES
from qana_keras.io import RunFolderError, atomic_write_text, write_json
from qana_keras.runs import RunFolder
from qana_keras.runtime.load import load_akida_model

EDGE_LAYER = "edge_learning"
PROTOCOLS = ("class-incremental", "domain", "new-class")


class EdgeError(RuntimeError):
    """The Akida model cannot learn on the chip as asked (wrong version, silent spike layer, ...)."""


@dataclass
class EdgeConfig:
    neurons_per_class: int = 10
    weight_factor: float = 1.2  # num_weights = factor x mean spike count of the training images
    learning_competition: float = 0.1
    max_per_class: int = 300  # HAM10000 training images learned per class (seeded draw); 0 = all
    shots: tuple[int, ...] = (5, 10, 20, 0)  # class-incremental: images of each new class; 0 = all
    seed: int = 0
    batch_size: int = 100


# --------------------------------------------------------------------------------------------------
# The learning model


def backbone(model):
    """The converted v1 model without its trained head: its output is the 1-bit spike layer."""
    import akida

    if "v1" not in str(model.ip_version):
        raise EdgeError(f"the model is {model.ip_version}; on-chip learning needs an Akida 1.0 model "
                        "(train qana-akd1000 and convert it with `qana convert --bits 4`)")
    body = akida.Model(layers=model.layers[:-1])
    bits = body.layers[-1].parameters.act_bits if hasattr(body.layers[-1].parameters, "act_bits") else None
    if bits not in (None, 1):
        raise EdgeError(f"layer '{body.layers[-1].name}' outputs {bits}-bit activations; on-chip learning reads a "
                        "1-bit spike layer (qana-akd1000's spike/relu)")
    return body


def spike_counts(body, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """Number of spikes (non-zero binary outputs) per image at the spike layer."""
    counts = [np.count_nonzero(body.forward(images[i:i + batch_size]).reshape(len(images[i:i + batch_size]), -1),
                               axis=1) for i in range(0, len(images), batch_size)]
    return np.concatenate(counts) if counts else np.zeros(0, int)


def learning_model(fbz: str | Path, n_classes: int, num_weights: int, config: EdgeConfig):
    """The v1 model with its head replaced by an AkidaUnsupervised FullyConnected layer for ``n_classes``."""
    import akida

    model = load_akida_model(fbz)
    body = backbone(model)
    body.add(akida.FullyConnected(name=EDGE_LAYER, units=n_classes * config.neurons_per_class, activation=False))
    body.compile(optimizer=akida.AkidaUnsupervised(num_weights=num_weights, num_classes=n_classes,
                                                   learning_competition=config.learning_competition))
    return body


def choose_num_weights(counts: np.ndarray, config: EdgeConfig, where: str) -> int:
    """``weight_factor`` x the mean spike count; an error when the spike layer is (nearly) silent."""
    mean = float(np.mean(counts)) if len(counts) else 0.0
    if mean < 1.0:
        raise EdgeError(f"{where}: the spike layer fires {mean:.2f} spikes per image on average, so the learning "
                        "layer would see no input; retrain qana-akd1000 (its spike/BN sets the firing rate) or "
                        "check that images are raw 0..255 pixels")
    return max(1, int(round(config.weight_factor * mean)))


def fit_images(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 100) -> None:
    """On-chip learning, in batches (the layer still updates once per image)."""
    for i in range(0, len(images), batch_size):
        model.fit(images[i:i + batch_size], labels[i:i + batch_size].astype(np.int32))


def predict(model, images: np.ndarray, n_classes: int, batch_size: int = 100) -> np.ndarray:
    return np.concatenate([model.predict_classes(images[i:i + batch_size], num_classes=n_classes)
                           for i in range(0, len(images), batch_size)]).astype(np.int64)


def scores(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1 (over the classes present) and per-class recall."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    present = sorted(set(labels.tolist()))
    recall = {classes[c]: float(np.mean(predictions[labels == c] == c)) for c in present}
    return {"n": int(len(labels)), "accuracy": float(np.mean(predictions == labels)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, labels=present, average="macro", zero_division=0)),
            "recall": recall}


def draw(labels: np.ndarray, classes: list[int], per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``per_class`` images of each class in ``classes`` (0 = all), in a shuffled order."""
    picked = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        picked.append(pool if per_class <= 0 or per_class >= len(pool) else rng.choice(pool, per_class, replace=False))
    order = np.concatenate(picked) if picked else np.zeros(0, int)
    return rng.permutation(order)


# --------------------------------------------------------------------------------------------------
# Protocols


def _snapshot(model, path: Path):
    """Save a learning model and load it back: learning state survives save/load, so this forks it."""
    import akida

    model.save(str(path))
    return akida.Model(str(path))  # just written by this process: no safe_load check needed


def class_incremental(model_path: Path, work: Path, data, base: list[str], num_weights: int, config: EdgeConfig,
                      log=print) -> dict:
    """Learn ``base`` on the chip, then vasc, then df with each shot count; evaluate on the known classes."""
    index = {c: i for i, c in enumerate(CLASSES)}
    rng = np.random.default_rng(config.seed)
    train, test = data["train"], data["test"]
    base_idx = [index[c] for c in base]
    # On the chip, class k is the k-th learned: base classes first, then the new ones in order.
    order = base_idx + [index[c] for c in ("vasc", "df") if c not in base]
    to_chip = {c: k for k, c in enumerate(order)}
    names = [CLASSES[c] for c in order]
    chip_train = np.array([to_chip.get(int(y), -1) for y in train.labels])
    chip_test = np.array([to_chip.get(int(y), -1) for y in test.labels])

    model = learning_model(model_path, len(base), num_weights, config)
    t0 = time.perf_counter()
    picked = draw(chip_train, list(range(len(base))), config.max_per_class, rng)
    fit_images(model, train.images[picked], chip_train[picked], config.batch_size)
    log(f"on-chip learning of {len(base)} base classes from {len(picked)} images in {time.perf_counter() - t0:.0f}s")
    known = np.isin(chip_test, range(len(base)))
    base_pred = predict(model, test.images[known], len(base), config.batch_size)
    before = scores(chip_test[known], base_pred, names)
    log(f"base classes on the HAM10000 test split: accuracy {before['accuracy']:.4f}  macro-F1 {before['macro_f1']:.4f}")
    rows = []
    for shots in config.shots:
        step_model = _snapshot(model, work / "edge_step.fbz")
        n_known = len(base)
        for new in order[len(base):]:
            k = to_chip[new]
            step_model.add_classes(1)
            n_known += 1
            pick = draw(chip_train, [k], shots, rng)
            fit_images(step_model, train.images[pick], chip_train[pick], config.batch_size)
            mask = np.isin(chip_test, range(n_known))
            pred = predict(step_model, test.images[mask], n_known, config.batch_size)
            now = scores(chip_test[mask], pred, names)
            on_base = np.isin(chip_test[mask], range(len(base)))
            rows.append({"shots": shots or "all", "step": f"+{CLASSES[new]}", "train_images_new_class": int(len(pick)),
                         "new_class_recall": now["recall"].get(CLASSES[new]), "accuracy_known": now["accuracy"],
                         "macro_f1_known": now["macro_f1"], "balanced_accuracy_known": now["balanced_accuracy"],
                         "base_accuracy_before": before["accuracy"],
                         "base_accuracy_after": float(np.mean(pred[on_base] == chip_test[mask][on_base]))})
            log(f"  {shots or 'all'} shots {rows[-1]['step']}: new-class recall {rows[-1]['new_class_recall']:.3f}  "
                f"known accuracy {now['accuracy']:.4f}  base accuracy {rows[-1]['base_accuracy_after']:.4f}")
    return {"protocol": "class-incremental", "base_classes": base, "chip_class_order": names,
            "base_learned_from": int(len(picked)), "base_test": before, "rows": rows}


def ham_then_pad(model_path: Path, data, pad, num_weights: int, config: EdgeConfig, grow: bool,
                 log=print) -> dict:
    """Learn all 7 HAM10000 classes on the chip, then PAD-UFES-20 training patients (SCC as an 8th class if ``grow``)."""
    from qana_keras.onchip.learn import NEW_CLASS, patient_split

    rng = np.random.default_rng(config.seed)
    train, test = data["train"], data["test"]
    names = list(CLASSES) + ([NEW_CLASS] if grow else [])
    model = learning_model(model_path, len(CLASSES), num_weights, config)
    picked = draw(train.labels, list(range(len(CLASSES))), config.max_per_class, rng)
    fit_images(model, train.images[picked], train.labels[picked], config.batch_size)
    keep = np.ones(len(pad["labels"]), bool) if grow else pad["labels"] < len(CLASSES)
    frame, labels, images = pad["frame"][keep].reset_index(drop=True), pad["labels"][keep], pad["images"][keep]
    test_mask = patient_split(frame, labels, seed=config.seed)
    n = len(CLASSES)

    def evaluate(m, n_out):
        return {"pad_test": scores(labels[test_mask], predict(m, images[test_mask], n_out, config.batch_size), names),
                "ham_test": scores(test.labels, predict(m, test.images, n_out, config.batch_size), names)}

    rows = {"HAM10000 learned on chip": evaluate(model, n)}
    if grow:
        model.add_classes(1)
        n += 1
    order = rng.permutation(np.flatnonzero(~test_mask))
    fit_images(model, images[order], labels[order], config.batch_size)
    rows["+ PAD-UFES-20 train patients learned on chip"] = evaluate(model, n)
    for name, r in rows.items():
        log(f"  {name}: PAD test accuracy {r['pad_test']['accuracy']:.4f}  HAM test accuracy "
            f"{r['ham_test']['accuracy']:.4f}")
    return {"protocol": "new-class" if grow else "domain", "classes": names, "ham_learned_from": int(len(picked)),
            "pad_split": {"train_images": int((~test_mask).sum()), "test_images": int(test_mask.sum()),
                          "train_patients": int(frame.loc[~test_mask, "patient_id"].nunique()),
                          "test_patients": int(frame.loc[test_mask, "patient_id"].nunique())},
            "rows": rows}


def markdown(result: dict) -> str:
    """The readable tables of ``edge_learning.json``."""
    head = result["trained_head_test"]
    lines = [f"# Akida 1.0 on-chip learning of {result['model']}", "",
             f"{result['device']}; the learning model uses {result['mapping']['nps']} of "
             f"{result['mapping']['nps_available']} NPs in {result['mapping']['passes']} hardware pass. "
             f"Without on-chip learning (the trained Keras head, converted): test accuracy "
             f"{head['accuracy'] * 100:.2f}, macro-F1 {head['macro_f1'] * 100:.2f}, balanced accuracy "
             f"{head['balanced_accuracy'] * 100:.2f} on {head['n']} test images of {', '.join(head['classes'])}.", "",
             f"num_weights {result['num_weights']} (mean spikes per training image {result['mean_spikes']:.1f} x "
             f"{result['config']['weight_factor']}), {result['config']['neurons_per_class']} neurons per class, "
             f"learning competition {result['config']['learning_competition']}.", ""]
    ci = result["protocols"].get("class-incremental")
    if ci:
        from qana_keras.onchip.learn import class_incremental_table

        lines += [f"## Class-incremental (base {', '.join(ci['base_classes'])}: test accuracy "
                  f"{ci['base_test']['accuracy'] * 100:.2f}, macro-F1 {ci['base_test']['macro_f1'] * 100:.2f})", "",
                  class_incremental_table(ci["rows"]), ""]
    for key in ("domain", "new-class"):
        p = result["protocols"].get(key)
        if not p:
            continue
        lines += [f"## {key} (PAD-UFES-20 test: {p['pad_split']['test_images']} images, "
                  f"{p['pad_split']['test_patients']} patients)", "",
                  "| model | PAD acc. | PAD macro-F1 | PAD bal. acc. | HAM test acc. | HAM test macro-F1 | "
                  "forgetting (HAM acc. pt) |", "|---|---:|---:|---:|---:|---:|---:|"]
        first = next(iter(p["rows"].values()))
        for name, r in p["rows"].items():
            lines.append(f"| {name} | {r['pad_test']['accuracy'] * 100:.2f} | {r['pad_test']['macro_f1'] * 100:.2f} | "
                         f"{r['pad_test']['balanced_accuracy'] * 100:.2f} | {r['ham_test']['accuracy'] * 100:.2f} | "
                         f"{r['ham_test']['macro_f1'] * 100:.2f} | "
                         f"{(first['ham_test']['accuracy'] - r['ham_test']['accuracy']) * 100:+.2f} |")
        lines.append("")
    return "\n".join(lines)


def edge_learn_run(run_dir: str | Path, protocols=PROTOCOLS, pad_root: str | Path | None = None,
                   config: EdgeConfig | None = None, overwrite: bool = False, data=None, log=print) -> dict:
    """Run the on-chip learning protocols on ``run_dir``'s Akida 1.0 model; write edge_learning.json/.md."""
    import akida

    from qana_keras.onchip.deploy import map_to_device
    from qana_keras.onchip.learn import _check_classes, _pad_table, check_protocols

    began = time.perf_counter()
    config = config or EdgeConfig()
    check_protocols(protocols, PROTOCOLS)
    run_dir = Path(run_dir)
    run = RunFolder.open(run_dir, "train and convert a qana-akd1000 model there first")
    run_config = run.config
    fbz = run.akida_model(bits=4)
    out_json, out_md = run_dir / "edge_learning.json", run_dir / "edge_learning.md"
    if (out_json.exists() or out_md.exists()) and not overwrite:
        raise RunFolderError(f"{out_json} already exists; pass --overwrite to replace it")
    model = load_akida_model(fbz)
    classes = _check_classes(run_dir, int(np.prod(model.output_shape)))
    if "class-incremental" in protocols and len(classes) == len(CLASSES):
        raise EdgeError(f"{run_dir}: its backbone was trained on all 7 classes; the class-incremental protocol needs a "
                        "backbone that never saw vasc and df (train with --set data.classes=akiec,bcc,bkl,mel,nv)")
    body = backbone(model)
    data = data if data is not None else run.splits(all_classes=True, log=log)
    counts = spike_counts(body, data["train"].images[:500], config.batch_size)
    num_weights = choose_num_weights(counts, config, str(fbz))
    log(f"spike layer: {counts.mean():.1f} spikes per training image (of {int(np.prod(body.output_shape))}); "
        f"num_weights {num_weights}")
    # What runs on the chip is the learning model (backbone + FullyConnected): it must fit in one pass.
    mapping = map_to_device(learning_model(fbz, len(CLASSES) + 1, num_weights, config), akida.AKD1000(), "AKD1000")
    if not mapping["single_pass"]:
        raise EdgeError(f"the learning model of {fbz.name} does not map on AKD1000 in one hardware pass: "
                        f"{mapping['error'] or mapping['sequences']}")
    log(f"AKD1000: {mapping['nps']} of {mapping['nps_available']} NPs, one hardware pass, "
        f"program {mapping['program_bytes']} B")
    # The plain test accuracy of the variant: the converted model with its trained head (no on-chip learning).
    index = {c: i for i, c in enumerate(CLASSES)}
    test = data["test"]
    known = np.isin(test.labels, [index[c] for c in classes])
    chip_labels = np.array([classes.index(CLASSES[y]) for y in test.labels[known]])
    head_logits = np.concatenate([model.predict(test.images[known][i:i + config.batch_size])
                                  for i in range(0, int(known.sum()), config.batch_size)])
    trained_head = scores(chip_labels, head_logits.reshape(len(chip_labels), -1).argmax(1), classes)
    log(f"trained head on Akida 1.0 ({', '.join(classes)} test images): accuracy {trained_head['accuracy']:.4f}  "
        f"macro-F1 {trained_head['macro_f1']:.4f}")
    work = run_dir / "edge_tmp"
    work.mkdir(exist_ok=True)
    results = {}
    if "class-incremental" in protocols:
        results["class-incremental"] = class_incremental(fbz, work, data, classes, num_weights, config, log)
    pad = None
    for protocol in [p for p in protocols if p != "class-incremental"]:
        if pad is None:
            if pad_root is None:
                raise ValueError("the domain and new-class protocols need PAD-UFES-20: pass --pad-ufes DIR")
            frame, images, labels = _pad_table(pad_root, run_config.data.image_size, run_config.data.cache_dir, log)
            pad = {"frame": frame, "images": images, "labels": labels}
        log(f"protocol {protocol}")
        results[protocol] = ham_then_pad(fbz, data, pad, num_weights, config, protocol == "new-class", log)
    for leftover in work.glob("*"):
        leftover.unlink()
    work.rmdir()
    result = {"model": fbz.name, "device": "AKD1000 (virtual; learning ran on the akida software backend)",
              "mapping": mapping, "spike_layer_outputs": int(np.prod(body.output_shape)),
              "mean_spikes": float(counts.mean()), "num_weights": num_weights,
              "trained_head_test": {"classes": list(classes), **trained_head},
              "config": {**asdict(config), "shots": list(config.shots)}, "protocols": results,
              "seconds": round(time.perf_counter() - began, 1)}
    write_json(out_json, result)
    atomic_write_text(out_md, markdown(result) + "\n")
    log(f"wrote {out_json.name} and {out_md.name} ({result['seconds']:.0f}s)")
    return result
