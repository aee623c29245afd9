"""Box utilities: areas, pairwise IoU, the Faster R-CNN box coder and clipping.

Conventions: boxes are ``[ymin, xmin, ymax, xmax]`` in absolute pixels, float32,
in continuous coordinates (height = ymax - ymin, no "+1"). Every function is
pure ``jnp`` with static shapes, so it can be jitted and vmapped; leading batch
dimensions broadcast.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

# REFERENCE §4.2 (box decode at inference): dh/dw are clipped at log(1000/16).
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)

# Smallest height/width used inside log() when encoding, so degenerate boxes
# give a large negative (finite) target instead of -inf.
_MIN_SIZE = 1e-6


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
    """Area of ``[..., 4]`` boxes -> ``[...]``; inverted boxes have area 0."""
    h = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    w = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return h * w


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """IoU of every box in ``a [..., N, 4]`` with every box in ``b [..., M, 4]``.

    Returns ``[..., N, M]``. Pairs whose union is 0 (e.g. two zero-area boxes)
    get IoU 0, never NaN.
    """
    a = a[..., :, None, :]
    b = b[..., None, :, :]
    inter_h = jnp.maximum(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0.0)
    inter_w = jnp.maximum(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = inter_h * inter_w
    union = box_area(a) + box_area(b) - inter
    positive = union > 0.0
    return jnp.where(positive, inter / jnp.where(positive, union, 1.0), 0.0)


def _centre_size(boxes: jnp.ndarray):
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    yc = boxes[..., 0] + 0.5 * h
    xc = boxes[..., 1] + 0.5 * w
    return yc, xc, h, w


def encode_boxes(boxes: jnp.ndarray, anchors: jnp.ndarray) -> jnp.ndarray:
    """Encode ``boxes [..., 4]`` relative to ``anchors [..., 4]`` -> ``[..., 4]``.

    Faster R-CNN coder without scale factors (REFERENCE §4.2):
    ``ty = (yc - yca) / ha, tx = (xc - xca) / wa, th = log(h / ha),
    tw = log(w / wa)`` with ``h = ymax - ymin`` (no "+1"). Heights/widths are
    clamped at a tiny epsilon so degenerate boxes never produce ``log(0)``.
    Output order is ``[ty, tx, th, tw]``.
    """
    yc, xc, h, w = _centre_size(boxes)
    yca, xca, ha, wa = _centre_size(anchors)
    h = jnp.maximum(h, _MIN_SIZE)
    w = jnp.maximum(w, _MIN_SIZE)
    ty = (yc - yca) / ha
    tx = (xc - xca) / wa
    th = jnp.log(h / ha)
    tw = jnp.log(w / wa)
    return jnp.stack([ty, tx, th, tw], axis=-1)


def decode_boxes(deltas: jnp.ndarray, anchors: jnp.ndarray) -> jnp.ndarray:
    """Inverse of :func:`encode_boxes`: ``[ty, tx, th, tw]`` deltas -> boxes.

    ``th``/``tw`` are clipped from above at ``log(1000/16)`` (REFERENCE §4.2),
    as in TPU ``box_utils.decode_boxes``.

    The TPU decoder uses a "+1" pixel convention for anchor and output sizes
    (anchor ``ha = ymax - ymin + 1``, output ``ymax = ymin + h - 1``); we do not
    copy it.
    Encoding (TPU and here) uses no "+1", so using the same convention when
    decoding makes ``decode(encode(b, a), a) == b`` exact; the "+1" only shifts
    boxes by about one pixel, which matters only for integer-pixel boxes.
    """
    yca, xca, ha, wa = _centre_size(anchors)
    ty, tx, th, tw = (deltas[..., i] for i in range(4))
    th = jnp.minimum(th, BBOX_XFORM_CLIP)
    tw = jnp.minimum(tw, BBOX_XFORM_CLIP)
    yc = ty * ha + yca
    xc = tx * wa + xca
    h = jnp.exp(th) * ha
    w = jnp.exp(tw) * wa
    return jnp.stack([yc - 0.5 * h, xc - 0.5 * w, yc + 0.5 * h, xc + 0.5 * w], axis=-1)


def clip_boxes(boxes: jnp.ndarray, height, width) -> jnp.ndarray:
    """Clip ``[..., 4]`` boxes to the image ``[0, height] x [0, width]``.

    ``height``/``width`` may be Python numbers or arrays broadcastable to the
    leading dimensions of ``boxes``. In the continuous (no "+1") convention the
    image extent is ``[0, size]``; TPU clips to ``size - 1`` because it uses
    the "+1" pixel convention (REFERENCE §4.5).
    """
    height = jnp.asarray(height, boxes.dtype)
    width = jnp.asarray(width, boxes.dtype)
    ymin = jnp.clip(boxes[..., 0], 0.0, height)
    xmin = jnp.clip(boxes[..., 1], 0.0, width)
    ymax = jnp.clip(boxes[..., 2], 0.0, height)
    xmax = jnp.clip(boxes[..., 3], 0.0, width)
    return jnp.stack([ymin, xmin, ymax, xmax], axis=-1)
