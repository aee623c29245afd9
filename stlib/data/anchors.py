"""RetinaNet anchors, anchor-to-ground-truth matching and training targets.

Anchor order (shared by :func:`generate_anchors`, :func:`level_shapes` and
:func:`flatten_level_outputs`): level by level from ``min_level`` to
``max_level``; within a level row-major over the feature grid (y, then x); at
each location ``num_scales * len(aspect_ratios)`` anchors, outer loop scale,
inner loop aspect ratio (REFERENCE §4.1). The head's per-level output
``[B, h, w, num_anchors * C]`` uses channel ``anchor * C + c`` (REFERENCE §4.3),
so a plain reshape to ``[B, h * w * num_anchors, C]`` lines up with the anchors.

Matching follows the TPU ``ArgMaxMatcher`` (REFERENCE §4.2) with static shapes:
ground truth is padded to a fixed ``M`` and masked with ``gt_valid``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from stlib.config import LossParams, ModelParams
from stlib.data.boxes import encode_boxes, pairwise_iou

# The defaults below are the params' (stlib.config), written there once.
_MODEL, _LOSS = ModelParams(), LossParams()

# Match types returned by :func:`match_anchors`.
POSITIVE = 1
NEGATIVE = 0
IGNORED = -1


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """Anchor layout. Defaults are the TPU RetinaNet ones (REFERENCE §4.1), `stlib.config.ModelParams`'.

    ``aspect_ratios`` are width / height. SpineNet-49/49S/96 configs use
    ``anchor_size=3.0``; SpineNet-143/190 keep 4.0 (REFERENCE §4.1).
    """

    min_level: int = _MODEL.min_level  # levels P3..P7
    max_level: int = _MODEL.max_level
    num_scales: int = _MODEL.num_scales  # scales 2^(0/3), 2^(1/3), 2^(2/3)
    aspect_ratios: tuple[float, ...] = _MODEL.aspect_ratios  # TPU order (TFM uses 0.5, 1, 2)
    anchor_size: float = _MODEL.anchor_size

    @property
    def num_anchors_per_location(self) -> int:
        """Anchors per feature-grid location (9 by default)."""
        return self.num_scales * len(self.aspect_ratios)


def level_shapes(image_size: tuple[int, int], cfg: AnchorConfig = AnchorConfig()) -> list[tuple[int, int, int]]:
    """``[(level, h, w), ...]`` for ``min_level..max_level``.

    The grid of level ``L`` is ``ceil(image_size / 2**L)``: the feature-map size
    produced by ``L`` stride-2 SAME convolutions. (TPU ``anchor.py`` uses
    ``range(stride/2, size, stride)``, which agrees whenever the image size is a
    multiple of ``2**max_level``, as TPU configs require.)
    """
    height, width = image_size
    shapes = []
    for level in range(cfg.min_level, cfg.max_level + 1):
        stride = 2**level
        shapes.append((level, math.ceil(height / stride), math.ceil(width / stride)))
    return shapes


def generate_anchors(image_size: tuple[int, int], cfg: AnchorConfig = AnchorConfig()) -> np.ndarray:
    """All anchors for an image of ``image_size = (height, width)``.

    Returns a float32 ``np.ndarray [A, 4]`` (``[ymin, xmin, ymax, xmax]``,
    absolute pixels) in the order described in the module docstring. Anchor of
    scale ``s`` and aspect ratio ``ar`` at level ``L``: base size
    ``anchor_size * 2**L * 2**(s / num_scales)``, width ``base * sqrt(ar)``,
    height ``base / sqrt(ar)``, centred at ``stride/2 + i*stride``
    (REFERENCE §4.1).
    """
    per_level = []
    for level, h, w in level_shapes(image_size, cfg):
        stride = 2.0**level
        sizes = []  # (height, width) per anchor, outer loop scale, inner loop aspect ratio
        for scale in range(cfg.num_scales):
            base = cfg.anchor_size * stride * 2.0 ** (scale / cfg.num_scales)
            for ar in cfg.aspect_ratios:
                sizes.append((base / math.sqrt(ar), base * math.sqrt(ar)))
        half = 0.5 * np.asarray(sizes, np.float64)  # [n, 2]
        yc = stride / 2 + stride * np.arange(h, dtype=np.float64)
        xc = stride / 2 + stride * np.arange(w, dtype=np.float64)
        centres = np.stack(np.meshgrid(yc, xc, indexing="ij"), axis=-1)  # [h, w, 2]
        centres = centres[:, :, None, :]  # [h, w, 1, 2]
        boxes = np.concatenate([centres - half, centres + half], axis=-1)  # [h, w, n, 4]
        per_level.append(boxes.reshape(-1, 4))
    return np.concatenate(per_level, axis=0).astype(np.float32)


def flatten_level_outputs(outputs: dict, num_channels: int) -> jnp.ndarray:
    """Concatenate per-level head outputs in anchor order.

    ``outputs`` maps level -> ``[B, h, w, num_anchors * num_channels]`` with
    channel index ``anchor * num_channels + c`` (REFERENCE §4.3). Returns
    ``[B, total_anchors, num_channels]`` aligned with :func:`generate_anchors`
    (levels in increasing order).
    """
    flat = []
    for level in sorted(outputs):
        x = outputs[level]
        flat.append(jnp.reshape(x, (x.shape[0], -1, num_channels)))
    return jnp.concatenate(flat, axis=1)


def match_anchors(
    anchors: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    gt_valid: jnp.ndarray,
    match_threshold: float = _LOSS.match_threshold,  # positive if IoU >= it (loss.match_threshold)
    unmatched_threshold: float = _LOSS.unmatched_threshold,  # negative if IoU < it (no ignore band at equal)
    force_match: bool = True,  # REFERENCE §4.2: force_match_for_each_row=True
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Match anchors ``[A, 4]`` to padded ground truth ``[M, 4]`` (ArgMaxMatcher).

    Each anchor takes its highest-IoU valid ground truth (lowest index on ties).
    Its ``match_type`` is ``POSITIVE`` (1) if that IoU >= ``match_threshold``,
    ``NEGATIVE`` (0) if < ``unmatched_threshold``, else ``IGNORED`` (-1).
    The defaults (`stlib.config.LossParams`, 0.5 / 0.5) give no ignore band (REFERENCE §4.2).

    ``force_match`` (REFERENCE §4.2: ``force_match_for_each_row=True``): every
    valid ground truth also claims its highest-IoU anchor (lowest anchor index
    on ties) as positive, even below threshold and overriding that anchor's
    argmax assignment. If several ground truths claim the same anchor, the
    **lowest-index** ground truth wins: this is what the TPU ``ArgMaxMatcher``
    does (``tf.argmax`` over the one-hot claim matrix returns the first row).

    Invalid (padded) ground truth never matches; with no valid ground truth,
    every anchor is negative. Thresholds and ``force_match`` must be Python
    values (static under ``jit``); requires
    ``unmatched_threshold <= match_threshold``.

    Returns ``(matched_idx [A] int32, match_type [A] int32)``; ``matched_idx``
    is the ground-truth index for positive anchors and -1 otherwise.
    """
    if float(unmatched_threshold) > float(match_threshold):
        raise ValueError(f"unmatched_threshold {unmatched_threshold} > match_threshold {match_threshold}")
    anchors = jnp.asarray(anchors, jnp.float32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_valid = jnp.asarray(gt_valid, bool)
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if num_gt == 0:
        return (jnp.full((num_anchors,), -1, jnp.int32), jnp.full((num_anchors,), NEGATIVE, jnp.int32))

    # IoU >= 0 for valid rows, so -1 keeps padded rows from ever being the argmax
    # (and makes an anchor negative when no row is valid).
    sim = jnp.where(gt_valid[:, None], pairwise_iou(gt_boxes, anchors), -1.0)  # [M, A]
    best_gt = jnp.argmax(sim, axis=0).astype(jnp.int32)
    best_iou = jnp.max(sim, axis=0)
    match_type = jnp.where(
        best_iou >= match_threshold,
        POSITIVE,
        jnp.where(best_iou < unmatched_threshold, NEGATIVE, IGNORED),
    ).astype(jnp.int32)
    matched_idx = best_gt

    if force_match:
        best_anchor = jnp.argmax(sim, axis=1)  # [M]
        claimant = jnp.where(gt_valid, jnp.arange(num_gt, dtype=jnp.int32), num_gt)
        # Lowest claiming gt index per anchor; num_gt where no valid gt claims it.
        forced_gt = jnp.full((num_anchors,), num_gt, jnp.int32).at[best_anchor].min(claimant)
        forced = forced_gt < num_gt
        matched_idx = jnp.where(forced, forced_gt, matched_idx)
        match_type = jnp.where(forced, POSITIVE, match_type)

    matched_idx = jnp.where(match_type == POSITIVE, matched_idx, -1)
    return matched_idx, match_type


def assign_targets(
    anchors: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    gt_classes: jnp.ndarray,
    gt_valid: jnp.ndarray,
    match_threshold: float = _LOSS.match_threshold,
    unmatched_threshold: float = _LOSS.unmatched_threshold,
    force_match: bool = True,
) -> dict:
    """RetinaNet training targets for one image.

    Args:
      anchors: ``[A, 4]``.
      gt_boxes: ``[M, 4]`` padded ground-truth boxes.
      gt_classes: ``[M]`` int32 class ids in ``1..K``; a negative class marks an *ignore box*
        (self-training's uncertain pseudo boxes): anchors it matches are ignored, neither
        positive nor negative.
      gt_valid: ``[M]`` bool, False for padding.
      match_threshold, unmatched_threshold, force_match: see
        :func:`match_anchors` (REFERENCE §4.2 defaults).

    Returns a dict:
      ``cls_targets [A] int32``: class id for positives, 0 for negatives, -1 for
        ignored. (TPU encodes negatives as -1 and ignored as -2, REFERENCE §4.2;
        here class 0 = background so ``one_hot(cls_targets - 1, K)`` is the
        per-class target and ``cls_targets >= 0`` the loss mask.)
      ``box_targets [A, 4] float32``: encoded matched box, zeros where not positive.
      ``positive [A] bool``.

    Batch it with ``jax.vmap(assign_targets, in_axes=(None, 0, 0, 0))`` (pass
    non-default thresholds through ``functools.partial``; ``vmap`` maps keyword
    arguments).
    """
    anchors = jnp.asarray(anchors, jnp.float32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_classes = jnp.asarray(gt_classes, jnp.int32)
    matched_idx, match_type = match_anchors(
        anchors, gt_boxes, gt_valid, match_threshold, unmatched_threshold, force_match
    )
    positive = match_type == POSITIVE
    safe_idx = jnp.maximum(matched_idx, 0)
    if gt_boxes.shape[0] == 0:
        matched_classes = jnp.zeros_like(safe_idx)
        matched_boxes = anchors
    else:
        matched_classes = gt_classes[safe_idx]
        matched_boxes = gt_boxes[safe_idx]
    ignore_box = positive & (matched_classes < 0)
    positive = positive & ~ignore_box
    cls_targets = jnp.where(positive, matched_classes, jnp.where((match_type == IGNORED) | ignore_box, -1, 0))
    box_targets = jnp.where(positive[:, None], encode_boxes(matched_boxes, anchors), 0.0)
    return {
        "cls_targets": cls_targets.astype(jnp.int32),
        "box_targets": box_targets.astype(jnp.float32),
        "positive": positive,
    }


def assign_soft_targets(
    anchors: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    gt_classes: jnp.ndarray,
    gt_scores: jnp.ndarray,
    gt_valid: jnp.ndarray,
    num_classes: int,
    match_threshold: float = _LOSS.match_threshold,
    unmatched_threshold: float = _LOSS.unmatched_threshold,
    force_match: bool = True,
) -> dict:
    """Soft RetinaNet targets for one pseudo-labeled image (``self_train.targets: soft``).

    Matching is :func:`assign_targets`'s (positives, negatives, ignored anchors, ignore
    boxes, forced matches); what changes is the target value. A positive anchor's target for
    class ``k`` is the best score among the boxes of class ``k`` it matches at IoU >=
    ``match_threshold`` (so an object the teacher gave two classes keeps both as partial
    targets), and at least its matched box's score for that box's class. Negatives are 0.
    With every score 1 and one class per object these are :func:`assign_targets`'s one-hot
    targets.

    Args:
      gt_scores: ``[M]`` float32, each box's score (the teacher's).
      others: as :func:`assign_targets`.

    Returns a dict:
      ``cls_targets [A, K] float32`` soft per-class targets;
      ``not_ignored [A] bool`` (the classification loss mask);
      ``box_targets [A, 4]`` encoded matched box, zeros where not positive;
      ``box_weight [A] float32``: the matched box's score on positives, else 0;
      ``positive [A] bool``.
    """
    gt_classes = jnp.asarray(gt_classes, jnp.int32)
    gt_scores = jnp.asarray(gt_scores, jnp.float32)
    gt_valid = jnp.asarray(gt_valid, bool)
    num_gt = gt_boxes.shape[0]
    num_anchors = jnp.asarray(anchors).shape[0]
    # Match with each box's index as its "class": ignore boxes keep a negative class.
    index_classes = jnp.where(gt_classes > 0, jnp.arange(1, num_gt + 1, dtype=jnp.int32), -1)
    hard = assign_targets(anchors, gt_boxes, index_classes, gt_valid, match_threshold, unmatched_threshold,
                          force_match)
    positive = hard["positive"]
    if num_gt == 0:
        zeros = jnp.zeros((num_anchors,), jnp.float32)
        return {"cls_targets": jnp.zeros((num_anchors, num_classes), jnp.float32),
                "not_ignored": hard["cls_targets"] >= 0, "box_targets": hard["box_targets"],
                "box_weight": zeros, "positive": positive}
    matched = jnp.maximum(hard["cls_targets"] - 1, 0)
    matched_score = jnp.where(positive, gt_scores[matched], 0.0)
    matched_onehot = jax.nn.one_hot(gt_classes[matched] - 1, num_classes, dtype=jnp.float32)   # [A, K]
    # Per class, the best score of the sure boxes an anchor overlaps at >= match_threshold:
    # a segment max over boxes (memory M x A, not M x A x K).
    hit = (pairwise_iou(gt_boxes, jnp.asarray(anchors, jnp.float32)) >= match_threshold) \
        & gt_valid[:, None] & (gt_classes > 0)[:, None]                                          # [M, A]
    values = jnp.where(hit, gt_scores[:, None], 0.0)
    per_class = jax.ops.segment_max(values, jnp.clip(gt_classes, 0, num_classes), num_segments=num_classes + 1)
    per_class = jnp.maximum(per_class[1:], 0.0).T                                                # [A, K]
    soft = jnp.maximum(per_class, matched_score[:, None] * matched_onehot)
    return {"cls_targets": jnp.where(positive[:, None], soft, 0.0),
            "not_ignored": hard["cls_targets"] >= 0,
            "box_targets": hard["box_targets"],
            "box_weight": matched_score,
            "positive": positive}
