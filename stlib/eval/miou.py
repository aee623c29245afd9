"""Mean IoU of semantic segmentation (the paper's PASCAL VOC metric, Tables 6 and 8), as
TPU `metric_fn` computes it with `tf.metrics.mean_iou`: a confusion matrix summed over the
evaluation set, then IoU per class present in labels or predictions."""
from __future__ import annotations

import jax.numpy as jnp


def confusion_matrix(pred, labels, num_classes: int, ignore_label: int = 255):
    """[num_classes, num_classes] int32 counts, rows = ground truth, cols = prediction,
    over pixels whose label is not `ignore_label` (and lies in [0, num_classes)).
    Confusion matrices of several batches can simply be summed."""
    labels = jnp.asarray(labels).reshape(-1).astype(jnp.int32)
    pred = jnp.asarray(pred).reshape(-1).astype(jnp.int32)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    idx = jnp.where(valid, labels * num_classes + jnp.clip(pred, 0, num_classes - 1), 0)
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[idx].add(valid.astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def miou_from_confusion(cm):
    """(mean IoU, per-class IoU) from a confusion matrix. IoU_c = TP / (TP + FP + FN); the
    mean is over classes with TP + FP + FN > 0 (present in labels or predictions), as
    `tf.metrics.mean_iou`; absent classes get NaN in the per-class vector (mean 0 if none)."""
    cm = jnp.asarray(cm).astype(jnp.float32)
    tp = jnp.diagonal(cm)
    denom = jnp.sum(cm, axis=0) + jnp.sum(cm, axis=1) - tp
    present = denom > 0
    iou = jnp.where(present, tp / jnp.where(present, denom, 1.0), jnp.nan)
    n = jnp.sum(present)
    mean = jnp.where(n > 0, jnp.sum(jnp.where(present, iou, 0.0)) / jnp.maximum(n, 1), 0.0)
    return mean, iou


def miou(pred, labels, num_classes: int, ignore_label: int = 255):
    """Mean IoU of integer predictions vs labels (same shape) ignoring `ignore_label` pixels.
    Returns (mean IoU over classes present in pred or labels, per-class IoU [num_classes],
    NaN for absent classes)."""
    return miou_from_confusion(confusion_matrix(pred, labels, num_classes, ignore_label))
