"""Geometric ops of AutoAugment / RandAugment: one nearest-neighbour affine warp inside a region.

Every op acts on a *region* of the canvas, an int32 half-open rectangle (y0, x0, y1, x1)
that the op treats as "the image": the content rectangle of a padded canvas for the
whole-image `*_BBox` ops, or one box crop for the `*_Only_BBoxes` ops (REFERENCE §1.1).
Pixels outside the region never change; pixels of the region whose source falls outside
it get the fill value 128 (REFERENCE §1.1) and, in the mask, the ignore label 255.

Coordinates are continuous (a pixel (i, j) covers [i, i+1) x [j, j+1)), relative to the
region's top-left corner, the same frame as the boxes. An op is a forward affine map
`A` (2x3, acting on (y, x, 1)) from source to output; an output pixel centre p samples
the source pixel containing A^-1(p) (nearest neighbour, as TF contrib `transform`), and
box corners go through A, their axis-aligned hull being the new box (REFERENCE §1.6).

The maps, all with the TPU sign conventions (REFERENCE §1.6):
  rotate(deg)      rotation by `deg` degrees about the region centre
  shear_x(s)       x' = x - s*y   (TF projective transform [1, s, 0, 0, 1, 0, 0, 0])
  shear_y(s)       y' = y - s*x   ([1, 0, 0, s, 1, 0, 0, 0])
  translate_x(p)   x' = x - p     (content shifted by -p, TF translate [-p, 0])
  translate_y(p)   y' = y - p
  flip_x()         x' = W - x     (Flip_Only_BBoxes: left-right flip of the box content)
"""
from __future__ import annotations

import jax.numpy as jnp

from stlib.augment.flip_crop import IGNORE_LABEL, finalize_boxes

FILL_VALUE = 128  # REFERENCE §1.1: replace value of every geometric op and Cutout


# ----------------------------------------------------------------------------
# Forward maps (2x3, region-relative (y, x)); `hw` is the region's (height, width)
# ----------------------------------------------------------------------------


def rotate(deg, hw):
    t = jnp.deg2rad(deg)
    c, s = jnp.cos(t), jnp.sin(t)
    cy, cx = hw[0] / 2.0, hw[1] / 2.0
    # p' = R (p - c) + c, counter-clockwise on screen (y grows downwards).
    return jnp.array([[c, -s, cy - c * cy + s * cx],
                      [s, c, cx - s * cy - c * cx]], jnp.float32)


def shear_x(s, hw):
    return jnp.array([[1.0, 0.0, 0.0], [-s, 1.0, 0.0]], jnp.float32)


def shear_y(s, hw):
    return jnp.array([[1.0, -s, 0.0], [0.0, 1.0, 0.0]], jnp.float32)


def translate_x(p, hw):
    return jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, -p]], jnp.float32)


def translate_y(p, hw):
    return jnp.array([[1.0, 0.0, -p], [0.0, 1.0, 0.0]], jnp.float32)


def flip_x(_, hw):
    return jnp.array([[1.0, 0.0, 0.0], [0.0, -1.0, hw[1]]], jnp.float32)


MAPS = {"Rotate": rotate, "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
        "TranslateY": translate_y, "Flip": flip_x}


def invert_affine(a):
    """Inverse of a 2x3 affine map (analytic; the linear part is never singular here)."""
    m = a[:, :2]
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    inv = jnp.array([[m[1, 1], -m[0, 1]], [-m[1, 0], m[0, 0]]]) / det
    return jnp.concatenate([inv, -(inv @ a[:, 2])[:, None]], axis=1)


# ----------------------------------------------------------------------------
# Regions
# ----------------------------------------------------------------------------


def content_region(example):
    """The whole-image region: the content rectangle of the padded canvas."""
    hw = example["image_hw"].astype(jnp.int32)
    return jnp.array([0, 0, hw[0], hw[1]], jnp.int32)


def box_region(box, hw):
    """The crop a `*_Only_BBoxes` op works on (TPU `_apply_bbox_augmentation`).

    TPU: min = int(size * box_min), max = min(int(size * box_max), size - 1), crop
    [min, max] inclusive; here boxes are already in pixels.
    """
    hw = hw.astype(jnp.int32)
    y0 = jnp.floor(box[0]).astype(jnp.int32)
    x0 = jnp.floor(box[1]).astype(jnp.int32)
    y1 = jnp.minimum(jnp.floor(box[2]).astype(jnp.int32), hw[0] - 1) + 1
    x1 = jnp.minimum(jnp.floor(box[3]).astype(jnp.int32), hw[1] - 1) + 1
    return jnp.stack([y0, x0, y1, x1])


def region_mask(region, shape):
    ys = jnp.arange(shape[0])[:, None]
    xs = jnp.arange(shape[1])[None, :]
    return (ys >= region[0]) & (ys < region[2]) & (xs >= region[1]) & (xs < region[3])


# ----------------------------------------------------------------------------
# The warp
# ----------------------------------------------------------------------------


