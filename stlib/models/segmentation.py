"""Semantic segmentation model of the self-training project (REFERENCE §7.3).

backbone (C3-C5) -> neck (NAS-FPN P3-P7) -> `SegmentationHead`: pyramid fusion of every
level to stride 2^level (default 4) by TF1 legacy bilinear resizing, then 3 x
[3x3 conv -> BN -> act] and a 1x1 conv to the classes. Its loss is `stlib.losses.segmentation_loss` (softmax cross-entropy
on labels resized to the logit size, ignore label 255); mIoU (`stlib.eval.miou`) is
computed after bilinearly upsampling the logits to the label size.

Resizing follows TF1 `resize_bilinear(align_corners=False, half_pixel_centers=False)`,
the "legacy" mapping src = dst * in / out (top-left anchored), not the half-pixel mapping
of `jax.image.resize`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from stlib.models.activations import activation_fn
from stlib.models.convolution import Conv


# ----------------------------------------------------------------------------- resizing

def _legacy_axis_weights(in_size: int, out_size: int):
    """Per-output-index (lower, upper, lerp) for TF1's legacy (non-half-pixel) mapping.

    As TF's `compute_interpolation_weights` with `LegacyScaler`, in float32:
    scale = in / out, src = dst * scale, lower = floor(src), upper = min(ceil(src), in - 1),
    lerp = src - floor(src). Shapes are static, so this is plain numpy at trace time.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(src)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    lerp = (src - floor).astype(np.float32)
    return lower, upper, lerp


def legacy_resize_bilinear(x, size: Sequence[int]):
    """Bilinear resize of NHWC `x` to `size` = (h, w), matching TF1
    `tf.compat.v1.image.resize_bilinear(x, size, align_corners=False, half_pixel_centers=False)`.

    Output pixel (i, j) samples the input at (i * H/h, j * W/w) -- the legacy top-left
    anchored mapping, *without* the half-pixel offset that `jax.image.resize` (and TF2
    `tf.image.resize`) use. For each axis the two neighbours floor(src) and
    min(ceil(src), in-1) are gathered and blended in TF's order: first along x
    (top = tl + (tr - tl) * dx, bottom likewise), then along y (top + (bottom - top) * dy).
    Computed in float32 (as TPU casts before resizing); the result is float32. At an exact
    integer upsampling factor f this gives out[f*i] = in[i] and linear ramps in between,
    with the last f-1 rows/cols clamped to the last input row/col.
    """
    h, w = int(size[0]), int(size[1])
    x = x.astype(jnp.float32)
    y0, y1, dy = _legacy_axis_weights(x.shape[1], h)
    x0, x1, dx = _legacy_axis_weights(x.shape[2], w)
    top, bottom = x[:, y0], x[:, y1]
    dx = jnp.asarray(dx)[None, None, :, None]
    dy = jnp.asarray(dy)[None, :, None, None]
    top = top[:, :, x0] + (top[:, :, x1] - top[:, :, x0]) * dx
    bottom = bottom[:, :, x0] + (bottom[:, :, x1] - bottom[:, :, x0]) * dx
    return top + (bottom - top) * dy


