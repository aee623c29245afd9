"""SimCLR's two-view augmentation (Chen et al. 2020, "A Simple Framework for Contrastive
Learning of Visual Representations"), as pure JAX functions with static shapes.

`simclr_views(key, images_uint8)` turns a uint8 batch [B,H,W,3] into two independently
augmented float32 views, each normalized with `IMAGENET_MEAN` / `IMAGENET_STD` like the rest
of stlib. Per view and example, in SimCLR's order (`data_util.preprocess_for_train`):

  1. random resized crop (Appendix A): a box with area ~ U(crop_scale) of the image and aspect
     ratio (width / height) log-uniform in crop_ratio, at a uniformly random position, resized
     back to H x W bilinearly (half-pixel centres, clamped at the box edges, i.e. crop then
     resize). SimCLR resizes bicubically; bilinear is our choice (it cannot overshoot [0, 1]).
     `CROP_ATTEMPTS` candidate boxes are drawn and the first that fits is used; when none fits
     the whole image is used, as `tf.image.sample_distorted_bounding_box` does after its
     attempts run out (`distorted_bounding_box_crop`). The sampling is the one Appendix A
     describes (area uniform, as torchvision); TF's sampler that SimCLR's code calls draws the
     aspect ratio uniformly and the box height uniformly, and rejects boxes under 10% of the
     image (min_object_covered 0.1), a slightly different distribution.
  2. random horizontal flip, probability 1/2.
  3. colour distortion (Appendix A, `color_jitter`): with probability `color_prob` (0.8)
     brightness 0.8s, contrast 0.8s, saturation 0.8s and hue 0.2s for strength s, applied in a
     random order with a clip to [0, 1] after each; then, independently, grayscale with
     probability `gray_prob` (0.2).

No Gaussian blur: SimCLR's ImageNet recipe blurs (Appendix A: p = 0.5, sigma ~ U(0.1, 2.0),
kernel 10% of the image side), but its CIFAR-10 recipe (Appendix B.9; the repository README's
CIFAR-10 command passes --use_blur=False) leaves blur out for 32 px images, and stlib's object
images are as small. For the same reason `color_strength` defaults to 0.5, SimCLR's CIFAR-10
strength (README: --color_jitter_strength=0.5; ImageNet uses 1.0, `run.py`'s default).

The colour ops follow what SimCLR calls in TensorFlow: brightness multiplies by a factor
~ U(max(0, 1 - b), 1 + b) (SimCLR v2's `random_brightness`, the code's default); contrast is
`tf.image.adjust_contrast` ((x - mean) * f + mean, per-channel mean over the image); saturation
and hue go through HSV as `tf.image.adjust_saturation` / `adjust_hue` (s * f clipped to [0, 1];
h + delta mod 1); grayscale is `tf.image.rgb_to_grayscale` (weights 0.2989, 0.5870, 0.1140)
copied to the three channels.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from stlib.augment.flip_crop import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["CROP_ATTEMPTS", "GRAY_WEIGHTS", "color_jitter", "hsv_to_rgb", "random_resized_crop", "rgb_to_hsv",
           "simclr_views", "to_grayscale"]

# Our choice: torchvision's RandomResizedCrop draws 10 candidates (TF's sampler 100); with
# crop_scale (0.08, 1) and crop_ratio (3/4, 4/3) one candidate misses with p ~ 0.15, so ten miss
# together with p ~ 1e-8.
CROP_ATTEMPTS = 10
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0.8, 0.8, 0.8, 0.2  # Appendix A: color_jitter(s) factors


# ----------------------------------------------------------------------------- colour space

def rgb_to_hsv(rgb):
    """float [..., 3] RGB in [0, 1] -> HSV in [0, 1], as `tf.image.rgb_to_hsv` (grey: h = s = 0)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = jnp.max(rgb, axis=-1)
    rng = v - jnp.min(rgb, axis=-1)
    s = jnp.where(v > 0, rng / jnp.where(v > 0, v, 1.0), 0.0)
    safe = jnp.where(rng > 0, rng, 1.0)
    h = jnp.where(r == v, (g - b) / safe, jnp.where(g == v, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)) / 6.0
    h = jnp.where(rng > 0, h, 0.0)
    h = jnp.where(h < 0, h + 1.0, h)
    return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv):
    """Inverse of `rgb_to_hsv` (`tf.image.hsv_to_rgb`)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    dh = h * 6.0
    dr = jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0)
    dg = jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0)
    db = jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0)
    base = 1.0 - s
    return jnp.stack([(base + s * dr) * v, (base + s * dg) * v, (base + s * db) * v], axis=-1)


def to_grayscale(image):
    """float [H, W, 3] -> the luma copied to all three channels (SimCLR `to_grayscale`)."""
    gray = image @ jnp.asarray(GRAY_WEIGHTS, image.dtype)
    return jnp.repeat(gray[..., None], 3, axis=-1)


# ----------------------------------------------------------------------------- ops on one image
# Each op reads its randomness from a vector of U(0, 1) draws: one PRNG call per example keeps
# the compiled graph small (every threefry call site costs ~0.3 s of CPU compile time).

_CROP_DRAWS = 2 * CROP_ATTEMPTS + 2
_JITTER_DRAWS = 8


def random_resized_crop(key, image, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3)):
    """Random resized crop of one float image [H, W, C] back to [H, W, C] (module docstring, step 1).

    The box has integer size and position (as torchvision's); `crop_ratio` is relative to the
    image's own aspect ratio (SimCLR's `crop_and_resize` passes 3/4 * aspect .. 4/3 * aspect).
    """
    return _crop(jax.random.uniform(key, (_CROP_DRAWS,)), image, crop_scale, crop_ratio)


def _crop(u, image, crop_scale, crop_ratio):
    height, width = image.shape[0], image.shape[1]
    u_area, u_ratio = u[:CROP_ATTEMPTS], u[CROP_ATTEMPTS:2 * CROP_ATTEMPTS]
    area = height * width * (crop_scale[0] + (crop_scale[1] - crop_scale[0]) * u_area)
    lo, hi = math.log(crop_ratio[0]), math.log(crop_ratio[1])
    ratio = jnp.exp(lo + (hi - lo) * u_ratio) * (width / height)
    w = jnp.round(jnp.sqrt(area * ratio))
    h = jnp.round(jnp.sqrt(area / ratio))
    fits = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
    first = jnp.argmax(fits)
    found = jnp.any(fits)
    h = jnp.where(found, h[first], height)
    w = jnp.where(found, w[first], width)
    # Offsets uniform over the integer positions 0 .. side - box (0 for the full image).
    y0 = jnp.minimum(jnp.floor(u[-2] * (height - h + 1)), height - h)
    x0 = jnp.minimum(jnp.floor(u[-1] * (width - w + 1)), width - w)
    return _resize_box(image, y0, x0, h, w)


def _resize_box(image, y0, x0, h, w):
    """Bilinear resize of the box rows [y0, y0+h) x cols [x0, x0+w) to the image's own size,
    half-pixel centres, samples clamped to the box (crop first, then resize)."""
    def taps(start, box, out):
        src = start + (jnp.arange(out, dtype=jnp.float32) + 0.5) * (box / out) - 0.5
        src = jnp.clip(src, start, start + box - 1)
        lo = jnp.floor(src)
        hi = jnp.minimum(lo + 1, start + box - 1)
        return lo.astype(jnp.int32), hi.astype(jnp.int32), src - lo

    y_lo, y_hi, fy = taps(y0, h, image.shape[0])
    x_lo, x_hi, fx = taps(x0, w, image.shape[1])
    rows = image[y_lo] * (1.0 - fy)[:, None, None] + image[y_hi] * fy[:, None, None]
    return rows[:, x_lo] * (1.0 - fx)[None, :, None] + rows[:, x_hi] * fx[None, :, None]


def color_jitter(key, image, strength: float):
    """SimCLR `color_jitter_rand` on one float image in [0, 1]: brightness, contrast, saturation,
    hue with strength-scaled ranges, in a random order, clipped to [0, 1] after each."""
    return _jitter(jax.random.uniform(key, (_JITTER_DRAWS,)), image, strength)


def _jitter(u, image, strength):
    b, c, s, hue = _BRIGHTNESS * strength, _CONTRAST * strength, _SATURATION * strength, _HUE * strength

    def between(x, lo, hi):
        return lo + (hi - lo) * x

    f_b = between(u[0], max(0.0, 1.0 - b), 1.0 + b)
    f_c = between(u[1], 1.0 - c, 1.0 + c)
    f_s = between(u[2], max(0.0, 1.0 - s), 1.0 + s)
    d_h = between(u[3], -hue, hue)
    order = jnp.argsort(u[4:8])  # a uniformly random permutation of the four ops

    def brightness(x):
        return x * f_b

    def contrast(x):
        mean = jnp.mean(x, axis=(0, 1), keepdims=True)
        return (x - mean) * f_c + mean

    def hsv_op(x, op):
        # Saturation (op 2) and hue (op 3) share one trip through HSV.
        hsv = rgb_to_hsv(x)
        sat = jnp.where(op == 2, jnp.clip(hsv[..., 1] * f_s, 0.0, 1.0), hsv[..., 1])
        h = jnp.where(op == 3, jnp.mod(hsv[..., 0] + d_h, 1.0), hsv[..., 0])
        return hsv_to_rgb(jnp.stack([h, sat, hsv[..., 2]], axis=-1))

    def step(i, x):
        op = order[i]
        x = jax.lax.switch(jnp.minimum(op, 2), (brightness, contrast, lambda y: hsv_op(y, op)), x)
        return jnp.clip(x, 0.0, 1.0)

    return jax.lax.fori_loop(0, 4, step, image)  # a loop, not unrolled: one compiled body


def _one_view(u, image_uint8, crop_scale, crop_ratio, hflip, color_strength, color_prob, gray_prob):
    """One view of one example from its U(0, 1) draws u [_VIEW_DRAWS]; SimCLR's order
    (`preprocess_for_train`): crop, flip, colour jitter, grayscale, clip; then normalize."""
    u_crop, u_jitter = u[:_CROP_DRAWS], u[_CROP_DRAWS:_CROP_DRAWS + _JITTER_DRAWS]
    u_flip, u_color_on, u_gray_on = u[-3], u[-2], u[-1]
    x = image_uint8.astype(jnp.float32) / 255.0
    x = _crop(u_crop, x, crop_scale, crop_ratio)
    if hflip:
        x = jnp.where(u_flip < 0.5, x[:, ::-1], x)
    if color_prob > 0 and color_strength > 0:
        x = jnp.where(u_color_on < color_prob, _jitter(u_jitter, x, color_strength), x)
    if gray_prob > 0:
        x = jnp.where(u_gray_on < gray_prob, to_grayscale(x), x)
    x = jnp.clip(x, 0.0, 1.0)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


_VIEW_DRAWS = _CROP_DRAWS + _JITTER_DRAWS + 3


# ----------------------------------------------------------------------------- the batch

def _check_range(name, pair, lo, hi):
    if len(pair) != 2 or not (lo < pair[0] <= pair[1] <= hi):
        raise ValueError(f"simclr_views: {name} must be (min, max) with {lo} < min <= max <= {hi}, got {pair!r}")


def simclr_views(key, images_uint8, *, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip: bool = True,
                 color_strength: float = 0.5, color_prob: float = 0.8, gray_prob: float = 0.2):
    """Two SimCLR views of a batch: uint8 [B,H,W,3] -> (view1, view2), normalized float32 [B,H,W,3].

    Jit-able (options static). Example i of view v (0 or 1) draws all its randomness from the key
    `fold_in(fold_in(key, v), i)`, so an example's views do not depend on the batch size or on
    the other examples, and the same key gives the same views.

    Args:
      key: PRNG key.
      images_uint8: uint8 [B, H, W, 3] (B, H, W static).
      crop_scale: (min, max) area fraction of the crop; Appendix A: (0.08, 1.0). (1, 1) turns
        cropping off.
      crop_ratio: (min, max) aspect ratio, log-uniform; Appendix A: (3/4, 4/3).
      hflip: random horizontal flips.
      color_strength: s of `color_jitter`; 0.5 as SimCLR's CIFAR-10 command (README), 1.0 for ImageNet.
      color_prob: probability of the colour jitter (Appendix A: 0.8); 0 turns it off.
      gray_prob: probability of grayscale (Appendix A: 0.2); 0 turns it off.
    """
    if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
        raise ValueError(f"simclr_views: want images_uint8 [B,H,W,3], got shape {images_uint8.shape}")
    if images_uint8.dtype != jnp.uint8:
        raise ValueError(f"simclr_views: want images_uint8 of dtype uint8, got {images_uint8.dtype}")
    _check_range("crop_scale", tuple(crop_scale), 0.0, 1.0)
    _check_range("crop_ratio", tuple(crop_ratio), 0.0, math.inf)
    if color_strength < 0:
        raise ValueError(f"simclr_views: color_strength must be >= 0, got {color_strength}")
    for name, p in (("color_prob", color_prob), ("gray_prob", gray_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"simclr_views: {name} must lie in [0, 1], got {p}")
    crop_scale, crop_ratio = tuple(map(float, crop_scale)), tuple(map(float, crop_ratio))
    batch = images_uint8.shape[0]
    # Both views in one vmap over 2B (view, example) pairs: one compiled body.
    view = jnp.repeat(jnp.arange(2), batch)
    index = jnp.tile(jnp.arange(batch), 2)
    draws = jax.vmap(lambda v, i: jax.random.uniform(
        jax.random.fold_in(jax.random.fold_in(key, v), i), (_VIEW_DRAWS,)))(view, index)
    out = jax.vmap(lambda u, im: _one_view(u, im, crop_scale, crop_ratio, hflip, color_strength, color_prob,
                                           gray_prob))(draws, jnp.concatenate([images_uint8, images_uint8]))
    return out[:batch], out[batch:]
