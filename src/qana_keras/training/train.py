"""Training: lesion-level train split, checkpoint selection by validation macro-F1, one test evaluation.

Run folder (``runs/<name>/``):
  config.yaml, versions.json       what made the run
  checkpoints/, state.json         every epoch, for ``--resume``
  history.csv, logs/ (TensorBoard) curves
  <variant>_float.h5               the epoch with the best validation macro-F1 (its weight average with
                                   train.ema_decay)
  metrics.json, *.png              validation and test metrics of that model
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from qana_keras import CLASSES
from qana_keras.config import Config, load_config
from qana_keras.data.dataset import run_classes
from qana_keras.data.pipeline import class_weights, make_dataset
from qana_keras.training.averaging import WeightAverage
from qana_keras.training.distill import mixed_targets, read_soft_targets
from qana_keras.training.losses import build_loss
from qana_keras.io import RunFolderError, atomic_path, atomic_write_text, read_json, write_json
from qana_keras.metrics import bootstrap_intervals, classification_metrics, confusion_bootstrap, macro_f1
from qana_keras.models.pretrained import PREFIX as PRETRAINED_PREFIX
from qana_keras.models.qana import build_model
from qana_keras.plots import plot_confusion_matrix, plot_history, plot_per_class
from qana_keras.provenance import versions
from qana_keras.runs import artifact_paths, load_splits
from qana_keras.runtime.load import load_keras_model, predict_logits
from qana_keras.runtime.safe_load import check_keras_artifact


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy across several GPUs when there are any, else the default (one device)."""
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and ask TensorFlow for deterministic kernels.

    Dropout draws from a ``tf.random.Generator`` whose state is a variable saved in the checkpoint,
    so a resumed run continues the same random stream. What TensorFlow still leaves open on CPU:
    results can differ across machines, thread counts and TensorFlow builds (reductions may be
    vectorised differently), so bit-exact equality holds on one machine and software stack.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    keras.backend.experimental.enable_tf_random_generator()


def dropout_generators(model) -> dict:
    """The ``tf.random.Generator`` of every random layer (Dropout), created now so it can be checkpointed.

    tf_keras creates them lazily and does not track them in the model's checkpoint, so without this
    a resumed run would draw different dropout masks from an uninterrupted one.
    """
    generators = {}
    for layer in model.layers:
        rng = getattr(layer, "_random_generator", None)
        if rng is None:
            continue
        rng._maybe_init()
        if getattr(rng, "_generator", None) is not None:
            generators[layer.name.replace("/", "_")] = rng._generator
    return generators


