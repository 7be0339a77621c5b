"""Fidelity of the integer model against the float one, and quantization-aware fine-tuning by distillation."""
from __future__ import annotations

import time

import numpy as np

import qana_keras  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tf_keras as keras

from qana_keras import CLASSES
from qana_keras.metrics import FIDELITY_TARGETS
from qana_keras.runtime.load import predict_logits

# Post-training quantization that misses any of these on validation triggers quantization-aware fine-tuning.
TARGETS = FIDELITY_TARGETS
# What the quantized model learns from the float one (quantization_aware_finetune ``loss``).
QAT_LOSSES = {"softmax": "cross-entropy to the float model's softmax on the training images (distillation, T=1)",
              "logits": "mean squared error to the float model's logits on the training images"}


def _val_scores(model, images, labels, reference_logits: np.ndarray | None = None, classes=CLASSES) -> dict:
    """top-1, macro-F1 and per-class recall; with ``reference_logits`` also the argmax agreement with them."""
    from qana_keras.metrics import macro_f1

    logits = predict_logits(model, images, batch_size=256)
    pred = logits.argmax(1)
    recall = {c: float(np.mean(pred[labels == i] == i)) if np.any(labels == i) else None
              for i, c in enumerate(classes)}
    scores = {"top1": float(np.mean(pred == labels)), "macro_f1": macro_f1(labels, pred, len(classes)), "recall": recall,
              "logits": logits}
    if reference_logits is not None:
        scores["argmax_agreement"] = float(np.mean(pred == reference_logits.argmax(1)))
    return scores


def _public(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if k != "logits"}


def target_gap(scores: dict, reference: dict) -> float:
    """How far ``scores`` miss the fidelity targets against ``reference`` (the float model), in target units.

    The largest of top-1 drop / 0.5 pt, macro-F1 drop / 1 pt, disagreement with the float argmax / 1 %
    and the worst per-class recall drop / 2 pt: <= 1 means all targets are met, lower is closer to
    the float model.
    """
    recall_drops = [reference["recall"][c] - scores["recall"][c] for c in reference["recall"]
                    if reference["recall"][c] is not None]
    return max((reference["top1"] - scores["top1"]) / TARGETS["top1_drop"],
               (reference["macro_f1"] - scores["macro_f1"]) / TARGETS["macro_f1_drop"],
               (1.0 - scores["argmax_agreement"]) / (1.0 - TARGETS["argmax_agreement"]),
               max(recall_drops, default=0.0) / TARGETS["class_recall_drop"])


class FitProgress(keras.callbacks.Callback):
    """A progress line every ``every_seconds`` inside one ``fit`` epoch (a QAT epoch on all images takes minutes)."""

    def __init__(self, label: str, n_images: int, batch_size: int, every_seconds: float = 30.0, log=print):
        super().__init__()
        self.label, self.n_images, self.batch_size = label, n_images, batch_size
        self.every_seconds, self.log = every_seconds, log

    def on_epoch_begin(self, epoch, logs=None):
        self.began = self.last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self.last >= self.every_seconds:
            done = min((batch + 1) * self.batch_size, self.n_images)
            self.log(f"{self.label}: {done}/{self.n_images} images, {now - self.began:.0f}s")
            self.last = now


def quantization_aware_finetune(qmodel: keras.Model, images: np.ndarray, teacher_logits: np.ndarray, val,
                                reference: dict, start: dict, epochs: int, learning_rate: float,
                                batch_size: int = 64, seed: int = 0, stop_when_met: bool = False, loss: str = "softmax",
                                log=print) -> dict:
    """Fine-tune the quantized model in place by distillation from the float model; keep the best epoch.

    ``loss="softmax"``: the cross-entropy between the quantized model's softmax and the float model's
    (``teacher_logits`` on the training images), so the integer model learns to reproduce the float
    model's decisions, rare classes included, rather than to chase the labels again. ``loss="logits"``:
    the squared error of the logits themselves, which also weighs the gap between the top two classes
    where the softmax is already confident. Constant low learning rate: weights move on their
    quantization grid while the calibrated activation ranges (non-trainable) stay fixed. Epoch 0 is the
    post-training-quantized model ``start``; the kept epoch has the smallest validation ``target_gap``
    (ties: higher top-1). With ``stop_when_met``, training stops at the first epoch that meets every
    target on validation.
    """
    import tensorflow as tf

    if loss not in QAT_LOSSES:
        raise ValueError(f"QAT loss {loss!r}: use one of {', '.join(QAT_LOSSES)}")
    keras.utils.set_random_seed(seed)
    if loss == "softmax":
        targets = tf.nn.softmax(teacher_logits.astype(np.float32)).numpy()
        objective = keras.losses.CategoricalCrossentropy(from_logits=True)
    else:
        targets, objective = teacher_logits.astype(np.float32), keras.losses.MeanSquaredError()
    qmodel.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=objective)
    rng = np.random.default_rng(seed)

    def rank(scores):
        return (-target_gap(scores, reference), scores["top1"])

    best = {"epoch": 0, "scores": start, "weights": qmodel.get_weights()}
    history = []
    for epoch in range(epochs):
        began = time.perf_counter()
        order = rng.permutation(len(images))
        fit = qmodel.fit(images[order], targets[order], batch_size=batch_size, epochs=1, verbose=0,
                         callbacks=[FitProgress(f"QAT epoch {epoch + 1}/{epochs}", len(images), batch_size, log=log)])
        scores = _val_scores(qmodel, val.images, val.labels, reference["logits"], classes=list(reference["recall"]))
        gap = target_gap(scores, reference)
        row = {"epoch": epoch + 1, "loss": float(fit.history["loss"][-1]), "val_top1": scores["top1"],
               "val_macro_f1": scores["macro_f1"], "val_argmax_agreement": scores["argmax_agreement"],
               "target_gap": gap, "seconds": round(time.perf_counter() - began, 1)}
        history.append(row)
        better = rank(scores) > rank(best["scores"])
        if better:
            best = {"epoch": epoch + 1, "scores": scores, "weights": qmodel.get_weights()}
        log(f"QAT epoch {epoch + 1}/{epochs}  distillation loss ({loss}) {row['loss']:.4f}  "
            f"val top-1 {row['val_top1']:.4f}  macro-F1 {row['val_macro_f1']:.4f}  "
            f"agreement {row['val_argmax_agreement']:.4f}  target gap {gap:.2f}{'  *best*' if better else ''}  "
            f"{row['seconds']:.0f}s")
        if stop_when_met and gap <= 1.0:
            log("all fidelity targets met on validation: stopping quantization-aware fine-tuning")
            break
    qmodel.set_weights(best["weights"])
    return {"history": history, "selected_epoch": best["epoch"], "val": _public(best["scores"]),
            "learning_rate": learning_rate, "batch_size": batch_size, "ptq_target_gap": target_gap(start, reference),
            "loss": QAT_LOSSES[loss],
            "selection": "validation epoch (0 = post-training quantization) with the smallest target gap: the "
                         "largest of top-1 drop / 0.5 pt, macro-F1 drop / 1 pt, disagreement / 1 %, worst "
                         "class-recall drop / 2 pt against the float model; ties: top-1"}