def warp_region(example, region, forward, move_labels: bool):
    """Warps the pixels of `region` by the forward map `forward` (2x3, region-relative).

    Args:
      example: dict with `image` uint8 [S, S, 3], `boxes` [M, 4], `valid` [M], optional `mask` [S, S].
      region: int32 [4] half-open rectangle treated as the image.
      forward: float32 [2, 3] source -> output map in region coordinates.
      move_labels: True for whole-image ops (boxes and mask follow the pixels); False for
        per-box ops, which change pixels only (the TPU keeps boxes as they are, and so do
        we with the mask).
    Returns:
      The example with the warped image (and boxes/valid/mask when `move_labels`).
    """
    image = example["image"]
    size = image.shape[:2]
    rh = (region[2] - region[0]).astype(jnp.float32)
    rw = (region[3] - region[1]).astype(jnp.float32)
    inv = invert_affine(forward)
    ys = (jnp.arange(size[0]) - region[0]).astype(jnp.float32)[:, None] + 0.5
    xs = (jnp.arange(size[1]) - region[1]).astype(jnp.float32)[None, :] + 0.5
    src_y = jnp.floor(inv[0, 0] * ys + inv[0, 1] * xs + inv[0, 2])
    src_x = jnp.floor(inv[1, 0] * ys + inv[1, 1] * xs + inv[1, 2])
    inside = (src_y >= 0) & (src_y < rh) & (src_x >= 0) & (src_x < rw)
    gy = jnp.clip(src_y.astype(jnp.int32) + region[0], 0, size[0] - 1)
    gx = jnp.clip(src_x.astype(jnp.int32) + region[1], 0, size[1] - 1)
    in_region = region_mask(region, size)
    warped = jnp.where(inside[..., None], image[gy, gx], jnp.asarray(FILL_VALUE, image.dtype))
    out = dict(example)
    out["image"] = jnp.where(in_region[..., None], warped, image)
    if not move_labels:
        return out
    if "mask" in example:
        m = jnp.where(inside, example["mask"][gy, gx], jnp.asarray(IGNORE_LABEL, example["mask"].dtype))
        out["mask"] = jnp.where(in_region, m, example["mask"])
    out["boxes"], out["valid"] = transform_boxes(example["boxes"], example["valid"], region, forward)
    return out


def transform_boxes(boxes, valid, region, forward):
    """New boxes: the axis-aligned hull of the part of each mapped box that stays in the region.

    The TPU takes the hull of the four mapped corners and then clips it (REFERENCE §1.6);
    that matches ours while a box stays inside the image, but when a rotated or sheared box
    crosses the border the clipped hull is larger than what is left of the object. Here the
    mapped box (a parallelogram) is intersected with the region first, so the box stays
    tight. Boxes that leave the region or shrink below 1 px are dropped (valid=False).
    """
    origin = jnp.stack([region[0], region[1]]).astype(jnp.float32)
    size = jnp.stack([region[2] - region[0], region[3] - region[1]]).astype(jnp.float32)
    b = boxes - jnp.concatenate([origin, origin])
    corners = jnp.stack([b[:, [0, 1]], b[:, [0, 3]], b[:, [2, 3]], b[:, [2, 1]]], axis=1)  # [M, 4, 2], cyclic
    poly = corners @ forward[:, :2].T + forward[:, 2]
    lo, hi, nonempty = _clipped_hull(poly, size)
    new, keep = finalize_boxes(jnp.concatenate([lo, hi], axis=-1), valid & nonempty, size[0], size[1])
    new = jnp.where(keep[:, None], new + jnp.concatenate([origin, origin]), 0.0)
    return new, keep


def _clipped_hull(poly, size, eps=1e-4):
    """Bounding box of (convex polygon [M, 4, 2]) intersected with [0, H] x [0, W].

    The extreme points of the intersection are among: polygon vertices inside the
    rectangle, rectangle corners inside the polygon, and crossings of polygon edges with
    the rectangle's sides.
    """
    h, w = size[0], size[1]
    nxt = jnp.roll(poly, -1, axis=1)

    def inside_rect(p):
        return ((p[..., 0] >= -eps) & (p[..., 0] <= h + eps) & (p[..., 1] >= -eps) & (p[..., 1] <= w + eps))

    cands = [poly]
    ok = [inside_rect(poly)]
    # Rectangle corners inside the polygon: on one side of every edge (either orientation).
    rect = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]) * size
    e = nxt - poly                                                         # [M, 4, 2]
    d = rect[None, :, None, :] - poly[:, None, :, :]                       # [M, 4 corners, 4 edges, 2]
    cross = e[:, None, :, 0] * d[..., 1] - e[:, None, :, 1] * d[..., 0]
    in_poly = (cross >= -eps).all(-1) | (cross <= eps).all(-1)
    cands.append(jnp.broadcast_to(rect, poly.shape))
    ok.append(in_poly)
    # Edge crossings with the lines y = 0, y = H (axis 0) and x = 0, x = W (axis 1).
    for axis, c in ((0, 0.0), (0, h), (1, 0.0), (1, w)):
        denom = e[..., axis]
        safe = jnp.where(jnp.abs(denom) > 1e-9, denom, 1.0)
        t = (c - poly[..., axis]) / safe
        p = poly + t[..., None] * e
        cands.append(p)
        ok.append((jnp.abs(denom) > 1e-9) & (t >= 0) & (t <= 1) & inside_rect(p))
    pts = jnp.concatenate(cands, axis=1)
    ok = jnp.concatenate(ok, axis=1)
    big = jnp.float32(1e9)
    lo = jnp.where(ok[..., None], pts, big).min(axis=1)
    hi = jnp.where(ok[..., None], pts, -big).max(axis=1)
    nonempty = ok.any(axis=1)
    return jnp.where(nonempty[:, None], lo, 0.0), jnp.where(nonempty[:, None], hi, 0.0), nonempty