class BackboneScaledAdamW(keras.optimizers.AdamW):
    """AdamW whose steps on variables named ``prefix...`` (a pretrained backbone) are ``scale`` times smaller.

    Adam normalises gradients, so scaling them would change nothing: the update itself is scaled.
    """

    def __init__(self, *args, prefix: str = "", scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_prefix, self.backbone_scale = prefix, scale

    def _is_backbone(self, variable) -> bool:
        return bool(self.backbone_prefix) and variable.name.startswith(self.backbone_prefix)

    def update_step(self, gradient, variable):
        if self.backbone_scale == 1.0 or not self._is_backbone(variable):
            return super().update_step(gradient, variable)
        before = tf.identity(variable)
        super().update_step(gradient, variable)
        variable.assign(before + self.backbone_scale * (variable - before))

    def _apply_weight_decay(self, variables):
        backbone = [v for v in variables if self._is_backbone(v)]
        if self.backbone_scale == 1.0 or not backbone:
            return super()._apply_weight_decay(variables)
        super()._apply_weight_decay([v for v in variables if not self._is_backbone(v)])
        before = [tf.identity(v) for v in backbone]
        super()._apply_weight_decay(backbone)
        for variable, old in zip(backbone, before):
            variable.assign(old + self.backbone_scale * (variable - old))


def build_optimizer(config: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW with linear warm-up and cosine decay to zero over the whole run.

    With ``train.backbone_lr_scale`` < 1, pretrained backbone layers (``models.pretrained.PREFIX``) learn slower.
    """
    t = config.train
    total = max(1, t.epochs * steps_per_epoch)
    warmup = min(total - 1, t.warmup_epochs * steps_per_epoch)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else t.learning_rate, decay_steps=total - warmup,
        warmup_target=t.learning_rate if warmup else None, warmup_steps=warmup)
    optimizer = BackboneScaledAdamW(learning_rate=schedule, weight_decay=t.weight_decay, prefix=PRETRAINED_PREFIX,
                                    scale=t.backbone_lr_scale)
    # Decay only conv/dense kernels: BN scales and biases set operating points, not capacity.
    optimizer.exclude_from_weight_decay(var_names=["BN", "bias"])
    return optimizer


# What a start writes before the first epoch is checkpointed: a folder holding only these is a failed start.
START_FILES = {"config.yaml", "versions.json", "classes.json", "logs", "checkpoints"}


def check_start(config: Config, log=print) -> None:
    """Everything a start can check in seconds, before the run folder is touched or an image decoded.

    Config values, the class subset, the metadata, the split file, init_from/soft_targets, and that the
    model builds for data.image_size (a bad size would otherwise fail after caching every image).
    """
    from qana_keras.config import source_folder, validate_config
    from qana_keras.data import ham10000, splits

    validate_config(config)
    for folder in config.data.extra_sources:
        source_folder(folder)  # an unset $VARIABLE fails here, not after the HAM10000 images are loaded
    classes = run_classes(config.data)
    splits.read_split(config.data.split_file, meta=ham10000.load_metadata(config.data.data_dir))
    for key in ("init_from", "init_backbone_from", "soft_targets"):
        path = getattr(config.train, key)
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"train.{key}: {path} not found")
    if config.train.init_from and config.train.init_backbone_from:
        raise ValueError("train.init_from and train.init_backbone_from are both set; give one (init_from copies the "
                         "whole model, init_backbone_from only the pretrained backbone)")
    if config.train.init_backbone_from:
        if not config.model.variant.startswith("lite0-"):
            raise ValueError(f"train.init_backbone_from needs a pretrained Lite0 variant (model.variant lite0-*), not "
                             f"{config.model.variant}; use train.init_from to start a whole model from another run")
        check_keras_artifact(config.train.init_backbone_from)  # a wrong kind of file fails now, not after caching
    try:
        # No ImageNet weights: this only checks that the graph builds (lite0-* would read and hash an 18 MB file).
        build_model(dataclasses.replace(config.model, pretrained=False), input_size=config.data.image_size,
                    num_classes=len(classes))
    except ValueError as error:
        raise ValueError(f"the model ({config.model.variant}) does not build for data.image_size="
                         f"{config.data.image_size}: {error}") from None
    finally:
        keras.backend.clear_session()  # the real build then gets the same layer names as without this check


def _failed_start(run_dir: Path) -> bool:
    """True for a folder left by a start that failed (or was killed) before its first epoch was checkpointed."""
    names = {p.name for p in run_dir.iterdir()}
    checkpoints = run_dir / "checkpoints"
    # config.yaml alone is not enough: a user's own folder may hold one; a start writes versions.json right after.
    return ({"config.yaml", "versions.json"} <= names and names <= START_FILES
            and not (checkpoints.is_dir() and any(checkpoints.iterdir())))


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, log=print) -> None:
    """Refuse, or make ready, the run folder; never deletes anything but a failed start's own files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--run {run_dir} is a file, not a folder; pick another --run")
    started = (run_dir / "config.yaml").exists()
    if resume:
        if not started:
            raise RunFolderError(f"{run_dir}: nothing to resume (no config.yaml); start it with `qana train --run {run_dir}`")
        return
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if _failed_start(run_dir):
            log(f"{run_dir} holds a start that stopped before its first epoch; starting it again")
            for name in START_FILES:
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        elif not overwrite:
            raise RunFolderError(f"{run_dir} already holds a run; continue it with `qana train --resume {run_dir}`, "
                                 "pick another --run, or pass --overwrite to replace it")
        elif not started:
            raise RunFolderError(f"{run_dir} is not a run folder (no config.yaml) and holds other files; --overwrite "
                                 "only replaces runs: pick another --run or empty the folder yourself")
        else:
            aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.rename(aside)  # kept, not deleted: a finished run may hold conversions and reports
            log(f"moved the replaced run {run_dir} to {aside}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"cannot create the run folder {run_dir} ({error.strerror or error}); pick a --run "
                             "in a writable folder") from None


def _resume_point(manager: tf.train.CheckpointManager, run_dir: Path) -> tuple[str | None, list[dict]]:
    """The newest kept checkpoint that state.json covers, and the history up to it; (None, []) if none.

    A kill between a checkpoint and state.json leaves a checkpoint newer than the history: that epoch
    is redone from the checkpoint before it (the manager keeps two), identically.
    """
    state_path = run_dir / "state.json"
    history = read_json(state_path)["history"] if state_path.exists() else []
    kept = {int(path.rsplit("-", 1)[1]): path for path in manager.checkpoints}
    usable = [n for n in kept if 0 < n <= len(history)]
    if not usable:
        return None, []
    n = max(usable)
    return kept[n], history[:n]


def _write_history(run_dir: Path, history: list[dict]) -> None:
    if not history:
        return
    buf = io.StringIO()
    # every key of every row: a run resumed across versions has rows without later columns (val_loss)
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in history for k in row)))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())


