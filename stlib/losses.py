"""Losses: sigmoid focal loss, Huber box loss, and the RetinaNet detection loss.

Facts from REFERENCE §4.4 (TPU `modeling/losses.py`): focal alpha 0.25, gamma 1.5;
Huber delta 0.1; both normalized by the number of positive anchors + 1; box loss
additionally divided by 4 (coordinates) and weighted by 50.

One deliberate difference: TPU sums positives per replica; we sum them over the global
batch, which is what the synchronous-batch view of the paper implies and makes the loss
independent of how many devices share the batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 1.5):
    """Elementwise sigmoid focal loss (Lin et al. 2017).

    Args:
      logits: [...] raw class scores.
      targets: [...] in {0, 1} (one-hot).
    Returns:
      [...] loss = alpha_t * (1 - p_t)^gamma * CE(p, target).
    """
    p = jax.nn.sigmoid(logits)
    ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    p_t = targets * p + (1 - targets) * (1 - p)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    return alpha_t * (1.0 - p_t) ** gamma * ce


def huber_loss(pred, target, delta: float = 0.1):
    """Elementwise Huber loss: 0.5 x^2 for |x| <= delta, delta (|x| - 0.5 delta) beyond."""
    x = jnp.abs(pred - target)
    quad = jnp.minimum(x, delta)
    return 0.5 * quad ** 2 + delta * (x - quad)


def detection_loss(cls_logits, box_preds, cls_targets, box_targets, num_classes: int,
                   focal_alpha=0.25, focal_gamma=1.5, huber_delta=0.1, box_loss_weight=50.0,
                   example_weight=None):
    """RetinaNet loss over a batch.

    Args:
      cls_logits: [B, A, K] float32.
      box_preds: [B, A, 4].
      cls_targets: [B, A] int32: class id 1..K positive, 0 negative, -1 ignored.
      box_targets: [B, A, 4] encoded targets (zeros where not positive).
      example_weight: optional [B] weights (0 for padding examples).
    Returns:
      (total, {"cls_loss", "box_loss", "num_positives"}).
    """
    if example_weight is None:
        example_weight = jnp.ones(cls_targets.shape[:1], jnp.float32)
    positive = (cls_targets > 0).astype(jnp.float32) * example_weight[:, None]
    not_ignored = (cls_targets >= 0).astype(jnp.float32) * example_weight[:, None]
    normalizer = jnp.sum(positive) + 1.0
    onehot = jax.nn.one_hot(cls_targets - 1, num_classes, dtype=jnp.float32)  # 0 and -1 -> all zeros
    cls = focal_loss(cls_logits, onehot, focal_alpha, focal_gamma)
    cls_loss = jnp.sum(cls * not_ignored[..., None]) / normalizer
    box = huber_loss(box_preds, box_targets, huber_delta)
    box_loss = jnp.sum(box * positive[..., None]) / (4.0 * normalizer)
    total = cls_loss + box_loss_weight * box_loss
    return total, {"cls_loss": cls_loss, "box_loss": box_loss, "num_positives": normalizer - 1.0}
