"""RetinaNet post-processing: scores, box decoding, top-k and per-class (Soft-)NMS.

This is the single implementation shared by evaluation and pseudo-labelling.
It runs batched on device with static shapes and is jit-able with the config
static (``jax.jit(postprocess, static_argnames=("image_size", "cfg"))``).

Column ``j`` of ``cls_logits`` is class ``j + 1``: the logits carry no
background column (REFERENCE §4.5: "background column removed"); drop it before
calling if a head still has one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from stlib.config import PostprocessParams
from stlib.data.boxes import clip_boxes, decode_boxes, pairwise_iou
from stlib.registry import Registry

# name -> suppress(scores, active, iou, same, cfg) -> (scores, active): what picking a box does to
# the candidates of its class (`postprocess.method` for evaluation, `self_train.nms` for pseudo labels)
NMS_METHODS = Registry("NMS method", field=("postprocess.method", "self_train.nms"))


@NMS_METHODS.register("nms")
def hard_nms(scores, active, iou, same, cfg):
    """Hard NMS: remove candidates with IoU > threshold."""
    return scores, active & ~(same & (iou > cfg.nms_iou_threshold))


@NMS_METHODS.register("soft_nms")
def soft_nms(scores, active, iou, same, cfg):
    """Gaussian Soft-NMS as TF `non_max_suppression_with_scores` (REFERENCE §4.5): weight
    exp(-0.5 * IoU^2 / sigma). Checked against TF 2.21: in soft mode TF applies this weight at
    every IoU and does NOT hard-remove above iou_threshold, so nms_iou_threshold is unused
    here. Candidates decayed below score_threshold are dropped."""
    weight = jnp.exp(-0.5 * iou * iou / cfg.soft_nms_sigma)
    scores = jnp.where(same, scores * weight, scores)
    return scores, active & (scores >= cfg.score_threshold)


_DEFAULTS = PostprocessParams()


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
    """Post-processing settings; the defaults are `stlib.config.PostprocessParams`' (REFERENCE
    §4.5, cited there). ``method`` names an `NMS_METHODS` entry: ``'nms'`` or ``'soft_nms'``
    (Gaussian, TF ``non_max_suppression_with_scores`` semantics: no hard removal, so
    ``nms_iou_threshold`` is unused; see ``soft_nms``).
    """

    pre_nms_top_k: int = _DEFAULTS.pre_nms_top_k  # TPU: per class; here global, see postprocess
    score_threshold: float = _DEFAULTS.score_threshold
    nms_iou_threshold: float = _DEFAULTS.nms_iou_threshold  # per-class NMS IoU
    max_detections: int = _DEFAULTS.max_detections
    method: str = _DEFAULTS.method  # TPU: hard NMS only (REFERENCE §4.5)
    soft_nms_sigma: float = _DEFAULTS.soft_nms_sigma

    def __post_init__(self):
        NMS_METHODS.get(self.method)
        if self.method == "soft_nms" and not self.soft_nms_sigma > 0:
            raise ValueError(f"soft_nms_sigma must be > 0, got {self.soft_nms_sigma}")


def _select(boxes, scores, classes, active, cfg: PostprocessConfig):
    """Greedy per-class (Soft-)NMS over ``k`` candidates of one image.

    ``max_detections`` iterations; each picks the highest-scoring active
    candidate, emits it, and suppresses the remaining candidates of the same
    class using the IoU with the picked box only (no k x k IoU matrix).

    Restricting suppression to the same class runs every class's NMS jointly in
    one loop. It does what the usual class-offset trick does (shift boxes by
    ``class * offset`` so classes never overlap) without adding a large offset
    to float32 coordinates, which would perturb IoUs. Since the emitted scores
    of each class are non-increasing, the joint loop's first ``max_detections``
    picks are exactly "per-class NMS, merge, keep the top ``max_detections``".
    """
    det = cfg.max_detections
    suppress = NMS_METHODS.get(cfg.method)

    def body(i, state):
        scores, active, out_boxes, out_scores, out_classes, out_valid = state
        masked = jnp.where(active, scores, -jnp.inf)
        j = jnp.argmax(masked)
        ok = active[j]
        box, cls = boxes[j], classes[j]
        out_boxes = out_boxes.at[i].set(jnp.where(ok, box, 0.0))
        out_scores = out_scores.at[i].set(jnp.where(ok, scores[j], 0.0))
        out_classes = out_classes.at[i].set(jnp.where(ok, cls, 0))
        out_valid = out_valid.at[i].set(ok)

        iou = pairwise_iou(box[None], boxes)[0]
        same = (classes == cls) & ok
        scores, active = suppress(scores, active, iou, same, cfg)
        active = active.at[j].set(False)
        return scores, active, out_boxes, out_scores, out_classes, out_valid

    init = (
        scores,
        active,
        jnp.zeros((det, 4), boxes.dtype),
        jnp.zeros((det,), scores.dtype),
        jnp.zeros((det,), jnp.int32),
        jnp.zeros((det,), bool),
    )
    _, _, out_boxes, out_scores, out_classes, out_valid = jax.lax.fori_loop(0, det, body, init)
    return out_boxes, out_scores, out_classes, out_valid


def postprocess(
    cls_logits: jnp.ndarray,
    box_deltas: jnp.ndarray,
    anchors: jnp.ndarray,
    image_size: tuple[int, int],
    cfg: PostprocessConfig = PostprocessConfig(),
) -> dict:
    """Turn raw RetinaNet outputs into at most ``max_detections`` detections per image.

    Args:
      cls_logits: ``[B, A, K]`` class logits (column ``j`` = class ``j + 1``).
      box_deltas: ``[B, A, 4]`` encoded box regressions (``[ty, tx, th, tw]``).
      anchors: ``[A, 4]`` from :func:`stlib.data.anchors.generate_anchors`.
      image_size: ``(height, width)`` the boxes are clipped to (the network
        input size, like TPU's ``image_info`` row 1, REFERENCE §4.5).
      cfg: :class:`PostprocessConfig` (static under jit).

    Steps: sigmoid scores; keep (anchor, class) pairs with
    ``score >= score_threshold``; take the top ``pre_nms_top_k`` pairs over all
    anchors x classes; decode and clip their boxes; per-class greedy NMS or
    Soft-NMS (see :func:`_select`), ``max_detections`` iterations.

    TPU takes the top-k *per class* (REFERENCE §4.5); we take one global
    top-k over all anchors x classes. The two agree whenever at most k pairs
    pass the score threshold; beyond that the lowest-scoring candidates are cut
    globally rather than per class, which rarely changes the final top
    ``max_detections`` for k = 5000. The top-k is taken on logits
    (sigmoid is monotone), so boxes are decoded for the k survivors only.
    Score thresholds are inclusive (TF uses ``score > threshold``; this only
    differs at exact equality).

    Returns a dict with ``boxes [B, D, 4]``, ``scores [B, D]``,
    ``classes [B, D] int32`` (1..K), ``valid [B, D] bool`` and
    ``num_detections [B] int32``, ``D = max_detections``, sorted by descending
    score; padding rows are zeros with ``valid=False``.
    """
    cls_logits = jnp.asarray(cls_logits, jnp.float32)
    box_deltas = jnp.asarray(box_deltas, jnp.float32)
    anchors = jnp.asarray(anchors, jnp.float32)
    _, num_anchors, num_classes = cls_logits.shape
    k = min(cfg.pre_nms_top_k, num_anchors * num_classes)
    height, width = image_size

    def one_image(logits, deltas):
        top_logits, flat_idx = jax.lax.top_k(logits.reshape(-1), k)
        anchor_idx = flat_idx // num_classes
        classes = (flat_idx % num_classes + 1).astype(jnp.int32)
        scores = jax.nn.sigmoid(top_logits)
        active = scores >= cfg.score_threshold
        boxes = decode_boxes(deltas[anchor_idx], anchors[anchor_idx])
        boxes = clip_boxes(boxes, height, width)
        return _select(boxes, scores, classes, active, cfg)

    boxes, scores, classes, valid = jax.vmap(one_image)(cls_logits, box_deltas)
    return {
        "boxes": boxes,
        "scores": scores,
        "classes": classes,
        "valid": valid,
        "num_detections": jnp.sum(valid, axis=1).astype(jnp.int32),
    }
