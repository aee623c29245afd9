"""Every loss of stlib: detection (sigmoid focal, Huber box, RetinaNet), the stream combination
of self-training (Appendix B), classification (softmax CE with label smoothing, soft CE),
SimCLR's NT-Xent and segmentation (softmax CE with an ignore label).

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

from stlib.config import LossParams
from stlib.models.segmentation import resize_labels_to

_LOSS = LossParams()   # the defaults below: written once, in stlib.config (REFERENCE §4.4)

# google-research/simclr objective.py LARGE_NUM: logits of excluded pairs (self, padding) are pushed this far down.
LARGE_NUM = 1e9


def focal_loss(logits, targets, alpha: float = _LOSS.focal_alpha, gamma: float = _LOSS.focal_gamma):
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


def soft_focal_loss(logits, targets, alpha: float = _LOSS.focal_alpha, gamma: float = _LOSS.focal_gamma):
    """Focal loss for soft targets in [0, 1] (soft pseudo labels, ``self_train.targets: soft``).

    ``alpha_t * |target - p|^gamma * CE(p, target)``, with alpha_t interpolated like the
    target. For targets in {0, 1} this is :func:`focal_loss` (|t - p| = 1 - p_t); for a soft
    target the modulating factor vanishes at p = target, so the loss is minimal there (the
    quality focal loss of Li et al. 2020, with RetinaNet's alpha).
    """
    p = jax.nn.sigmoid(logits)
    ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    return alpha_t * jnp.abs(targets - p) ** gamma * ce


def huber_loss(pred, target, delta: float = _LOSS.huber_delta):
    """Elementwise Huber loss: 0.5 x^2 for |x| <= delta, delta (|x| - 0.5 delta) beyond."""
    x = jnp.abs(pred - target)
    quad = jnp.minimum(x, delta)
    return 0.5 * quad ** 2 + delta * (x - quad)


def detection_loss(cls_logits, box_preds, cls_targets, box_targets, num_classes: int,
                   focal_alpha=_LOSS.focal_alpha, focal_gamma=_LOSS.focal_gamma, huber_delta=_LOSS.huber_delta,
                   box_loss_weight=_LOSS.box_loss_weight, example_weight=None):
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


def soft_detection_loss(cls_logits, box_preds, cls_targets, not_ignored, box_targets, box_weight,
                        focal_alpha=_LOSS.focal_alpha, focal_gamma=_LOSS.focal_gamma, huber_delta=_LOSS.huber_delta,
                        box_loss_weight=_LOSS.box_loss_weight, example_weight=None):
    """:func:`detection_loss` with soft targets (`stlib.data.anchors.assign_soft_targets`).

    Args:
      cls_targets: [B, A, K] float32 soft per-class targets.
      not_ignored: [B, A] bool, the classification loss mask.
      box_targets: [B, A, 4]; box_weight: [B, A] (the matched box's score on positives, 0 elsewhere).
    The normalizer is the summed box weight + 1 (the number of positives + 1 when every
    weight is 1), so a batch of unsure boxes does not count as many sure ones.
    Returns (total, {"cls_loss", "box_loss", "num_positives", "soft_positives"}).
    """
    if example_weight is None:
        example_weight = jnp.ones(box_weight.shape[:1], jnp.float32)
    ew = example_weight[:, None]
    weight = box_weight * ew
    mask = not_ignored.astype(jnp.float32) * ew
    normalizer = jnp.sum(weight) + 1.0
    cls = soft_focal_loss(cls_logits, cls_targets, focal_alpha, focal_gamma)
    cls_loss = jnp.sum(cls * mask[..., None]) / normalizer
    box = huber_loss(box_preds, box_targets, huber_delta)
    box_loss = jnp.sum(box * weight[..., None]) / (4.0 * normalizer)
    total = cls_loss + box_loss_weight * box_loss
    return total, {"cls_loss": cls_loss, "box_loss": box_loss,
                   "num_positives": jnp.sum((box_weight > 0).astype(jnp.float32) * ew),
                   "soft_positives": normalizer - 1.0}


def update_loss_averages(averages: dict, stream_losses: dict, momentum: float) -> dict:
    """Exponential moving averages of each stream's loss (Appendix B's mean_L), as f32 scalars.

    `averages` holds one entry per stream plus "count" (updates so far); the first update
    takes the loss itself, later ones ``m * avg + (1 - m) * loss``. No gradient flows
    through them (they are constants for the gradient).
    """
    first = averages["count"] == 0
    out = {"count": averages["count"] + 1}
    for name, loss in stream_losses.items():
        loss = jax.lax.stop_gradient(loss)
        out[name] = jnp.where(first, loss, momentum * averages[name] + (1.0 - momentum) * loss)
    return out


def combine_stream_losses(stream_losses: dict, alphas: dict, averages: dict | None = None,
                          primary: str = "human", normalize: bool = True):
    """The self-training loss over data streams (paper Appendix B).

    With the human loss ``L_h`` (`primary`) and extra streams ``k`` (pseudo labels; joint
    training's classification) of weights ``alpha_k``:

      normalized: ``L = (L_h + sum_k alpha_k * (mean_L_h / mean_L_k) * L_k) / (1 + sum_k alpha_k)``
      plain:      ``L = L_h + sum_k alpha_k * L_k``

    For one extra stream the normalized form is the paper's
    ``1/(1+alpha) * (L_h + alpha * (mean_L_h / mean_L_p) * L_p)``. The ratios of moving
    averages (`averages`, see `update_loss_averages`) are constants for the gradient, so
    every stream's gradient is rescaled to the human loss's magnitude. With no extra stream
    both forms are ``L_h``.

    Returns (total, {stream: the weight its loss got}).
    """
    extra = [k for k in stream_losses if k != primary]
    total = stream_losses[primary]
    weights = {primary: jnp.ones((), jnp.float32)}
    if not extra:
        return total, weights
    if normalize:
        denom = 1.0 + sum(alphas[k] for k in extra)
        for k in extra:
            ratio = jax.lax.stop_gradient(averages[primary] / jnp.maximum(averages[k], 1e-12))
            weights[k] = alphas[k] * ratio / denom
        weights[primary] = weights[primary] / denom
    else:
        for k in extra:
            weights[k] = jnp.asarray(alphas[k], jnp.float32)
    total = sum(weights[k] * stream_losses[k] for k in stream_losses)
    return total, weights


# ----------------------------------------------------------------------------- classification

def classification_loss(logits, labels, weight, label_smoothing: float = 0.0):
    """Softmax cross-entropy with label smoothing, averaged over examples with weight 1.

    Returns (loss, accuracy)."""
    k = logits.shape[-1]
    target = jax.nn.one_hot(labels, k) * (1.0 - label_smoothing) + label_smoothing / k
    ce = -jnp.sum(target * jax.nn.log_softmax(logits), axis=-1)
    n = jnp.maximum(jnp.sum(weight), 1.0)
    acc = jnp.sum((jnp.argmax(logits, -1) == labels) * weight) / n
    return jnp.sum(ce * weight) / n, acc


def soft_cross_entropy(logits, targets, weight):
    """Cross-entropy against target distributions [B, K], averaged over examples with weight 1."""
    ce = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
    return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


# ----------------------------------------------------------------------------- SimCLR

def nt_xent_loss(z1, z2, temperature: float, weight=None):
    """NT-Xent (Sec. 2.1, eq. 1) over the 2N anchors of a global batch; plain jnp, jit-able.

    Each row of z1 / z2 [N, D] is one view of image k; z is L2-normalized here (cosine
    similarity). Anchor a's positive is the other view of its image; its negatives are the other
    2N - 2 embeddings. The loss is the mean over valid anchors of
    -log softmax(sim(a, .) / temperature)[positive], the paper's L = 1/(2N) sum_k [l(2k-1, 2k) +
    l(2k, 2k-1)] (`objective.py` returns loss_a + loss_b, twice this).

    Args:
      z1, z2: [N, D] projections of the two views (any float dtype; computed in float32).
      temperature: tau > 0 (SimCLR: 0.1 for ImageNet, `run.py`'s default; 0.5 in the README's
        CIFAR-10 command).
      weight: optional [N] in {0, 1}; 0 marks padding, excluded both as an anchor and as a
        negative of every other anchor (its gradient is zero).

    Returns:
      (loss, {"contrast_accuracy": fraction of valid anchors whose most similar other
      candidate is their positive}), float32 scalars.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent_loss: want z1, z2 both [N, D], got {z1.shape} and {z2.shape}")
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"nt_xent_loss: temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = jnp.concatenate([z1, z2]).astype(jnp.float32)
    # tf.math.l2_normalize: x / sqrt(max(sum(x^2), 1e-12)).
    z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))
    logits = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST) / temperature
    w = jnp.ones((n,), jnp.float32) if weight is None else jnp.asarray(weight, jnp.float32).reshape(n)
    w2 = jnp.concatenate([w, w])
    idx = jnp.arange(2 * n)
    positive = (idx + n) % (2 * n)
    candidate = (w2[None, :] > 0) & (idx[:, None] != idx[None, :])
    logits = jnp.where(candidate, logits, -LARGE_NUM)
    per_anchor = jax.nn.logsumexp(logits, axis=-1) - logits[idx, positive]
    count = jnp.maximum(jnp.sum(w2), 1.0)
    loss = jnp.sum(per_anchor * w2) / count
    hit = (jnp.argmax(logits, axis=-1) == positive).astype(jnp.float32)
    return loss, {"contrast_accuracy": jnp.sum(hit * w2) / count}


# ----------------------------------------------------------------------------- segmentation

def segmentation_loss(logits, labels, ignore_label: int = 255):
    """Softmax cross-entropy (no label smoothing, no class weights) between logits
    [B, h, w, C] and integer labels [B, H, W] (or [B, H, W, 1]) resized to (h, w) by
    `resize_labels_to`. Pixels equal to `ignore_label` are excluded (after resizing);
    the loss is the mean over valid pixels, 0 (with zero, finite gradient) when none are.
    """
    logits = logits.astype(jnp.float32)
    labels = resize_labels_to(labels, logits.shape[1:3]).astype(jnp.int32)
    valid = labels != ignore_label
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    nll = jnp.where(valid, nll, 0.0)
    count = jnp.sum(valid).astype(jnp.float32)
    return jnp.sum(nll) / jnp.maximum(count, 1.0)
