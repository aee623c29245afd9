"""Pixel-only ops of the AutoAugment detection policies and RandAugment, as pure JAX functions.

Semantics follow REFERENCE §1.6 (TF TPU `models/official/detection/utils/autoaugment_utils.py`);
arguments are the already-converted values of REFERENCE §1.7 (threshold, bits, factor, ...).
Every op is `op(image, region, arg)` (Cutout: `cutout(key, image, region, pad_size)`):

  image   uint8 [H, W, 3], one example, static shape
  region  int32 [4] = (y0, x0, y1, x1), half-open; the op treats it as "the whole image":
          statistics use its pixels only, pixels outside it are returned unchanged; an empty
          region is a no-op
  arg     float32 scalar, may be traced (jit / vmap); integer arguments (Posterize bits,
          Solarize threshold, SolarizeAdd addition, Cutout pad) are truncated like `int()`

Bit exactness vs TF (checked against TF 2.21 on CPU in tests/augment/test_color_ops.py).
XLA contracts `a * b + c` into a fused multiply-add, while TF's Mul/AddV2 ops round after
each step, so products that feed a sum are computed exactly by splitting the float factor in
two 12-bit halves (`_mul_rn`): `hi*d + lo*d` is then the correctly rounded `f*d` whether or
not the add is fused. Conversely TF's CPU `depthwise_conv2d` *does* accumulate with FMA, which
Sharpness reproduces with an exact integer emulation (`_sharpness_degenerate`). XLA's GPU float
division is not correctly rounded, so no op divides floats at run time (tables built in NumPy or
integer arithmetic instead). Outputs were checked identical on CPU and on an H200 GPU.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

REPLACE_VALUE = 128  # REFERENCE §1.1: fill value of Cutout and the geometric ops

_F32 = jnp.float32
_I32 = jnp.int32
_CH = np.arange(3)

# tf.image.rgb_to_grayscale on uint8: convert_image_dtype (v * float32(1/255)), dot with these
# weights summed left to right without FMA, then convert back (* 255.5, truncate). The per-channel
# products are tabulated in NumPy so that no float multiply can be fused into the sum.
_GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)
_GRAY_TERMS = (np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0))[:, None] * _GRAY_WEIGHTS

# TPU autocontrast scale 255.0 / (hi - lo) for hi - lo = 0..255 (entry 0 unused), divided in NumPy
# because XLA's GPU float division is not correctly rounded (255/255 gave 0.99999994 on an H200).
_AUTOCONTRAST_SCALE = np.float32(255.0) / np.maximum(np.arange(256), 1).astype(np.float32)

# Sharpness kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 in float32 (TPU `sharpness`); every weight is
# an integer multiple of 2^-27, stored as that integer split into (high << 14) + low.
_SHARP_W = (np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13.0)).astype(np.float32)
_SHARP_Q = (_SHARP_W.astype(np.float64) * 2.0 ** 27).astype(np.int64)
assert np.all(_SHARP_Q == _SHARP_W.astype(np.float64) * 2.0 ** 27)
_FRAC_BITS = 27
_FRAC_ONE = 1 << _FRAC_BITS


# ----------------------------------------------------------------------------- helpers

def region_mask(shape, region):
    """bool [H, W]: True inside the half-open rectangle `region` = (y0, x0, y1, x1)."""
    ys = jnp.arange(shape[0])[:, None]
    xs = jnp.arange(shape[1])[None, :]
    return (ys >= region[0]) & (ys < region[2]) & (xs >= region[1]) & (xs < region[3])


def _paste(image, region, out):
    """`out` inside the region, `image` elsewhere."""
    return jnp.where(region_mask(image.shape, region)[..., None], out, image)


def _lut(image, region, lut):
    """Applies a per-channel lookup table lut [3, 256] (or [256]) inside the region."""
    lut = jnp.broadcast_to(jnp.asarray(lut), (3, 256))
    out = lut[_CH, image.astype(_I32)].astype(jnp.uint8)
    return _paste(image, region, out)


def _mul_rn(f, d):
    """float32 f * d correctly rounded (as TF's Mul), for integers |d| < 2^12, even if XLA fuses
    the result into a following add: each half-product is exact, so only the sum rounds."""
    f = jnp.asarray(f, _F32)
    hi = jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(f, jnp.uint32) & jnp.uint32(0xFFFFF000), _F32)
    return hi * d + (f - hi) * d


def _channel_histogram(image, region):
    """int32 [3, 256]: per-channel counts of the region's pixel values."""
    w = region_mask(image.shape, region).astype(_I32)
    idx = image.astype(_I32)
    return jnp.zeros((3, 256), _I32).at[_CH, idx].add(jnp.broadcast_to(w[..., None], idx.shape))


def blend(img1, img2, factor):
    """TPU `blend`: img1 + factor * (img2 - img1) in float32, truncated to uint8; clipped to
    [0, 255] only when factor is outside (0, 1); factor 0 -> img1, 1 -> img2 exactly."""
    factor = jnp.asarray(factor, _F32)
    a = img1.astype(_F32)
    temp = a + _mul_rn(factor, img2.astype(_F32) - a)
    inside = (factor > 0.0) & (factor < 1.0)
    # For 0 < factor < 1 the TPU casts without clipping; temp lies in [0, 255] there anyway.
    out = jnp.where(inside, temp, jnp.clip(temp, 0.0, 255.0)).astype(jnp.uint8)
    return jnp.where(factor == 0.0, img1, jnp.where(factor == 1.0, img2, out))


def rgb_to_grayscale(image):
    """uint8 [..., 3] -> uint8 [...], bit-identical to `tf.image.rgb_to_grayscale`."""
    terms = jnp.asarray(_GRAY_TERMS)
    idx = image.astype(_I32)
    gray = (terms[idx[..., 0], 0] + terms[idx[..., 1], 1]) + terms[idx[..., 2], 2]
    return (gray * 255.5).astype(jnp.uint8)  # convert_image_dtype: scale by max + 0.5, truncate


def fill_rect(image, rect, value=REPLACE_VALUE):
    """Sets every channel of the half-open rectangle rect int32 [4] = (y0, x0, y1, x1) to `value`."""
    return jnp.where(region_mask(image.shape, rect)[..., None], jnp.asarray(value, image.dtype), image)


# ----------------------------------------------------------------------------- LUT ops

def autocontrast(image, region, arg=None):
    """Per channel: stretch the region's [min, max] to [0, 255] (truncate); unchanged if max == min."""
    m = region_mask(image.shape, region)[..., None]
    lo = jnp.min(jnp.where(m, image, 255), axis=(0, 1)).astype(_I32)  # [3]
    hi = jnp.max(jnp.where(m, image, 0), axis=(0, 1)).astype(_I32)
    ok = hi > lo
    scale = jnp.asarray(_AUTOCONTRAST_SCALE)[jnp.clip(hi - lo, 0, 255)]
    offset = -_mul_rn(scale, lo.astype(_F32))
    v = jnp.arange(256, dtype=_F32)
    lut = jnp.clip(_mul_rn(scale[:, None], v) + offset[:, None], 0.0, 255.0).astype(_I32)
    return _lut(image, region, jnp.where(ok[:, None], lut, jnp.arange(256)))


def equalize(image, region, arg=None):
    """PIL-style per-channel histogram equalization over the region (TPU `equalize`)."""
    histo = _channel_histogram(image, region)  # [3, 256]
    # Last nonzero bin (0 if the histogram is empty).
    last_idx = 255 - jnp.argmax(histo[:, ::-1] > 0, axis=1)
    last = jnp.take_along_axis(histo, last_idx[:, None], axis=1)[:, 0]
    step = (jnp.sum(histo, axis=1) - last) // 255
    safe = jnp.maximum(step, 1)[:, None]
    lut = (jnp.cumsum(histo, axis=1) + safe // 2) // safe
    lut = jnp.clip(jnp.concatenate([jnp.zeros((3, 1), _I32), lut[:, :-1]], axis=1), 0, 255)
    return _lut(image, region, jnp.where((step == 0)[:, None], jnp.arange(256), lut))


def posterize(image, region, bits):
    """Keeps the top `bits` bits: (v >> s) << s with s = 8 - bits.

    TF's uint8 bitwise shifts clamp the shift amount to [0, 7] (checked on TF 2.21:
    right_shift(uint8 200, 8) == 1), so bits = 0 (levels 0-2) behaves like bits = 1:
    v -> 128 if v >= 128 else 0, not all-zero. Replicated here.
    """
    shift = jnp.clip(8 - jnp.asarray(bits, _F32).astype(_I32), 0, 7)
    v = jnp.arange(256, dtype=_I32)
    return _lut(image, region, (v >> shift) << shift)


def solarize(image, region, threshold):
    """v < threshold kept, else 255 - v (threshold 256 = identity)."""
    t = jnp.asarray(threshold, _F32).astype(_I32)
    v = jnp.arange(256, dtype=_I32)
    return _lut(image, region, jnp.where(v < t, v, 255 - v))


def solarize_add(image, region, addition):
    """v < 128: clip(v + addition, 0, 255); else unchanged (threshold 128, TPU default)."""
    a = jnp.asarray(addition, _F32).astype(_I32)
    v = jnp.arange(256, dtype=_I32)
    return _lut(image, region, jnp.where(v < 128, jnp.clip(v + a, 0, 255), v))


def invert(image, region, arg=None):
    """255 - v (RandAugment op)."""
    return _lut(image, region, 255 - jnp.arange(256, dtype=_I32))


# ----------------------------------------------------------------------------- blend ops

def color(image, region, factor):
    """blend(grayscale -> RGB, image, factor), grayscale as `tf.image.rgb_to_grayscale`."""
    gray = jnp.broadcast_to(rgb_to_grayscale(image)[..., None], image.shape)
    return _paste(image, region, blend(gray, image, factor))


def contrast(image, region, factor):
    """blend(degenerate, image, factor) with the TPU's degenerate, replicated as is.

    TPU quirk: the "mean" is sum(256-bin histogram of the grayscale image) / 256, i.e. the
    region's pixel count / 256 (clipped to [0, 255], truncated), NOT the mean intensity; it
    saturates at 255 for regions of >= 65,280 pixels (REFERENCE §1.6).
    """
    n = jnp.sum(region_mask(image.shape, region).astype(_I32))
    mean = jnp.minimum(n >> 8, 255).astype(jnp.uint8)  # == uint8(clip(float32(n) / 256, 0, 255))
    return _paste(image, region, blend(jnp.full_like(image, mean), image, factor))


def brightness(image, region, factor):
    """blend(black, image, factor)."""
    return _paste(image, region, blend(jnp.zeros_like(image), image, factor))


def _round_f32(ip, fp):
    """Rounds the non-negative value ip + fp * 2^-27 (fp in [0, 2^27)) to float32 (nearest, ties
    to even), returned in the same (integer part, fraction) form."""
    e = jnp.where(ip > 0, 31 - jax.lax.clz(ip), 31 - jax.lax.clz(fp) - _FRAC_BITS)  # floor(log2)
    k = jnp.clip(e + 4, 0, _FRAC_BITS)  # log2 of the float32 ulp (2^(e-23)) in units of 2^-27
    q = fp >> k
    rem = fp - (q << k)
    half = (1 << k) >> 1
    up = (k > 0) & ((rem > half) | ((rem == half) & ((q & 1) == 1)))
    fp = (q + up.astype(_I32)) << k
    return ip + (fp >> _FRAC_BITS), fp & (_FRAC_ONE - 1)


def _sharpness_degenerate(image):
    """trunc(clip(depthwise_conv(image, _SHARP_W), 0, 255)) centred on every pixel (edges wrap;
    callers keep only interior pixels), bit-identical to TF's CPU kernel, which accumulates the 9
    taps row-major with fused multiply-adds: acc = fma(x, w, acc). Exact fixed point emulation:
    every value is ip + fp * 2^-27 with int32 parts, rounded to float32 after each tap."""
    x = image.astype(_I32)
    ip = jnp.zeros_like(x)
    fp = jnp.zeros_like(x)
    for i in range(3):
        for j in range(3):
            xs = jnp.roll(x, (1 - i, 1 - j), axis=(0, 1))  # xs[y, x] = image[y - 1 + i, x - 1 + j]
            w_hi, w_lo = int(_SHARP_Q[i, j]) >> 14, int(_SHARP_Q[i, j]) & 0x3FFF
            a = xs * w_hi  # x * w * 2^27 = a * 2^14 + xs * w_lo, all parts < 2^23
            fp = fp + ((a & 0x1FFF) << 14) + xs * w_lo
            ip = ip + (a >> 13) + (fp >> _FRAC_BITS)
            ip, fp = _round_f32(ip, fp & (_FRAC_ONE - 1))
    return jnp.clip(ip, 0, 255).astype(jnp.uint8)


def sharpness(image, region, factor):
    """blend(smoothed, image, factor); smoothed = 3x3 [[1,1,1],[1,5,1],[1,1,1]]/13 VALID conv over
    the region, the region's 1-px border keeping the original pixels (TPU `sharpness`)."""
    interior = jnp.asarray(region) + jnp.array([1, 1, -1, -1], _I32)
    degenerate = _paste(image, interior, _sharpness_degenerate(image))
    return _paste(image, region, blend(degenerate, image, factor))


# ----------------------------------------------------------------------------- cutout

def cutout(key, image, region, pad_size):
    """Fills a (2*pad_size)^2 square, clipped to the region, with 128; centre uniform over the
    region's pixels (TPU `cutout` with the region as the image). pad_size 0 is a no-op."""
    y0, x0, y1, x1 = (region[i] for i in range(4))
    pad = jnp.asarray(pad_size, _F32).astype(_I32)
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (), y0, jnp.maximum(y1, y0 + 1))
    cx = jax.random.randint(kx, (), x0, jnp.maximum(x1, x0 + 1))
    rect = jnp.stack([jnp.maximum(y0, cy - pad), jnp.maximum(x0, cx - pad),
                      jnp.minimum(y1, cy + pad), jnp.minimum(x1, cx + pad)])
    return fill_rect(image, rect, REPLACE_VALUE)


COLOR_OPS = {
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Posterize": posterize,
    "Solarize": solarize,
    "SolarizeAdd": solarize_add,
    "Invert": invert,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
}