def load_initial_weights(model, path: str | Path, prefix: str = "", key: str = "train.init_from") -> None:
    """Copy the weights of the float model at ``path`` into ``model``, layer by layer (by name).

    ``prefix``: only the layers whose names start with it (a pretrained backbone, taken from a model with a
    deeper cut or another input size); the other layers keep their initialisation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} not found (give a float .h5 written by `qana train`)")
    source = load_keras_model(path)
    theirs = {layer.name: layer for layer in source.layers}
    what = ("a model whose backbone holds every layer of this one (the same or a deeper cut)" if prefix
            else "a model of the same variant and widths")
    copied = 0
    for layer in model.layers:
        if not layer.weights or not layer.name.startswith(prefix):
            continue
        if layer.name not in theirs:
            raise ValueError(f"{key}: {path} has no layer {layer.name!r}; it must be {what}")
        shapes = [w.shape for w in theirs[layer.name].get_weights()]
        if shapes != [w.shape for w in layer.get_weights()]:
            raise ValueError(f"{key}: layer {layer.name!r} of {path} has weights {shapes}, this model "
                             f"{[tuple(w.shape) for w in layer.get_weights()]}; "
                             + ("same backbone widths needed" if prefix else
                                "same variant, widths and input size needed"))
        layer.set_weights(theirs[layer.name].get_weights())
        copied += 1
    if not copied:
        raise ValueError(f"{key}: this model has no layer named {prefix}*; it applies to the pretrained variants "
                         "(model.variant: lite0-bN)")


def train(run_dir: str | Path, config: Config | None = None, resume: bool = False, overwrite: bool = False,
          stop_after: int | None = None, log=print) -> dict | None:
    """Train (or resume) the run in ``run_dir``; returns the metrics dictionary written to metrics.json.

    ``stop_after`` ends this session after that many epochs in all (checkpointed, returns None), so a
    long run can be trained in chunks with ``--resume``; it has no effect on the result.
    """
    run_dir = Path(run_dir)
    if not resume:
        config = config or Config()
        check_start(config, log=log)  # before the folder is touched: a bad value leaves it as it was
    _prepare_run_dir(run_dir, resume, overwrite, log=log)
    if resume:
        config = load_config(run_dir / "config.yaml")
    else:
        config.save(run_dir / "config.yaml")
        write_json(run_dir / "versions.json", versions())
    t = config.train
    make_deterministic(t.seed)

    classes = run_classes(config.data)
    data = load_splits(config.data, max_images=t.max_images, seed=t.seed, log=log, extra_sources=True)
    train_data, val_data = data["train"], data["val"]
    log("images per split: " + ", ".join(f"{k} {len(v)}" for k, v in data.items()))
    if classes != CLASSES:  # read by `qana learn`: the order of the model's outputs
        write_json(run_dir / "classes.json", {"classes": list(classes)})
        log(f"classes (subset, output order): {', '.join(classes)}")
    weights = class_weights(train_data.labels, len(classes), t.class_weighting)
    log("class weights: " + ", ".join(f"{c} {w:.2f}" for c, w in zip(classes, weights)))
    steps_per_epoch = int(np.ceil(len(train_data) / t.batch_size))
    targets = None
    if t.soft_targets:
        teacher = read_soft_targets(t.soft_targets, train_data.frame["image_id"].tolist(), classes)
        targets = mixed_targets(train_data.labels, teacher, t.soft_target_weight)
        log(f"soft targets: {t.soft_target_weight:g} x teacher ({t.soft_targets}) + "
            f"{1 - t.soft_target_weight:g} x labels; teacher train top-1 {np.mean(teacher.argmax(1) == train_data.labels):.3f}")

    strategy = distribution_strategy()
    with strategy.scope():
        model = build_model(config.model, input_size=config.data.image_size, num_classes=len(classes))
        optimizer = build_optimizer(config, steps_per_epoch)
        model.compile(optimizer=optimizer,
                      loss=build_loss(t.loss, train_data.labels, len(classes), label_smoothing=t.label_smoothing,
                                      ldam_margin=t.ldam_margin))
        rngs = dropout_generators(model)
        averager = WeightAverage(model, t.ema_decay) if t.ema_decay else None
    averaged = {"weight_average": averager.state} if averager else {}
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **rngs, **averaged)
    manager = tf.train.CheckpointManager(checkpoint, run_dir / "checkpoints", max_to_keep=2)

    state = {"epochs_done": 0, "best_score": -1.0, "best_epoch": None, "history": []}
    restored, history = _resume_point(manager, run_dir) if resume else (None, [])
    if restored:
        checkpoint.restore(restored).expect_partial()
        # The best epoch is recomputed from the history up to the restored checkpoint (later epochs are redone).
        best = max(history, key=lambda h: selection_score(h, t.selection))
        state = {"epochs_done": len(history), "best_score": selection_score(best, t.selection),
                 "best_epoch": best["epoch"], "history": history}
        log(f"resuming {run_dir} after epoch {len(history)} (best {t.selection} {state['best_score']:.4f})")
    elif resume and manager.latest_checkpoint:
        log(f"{run_dir}: state.json covers none of the kept checkpoints; training again from epoch 1")
    if t.init_from and not restored:
        load_initial_weights(model, t.init_from)
        log(f"initial weights from {t.init_from}")
    if t.init_backbone_from and not restored:
        load_initial_weights(model, t.init_backbone_from, prefix=PRETRAINED_PREFIX, key="train.init_backbone_from")
        log(f"initial backbone weights ({PRETRAINED_PREFIX}*) from {t.init_backbone_from}; "
            "the head starts from scratch")

    best_path = artifact_paths(run_dir, config.model.variant)["float"]
    tensorboard = keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), write_graph=False)
    verbose = 1 if sys.stdout.isatty() else 0  # a progress bar on a terminal, one line per epoch in logs
    last_epoch = t.epochs if stop_after is None else min(t.epochs, stop_after)
    for epoch in range(state["epochs_done"], last_epoch):
        start = time.perf_counter()
        sample_weights = weights[train_data.labels]
        ds = make_dataset(train_data.images, train_data.labels, len(classes), t.batch_size, t, training=True,
                          epoch=epoch, sample_weights=sample_weights, targets=targets)
        fit = model.fit(ds, epochs=epoch + 1, initial_epoch=epoch, verbose=verbose,
                        callbacks=[tensorboard, *([averager] if averager else [])])
        # With weight averaging, the average is what is validated, selected and saved.
        with averager.applied() if averager else contextlib.nullcontext():
            val_logits = predict_logits(model, val_data.images, 256)
            val_pred = val_logits.argmax(1)
            row = {"epoch": epoch + 1, "loss": float(fit.history["loss"][-1]),
                   # the training loss (label smoothing included) on hard labels, without class weights
                   "val_loss": float(model.loss(keras.utils.to_categorical(val_data.labels, len(classes)), val_logits)),
                   "val_top1": float(np.mean(val_pred == val_data.labels)),
                   "val_macro_f1": macro_f1(val_data.labels, val_pred, len(classes)),
                   "learning_rate": float(optimizer.learning_rate),
                   "seconds": round(time.perf_counter() - start, 1)}
            for split in extra_validation_splits(data):  # other sources: watched; selected on with source_mean
                pred = predict_logits(model, data[split].images, 256).argmax(1)
                with warnings.catch_warnings():  # a source holds only some classes: recall over the classes it has
                    warnings.simplefilter("ignore", UserWarning)
                    row[f"{split}_balanced_accuracy"] = float(balanced_accuracy_score(data[split].labels, pred))
            improved = selection_score(row, t.selection) > state["best_score"]
            if improved:
                with atomic_path(best_path) as tmp:
                    model.save(tmp, include_optimizer=False, save_format="h5")
                state["best_score"], state["best_epoch"] = selection_score(row, t.selection), epoch + 1
        state["history"].append(row)
        state["epochs_done"] = epoch + 1
        manager.save(checkpoint_number=epoch + 1)
        write_json(run_dir / "state.json", state)
        _write_history(run_dir, state["history"])
        extra = "".join(f"  {k[:-len('_balanced_accuracy')]} bal. acc. {v:.4f}" for k, v in row.items()
                        if k.startswith("val_") and k.endswith("_balanced_accuracy"))
        log(f"epoch {epoch + 1}/{t.epochs}  loss {row['loss']:.4f}  val top-1 {row['val_top1']:.4f}  "
            f"val macro-F1 {row['val_macro_f1']:.4f}{extra}{'  *best*' if improved else ''}  {row['seconds']:.0f}s")

    if state["epochs_done"] < t.epochs:
        log(f"stopped after epoch {state['epochs_done']} of {t.epochs}; continue with `qana train --resume {run_dir}`")
        return None
    metrics = evaluate_run(run_dir, config, data, state, log=log)
    plot_history(state["history"], run_dir / "training_curves.png", selected_epoch=state["best_epoch"])
    return metrics


SELECTIONS = {"val_macro_f1": "best validation macro-F1",
              "source_mean": "best mean of the validation macro-F1 and each extra source's validation balanced accuracy"}


def selection_score(row: dict, rule: str) -> float:
    """The score an epoch's history ``row`` is selected on (higher is better).

    ``source_mean`` weighs each source alike, so a model is kept for how it does across clinics, not on
    one split; balanced accuracy stands for the other sources because they may hold only some classes
    (a 7-class macro-F1 says little there). Without extra sources both rules are the same.
    """
    if rule == "val_macro_f1":
        return row["val_macro_f1"]
    if rule == "source_mean":
        scores = [row["val_macro_f1"]] + [v for k, v in row.items()
                                           if k.startswith("val_") and k.endswith("_balanced_accuracy")]
        return float(np.mean(scores))
    raise ValueError(f"unknown train.selection {rule!r}: use {' or '.join(SELECTIONS)}")


def extra_validation_splits(data: dict) -> list[str]:
    """The validation splits of extra sources (``val_<source>``), in load order."""
    return [name for name in data if name.startswith("val_")]


def evaluate_run(run_dir: Path, config: Config, data, state: dict, log=print) -> dict:
    """Evaluate the selected float model once on validation and test; write metrics.json and plots."""
    model = load_keras_model(artifact_paths(run_dir, config.model.variant)["float"])
    out = {"variant": config.model.variant, "selected_epoch": state["best_epoch"],
           "selection": SELECTIONS[config.train.selection], "parameters": int(model.count_params()),
           "seconds_per_epoch": float(np.mean([h["seconds"] for h in state["history"]])) if state["history"] else None}
    for split in ("val", "test", *extra_validation_splits(data)):
        split_data = data[split]
        logits = predict_logits(model, split_data.images, 256)
        metrics = classification_metrics(split_data.labels, logits, classes=run_classes(config.data))
        metrics["bootstrap_95"] = bootstrap_intervals(split_data.labels, logits.argmax(1),
                                                      split_data.frame["lesion_id"].to_numpy(), n_boot=1000,
                                                      seed=config.train.seed, num_classes=logits.shape[1])
        _add_recall_intervals(metrics, split_data, logits, run_classes(config.data), config.train.seed)
        out[split] = metrics
        plot_confusion_matrix(metrics, run_dir / f"confusion_{split}.png", title=f"{config.model.variant} {split}")
        plot_per_class(metrics, run_dir / f"per_class_{split}.png", title=f"{config.model.variant} {split}")
        log(f"{split}: top-1 {metrics['top1']:.4f}  balanced acc {metrics['balanced_accuracy']:.4f}  "
            f"macro-F1 {metrics['macro_f1']:.4f}  macro AUC {metrics['macro_auc']:.4f}")
    write_json(run_dir / "metrics.json", out)
    return out


def _add_recall_intervals(metrics: dict, split_data, logits: np.ndarray, classes, seed: int) -> None:
    """per_class[c]["recall_95"]: lesion-bootstrap interval of each class's recall (the per-class plot's bars)."""
    boot = confusion_bootstrap(split_data.labels, logits.argmax(1), split_data.frame["lesion_id"].to_numpy(),
                               num_classes=len(classes), n_boot=1000, seed=seed, classes=classes)
    for name in classes:
        metrics["per_class"][name]["recall_95"] = boot["recall"][name]