def legacy_resize_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index per output index for TF1 legacy nearest-neighbour resizing:
    min(floor(dst * in / out), in - 1) (float32 arithmetic, no half-pixel offset)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def pyramid_feature_fusion(feats: dict, target_level: int, target_hw=None):
    """TPU `nn_ops.pyramid_feature_fusion`: every level in `feats` is brought to the
    resolution of `target_level` and the results are summed.

    A level l > target is bilinearly upsampled (legacy mapping, float32, cast back to the
    input dtype) to its own size times 2^(l - target), i.e. by an exact integer factor as
    in TPU; a level l < target (not used by the paper's config) is resized straight to the
    target size. With odd image sizes these per-level sizes can exceed the target size by
    a few pixels; they are cropped at the bottom/right (consistent with the top-left
    anchored mapping). The target size is the size of `feats[target_level]` when present,
    else the smallest of the per-level sizes (= 2^(min_level - target) x the finest level).
    """
    levels = sorted(int(k) for k in feats)
    natural = {}
    for l in levels:
        hw = feats[l].shape[1:3]
        if l >= target_level:
            natural[l] = (hw[0] * 2 ** (l - target_level), hw[1] * 2 ** (l - target_level))
        else:
            natural[l] = (-(-hw[0] // 2 ** (target_level - l)), -(-hw[1] // 2 ** (target_level - l)))
    if target_hw is None:
        target_hw = natural[target_level] if target_level in feats else (
            min(v[0] for v in natural.values()), min(v[1] for v in natural.values()))
    th, tw = int(target_hw[0]), int(target_hw[1])
    total = None
    for l in levels:
        x = feats[l]
        if l != target_level:
            size = natural[l] if l > target_level else (th, tw)
            x = legacy_resize_bilinear(x, size).astype(feats[l].dtype)
        x = x[:, :th, :tw]
        if x.shape[1:3] != (th, tw):
            raise ValueError(f"level {l} resized to {x.shape[1:3]} cannot cover the target size {(th, tw)}")
        total = x if total is None else total + x
    return total


# ----------------------------------------------------------------------------- model

class SegmentationHead(nn.Module):
    """TPU `heads.SegmentationHead` with pyramid fusion (REFERENCE §7.3).

    `(feats {level: NHWC}, train) -> float32 logits [B, h_level, w_level, num_classes]`.
    With `use_pyramid_fusion` all levels are fused at `level` (`pyramid_feature_fusion`);
    otherwise `feats[level]` is used. Then `num_convs` x [3x3 conv (`channels`, bias,
    kernel N(0, 0.01)) -> BN -> act] -> 1x1 conv to `num_classes` (bias, kernel N(0, 0.01)).
    TPU sizes the convs by the input channel count; `channels` defaults to the same 256.
    """
    num_classes: int
    num_convs: int = 3
    channels: int = 256
    level: int = 2
    use_pyramid_fusion: bool = True
    activation: str = "relu"
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: dict, train: bool, target_hw=None):
        act = activation_fn(self.activation)
        if self.use_pyramid_fusion:
            x = pyramid_feature_fusion(feats, self.level, target_hw)
        else:
            x = feats[self.level]
        x = x.astype(self.dtype)
        init = nn.initializers.normal(0.01)
        for i in range(self.num_convs):
            x = Conv(self.channels, (3, 3), padding="SAME", kernel_init=init, dtype=self.dtype,
                        name=f"conv_{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, name=f"bn_{i}")(x)
            x = act(x)
        x = Conv(self.num_classes, (1, 1), kernel_init=init, dtype=self.dtype, name="classifier")(x)
        return x.astype(jnp.float32)


class Segmenter(nn.Module):
    """backbone -> neck -> head; returns float32 logits [B, ceil(H/2^l), ceil(W/2^l), num_classes]
    with l the head's `level` (stride 4 by default).

    `backbone`, `neck` and `head` are module factories (e.g. `functools.partial`) called as
    `backbone(name="backbone")(images, train=train) -> {level: NHWC}`,
    `neck(name="neck")(feats, train=train) -> {level: NHWC}` and
    `head(num_classes=num_classes, name="head")(pyramid, train=train)`.
    """
    backbone: Callable[..., nn.Module]
    neck: Callable[..., nn.Module]
    head: Callable[..., nn.Module]
    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, train: bool = False):
        feats = self.backbone(name="backbone")(images.astype(self.dtype), train=train)
        pyramid = self.neck(name="neck")(feats, train=train)
        head = self.head(num_classes=self.num_classes, name="head")
        level = getattr(head, "level", None)
        kwargs = {}
        if level is not None and getattr(head, "use_pyramid_fusion", False) and level not in pyramid:
            # Fused level-l map of an H x W image: ceil(H / 2^l) x ceil(W / 2^l).
            kwargs["target_hw"] = (-(-images.shape[1] // 2 ** level), -(-images.shape[2] // 2 ** level))
        logits = head(pyramid, train=train, **kwargs)
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"head returned {logits.shape[-1]} classes, expected {self.num_classes}")
        return logits


# ----------------------------------------------------------------------------- loss / metrics

def resize_labels_to(labels, hw):
    """Resizes integer label maps [B, H, W] (or [B, H, W, 1]) to `hw` by picking label
    pixel (floor(i*H/h), floor(j*W/w)) -- TF1 legacy nearest-neighbour indexing.

    TPU resizes the labels to the logit size with TF1 `resize_images` (legacy, no half-pixel
    offset; the method is BILINEAR in some versions, NEAREST_NEIGHBOR in others). At the
    paper's exact ratio (512 -> 128, factor 4) the bilinear source position i*4 is an
    integer, so both interpolation weights of the second neighbour are 0 and bilinear
    returns exactly label pixel (4i, 4j) -- the same pick. Picking also never blends class
    ids (a blend of, e.g., 255 and 3 is not a class), so it is the sane rule at other ratios.
    """
    if labels.ndim == 4:
        labels = labels[..., 0]
    ys = legacy_resize_nearest_indices(labels.shape[1], int(hw[0]))
    xs = legacy_resize_nearest_indices(labels.shape[2], int(hw[1]))
    return labels[:, ys][:, :, xs]


def segmentation_upsample_logits(logits, size: Sequence[int]):
    """Bilinearly upsamples logits [B, h, w, C] to the label size (H, W) for evaluation,
    as TPU `metric_fn` does with `resize_bilinear(align_corners=False)` (legacy mapping)."""
    return legacy_resize_bilinear(logits, size)
