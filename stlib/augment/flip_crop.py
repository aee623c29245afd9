"""Augment-S1 (FlipCrop): horizontal flip + scale jitter + crop/pad, as pure JAX functions.

Table 1: "horizontal flip + scale jitter (0.8, 1.2) of the target size, then crop".
Semantics of the scale jitter and crop follow REFERENCE §3.2 (TPU `resize_and_crop_image`):
one scale s ~ U(scale_min, scale_max) per image, the content is resized by s (its long
side already equals the output size), a random window of the output size is cropped
from it (offset = int(max_offset * U) per dim) and smaller results are padded
bottom/right with the mean colour (0 after normalization).

Inputs are batch dicts with static shapes:
  image    uint8 [B, S, S, 3]  content in the top-left `image_hw` rectangle, zeros around
  image_hw int32 [B, 2]         content height, width
  boxes    float32 [B, M, 4]    yxyx pixels on the canvas; classes int32 [B, M]; valid bool [B, M]
  mask     uint8 [B, S, S]      optional semantic mask, 255 = ignore (pad)
Outputs keep every key and shape; `image` becomes normalized float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# numpy, not jax arrays: a jax array made on import would start the XLA backend before a
# multi-process job could join (`jax.distributed.initialize` must come first)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # REFERENCE §3.1 normalization
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IGNORE_LABEL = 255
MIN_BOX_SIDE = 1.0  # our choice: boxes thinner than 1 px after cropping are dropped, not kept as slivers


def content_mask(hw, size):
    ys = jnp.arange(size)[:, None]
    xs = jnp.arange(size)[None, :]
    return (ys < hw[0]) & (xs < hw[1])


def normalize_image(image, hw):
    """uint8 [S,S,3] -> float32 normalized, pad region (outside `hw`) set to 0 (the mean colour)."""
    x = (image.astype(jnp.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return jnp.where(content_mask(hw, image.shape[0])[..., None], x, 0.0)


def hflip(example):
    """Flips the content rectangle left-right (pixels, boxes and mask)."""
    w = example["image_hw"][1]
    size = example["image"].shape[1]
    xs = jnp.arange(size)
    src = jnp.where(xs < w, w - 1 - xs, xs)
    out = dict(example)
    out["image"] = example["image"][:, src]
    if "mask" in example:
        out["mask"] = example["mask"][:, src]
    b = example["boxes"]
    out["boxes"] = jnp.stack([b[..., 0], w - b[..., 3], b[..., 2], w - b[..., 1]], axis=-1)
    return out


def finalize_boxes(boxes, valid, height, width):
    """Clips boxes to [0, height] x [0, width]; drops (valid=False) empty or sliver boxes, zeroes them."""
    y0 = jnp.clip(boxes[..., 0], 0, height)
    x0 = jnp.clip(boxes[..., 1], 0, width)
    y1 = jnp.clip(boxes[..., 2], 0, height)
    x1 = jnp.clip(boxes[..., 3], 0, width)
    out = jnp.stack([y0, x0, y1, x1], axis=-1)
    keep = valid & ((y1 - y0) >= MIN_BOX_SIDE) & ((x1 - x0) >= MIN_BOX_SIDE)
    return jnp.where(keep[..., None], out, 0.0), keep


def scale_jitter_crop(key, example, scale_min: float, scale_max: float):
    """Resizes the (already normalized) content by s ~ U(min, max), then crops/pads to the canvas."""
    size = example["image"].shape[0]
    k_scale, k_y, k_x = jax.random.split(key, 3)
    s = jax.random.uniform(k_scale, (), minval=scale_min, maxval=scale_max)
    hw = example["image_hw"].astype(jnp.float32)
    new_hw = jnp.round(hw * s)
    max_off = jnp.maximum(new_hw - size, 0.0)
    off = jnp.floor(max_off * jnp.stack([jax.random.uniform(k_y), jax.random.uniform(k_x)]))
    out = dict(example)
    out["image"] = jax.image.scale_and_translate(
        example["image"], (size, size, example["image"].shape[-1]), (0, 1),
        scale=jnp.stack([s, s]), translation=-off, method="linear", antialias=False)
    # Zero whatever lies beyond the scaled content (bilinear taps can reach the pad region).
    out["image"] = jnp.where(content_mask(new_hw - off, size)[..., None], out["image"], 0.0)
    if "mask" in example:
        centers = (jnp.arange(size) + 0.5)
        src_y = jnp.floor((centers + off[0]) / s).astype(jnp.int32)
        src_x = jnp.floor((centers + off[1]) / s).astype(jnp.int32)
        inside = ((src_y < example["image_hw"][0])[:, None] & (src_x < example["image_hw"][1])[None, :])
        m = example["mask"][jnp.clip(src_y, 0, size - 1)][:, jnp.clip(src_x, 0, size - 1)]
        out["mask"] = jnp.where(inside, m, IGNORE_LABEL).astype(example["mask"].dtype)
    boxes = example["boxes"] * s - jnp.concatenate([off, off])
    extent = jnp.minimum(new_hw - off, size)
    out["boxes"], out["valid"] = finalize_boxes(boxes, example["valid"], extent[0], extent[1])
    out["image_hw"] = extent.astype(jnp.int32)
    return out


def augment_s1(key, example, scale_min: float = 0.8, scale_max: float = 1.2, flip: bool = True):
    """Augment-S1 on one example (vmap over a batch). Image must be uint8 (normalized here)."""
    k_flip, k_jitter = jax.random.split(key)
    if flip:
        flipped = hflip(example)
        do = jax.random.bernoulli(k_flip, 0.5)
        example = jax.tree.map(lambda a, b: jnp.where(do, a, b), flipped, example)
    example = dict(example)
    example["image"] = normalize_image(example["image"], example["image_hw"])
    return scale_jitter_crop(k_jitter, example, scale_min, scale_max)
