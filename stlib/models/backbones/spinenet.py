"""SpineNet (Du et al. 2020): scale-permuted backbone producing P3-P7 directly.

Facts from REFERENCE §6 (TPU `modeling/architecture/spinenet.py`, `nn_blocks.py`, `nn_ops.py`):
stem 7x7/2 conv of 64 + BN + act, 3x3/2 SAME max-pool, two level-2 bottleneck block groups;
then the 15 scale-permuted rows of `BLOCK_SPECS` (§6.1, TPU version), each merging two
earlier features after cross-scale resampling (§6.4); finally a 1x1 conv + BN + act per
output level (§6.5). RetinaNet uses the endpoints as they are (no FPN).

Choices of ours (not dictated by the sources):
- Conv kernels use He init `variance_scaling(2.0, "fan_out", "normal")`, as in `resnet.py`
  (TPU uses `tf.variance_scaling_initializer()`, i.e. scale 1, fan_in, truncated normal).
- The height of a target level is ceil(H / 2^L), computed independently of the width (TPU
  derives it from the width ratio; identical for square inputs). Downsampling decisions
  (stride-2 conv, extra max-pool, its size and stride) follow the TPU rule on the width.
- Non-integer nearest resizes use the TF1 `resize_nearest_neighbor` convention
  (align_corners=False, half_pixel_centers=False): source index floor(i * in / out).
- The last BN of each block starts with scale 1 (TPU `nn_blocks` does not zero-init it).
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from stlib.models.activations import activation_fn
from stlib.models.convolution import Conv


class BlockSpec(NamedTuple):
    level: int
    block_fn: str          # "bottleneck" | "residual"
    input_offsets: tuple   # indices into the feature list (0, 1 = stem blocks)
    is_output: bool


# REFERENCE §6.1 (TPU `SPINENET_BLOCK_SPECS`; TFM's extra 16th level-2 row is not used).
BLOCK_SPECS = (
    BlockSpec(2, "bottleneck", (0, 1), False),
    BlockSpec(4, "residual", (0, 1), False),
    BlockSpec(3, "bottleneck", (2, 3), False),
    BlockSpec(4, "bottleneck", (2, 4), False),
    BlockSpec(6, "residual", (3, 5), False),
    BlockSpec(4, "bottleneck", (3, 5), False),
    BlockSpec(5, "residual", (6, 7), False),
    BlockSpec(7, "residual", (6, 8), False),
    BlockSpec(5, "bottleneck", (8, 9), False),
    BlockSpec(5, "bottleneck", (8, 10), False),
    BlockSpec(4, "bottleneck", (5, 10), True),
    BlockSpec(3, "bottleneck", (4, 10), True),
    BlockSpec(5, "bottleneck", (7, 12), True),
    BlockSpec(7, "bottleneck", (5, 14), True),
    BlockSpec(6, "bottleneck", (12, 14), True),
)

# REFERENCE §6.2: base filters per level.
FILTER_SIZE_MAP = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}

# Detector settings that go with each SpineNet size.
RETINANET_SETTINGS = {
    # input: REFERENCE §6.6; head 4x128: §4.3 (49S num_filters 128); anchor_size 3.0: §4.1
    "49s": dict(input=640, head_convs=4, head_channels=128, anchor_size=3.0),
    # input: §6.6; head 4x256: §4.3 defaults; anchor_size 3.0: §4.1 (49 override)
    "49": dict(input=640, head_convs=4, head_channels=256, anchor_size=3.0),
    # input: §6.6; head 4x256: §4.3 defaults; anchor_size 3.0: §4.1 (96 override)
    "96": dict(input=1024, head_convs=4, head_channels=256, anchor_size=3.0),
    # input: §6.6; head 4x256: §4.3 defaults; anchor_size 4.0: §4.1 (143 keeps the default)
    "143": dict(input=1280, head_convs=4, head_channels=256, anchor_size=4.0),
    # input: §6.6; head 7x512: §4.3 (SpineNet-190 override); anchor_size 4.0: §4.1
    "190": dict(input=1280, head_convs=7, head_channels=512, anchor_size=4.0),
}



def _fixed_pad(x, k: int):
    """Symmetric spatial padding that depends only on the kernel size (TPU `fixed_padding`)."""
    beg = (k - 1) // 2
    end = (k - 1) - beg
    return jnp.pad(x, ((0, 0), (beg, end), (beg, end), (0, 0)))


def _resize_nearest(x, size):
    """Nearest resize to `size` = (h, w); TF1 convention: src = floor(dst * in / out)."""
    h, w = x.shape[1:3]
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if th % h == 0 and tw % w == 0 and th // h == tw // w:
        s = th // h
        return jnp.repeat(jnp.repeat(x, s, axis=1), s, axis=2)
    rows = [min(i * h // th, h - 1) for i in range(th)]
    cols = [min(j * w // tw, w - 1) for j in range(tw)]
    return x[:, jnp.asarray(rows)][:, :, jnp.asarray(cols)]


def _drop_connect(module: nn.Module, x, rate, train: bool):
    """Stochastic depth: drop the residual branch per example, scale survivors by 1/(1-rate)."""
    if not train or not rate:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


def _conv(x, features: int, k: int, stride: int, dtype, name: str):
    """Bias-free conv: strided ones pad (k-1)//2 before / the rest after, then VALID; else SAME."""
    padding = "SAME"
    if stride > 1:
        x = _fixed_pad(x, k)
        padding = "VALID"
    return Conv(features, (k, k), (stride, stride), padding=padding, use_bias=False,
                   kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                   dtype=dtype, name=name)(x)


class _Block(nn.Module):
    """Fields and parts shared by SpineNet's two block kinds (REFERENCE §6.3)."""
    filters: int
    strides: int = 1
    use_projection: bool = False
    drop_connect_rate: float | None = None
    activation: str = "swish"
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-4
    dtype: Any = jnp.float32
    expansion: int = 1

    def _parts(self, x, train: bool):
        """(act, norm, shortcut): the projection shortcut is 1x1 conv + BN to expansion * filters."""
        act = activation_fn(self.activation)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=self.dtype)
        shortcut = x
        if self.use_projection:
            shortcut = _conv(x, self.expansion * self.filters, 1, self.strides, self.dtype, "proj_conv")
            shortcut = norm(name="proj_bn")(shortcut)
        return act, norm, shortcut


class BottleneckBlock(_Block):
    """1x1(f) BN act -> 3x3(f) BN act -> 1x1(4f) BN -> drop-connect -> + shortcut -> act."""
    expansion: int = 4

    @nn.compact
    def __call__(self, x, train: bool):
        act, norm, shortcut = self._parts(x, train)
        y = act(norm(name="bn1")(_conv(x, self.filters, 1, 1, self.dtype, "conv1")))
        y = act(norm(name="bn2")(_conv(y, self.filters, 3, self.strides, self.dtype, "conv2")))
        y = norm(name="bn3")(_conv(y, 4 * self.filters, 1, 1, self.dtype, "conv3"))
        y = _drop_connect(self, y, self.drop_connect_rate, train)
        return act(y + shortcut)


class ResidualBlock(_Block):
    """3x3(f) BN act -> 3x3(f) BN -> drop-connect -> + shortcut -> act."""

    @nn.compact
    def __call__(self, x, train: bool):
        act, norm, shortcut = self._parts(x, train)
        y = act(norm(name="bn1")(_conv(x, self.filters, 3, self.strides, self.dtype, "conv1")))
        y = norm(name="bn2")(_conv(y, self.filters, 3, 1, self.dtype, "conv2"))
        y = _drop_connect(self, y, self.drop_connect_rate, train)
        return act(y + shortcut)


_BLOCKS = {"bottleneck": (BottleneckBlock, 4), "residual": (ResidualBlock, 1)}


class Resample(nn.Module):
    """REFERENCE §6.4 `resample_with_alpha`: reduce -> down/up-sample -> expand (BN, no act)."""
    parent_block_fn: str
    target_size: tuple          # (h, w) of the target level
    target_channels: int        # already multiplied by 4 for a bottleneck target
    alpha: float
    activation: str = "swish"
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        act = activation_fn(self.activation)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=self.dtype)
        width, channels = x.shape[2], x.shape[3]
        th, tw = self.target_size
        if self.parent_block_fn == "bottleneck":
            channels = channels / 4
        reduced = int(channels * self.alpha)
        x = act(norm(name="reduce_bn")(_conv(x, reduced, 1, 1, self.dtype, "reduce_conv")))
        if width > tw:
            x = act(norm(name="down_bn")(_conv(x, reduced, 3, 2, self.dtype, "down_conv")))
            if width // tw > 2:
                stride = 2 if width % tw != 0 else width // tw // 2
                pool = 3 if width / tw <= 4 else 5
                x = nn.max_pool(x, (pool, pool), strides=(stride, stride), padding="SAME")
        # Nearest resize: integer-factor upsampling, or fixing a leftover size mismatch.
        x = _resize_nearest(x, (th, tw))
        return norm(name="expand_bn")(_conv(x, self.target_channels, 1, 1, self.dtype, "expand_conv"))


class SpineNet(nn.Module):
    """SpineNet; `__call__` returns {3: P3, ..., 7: P7}, each with `endpoints_num_filters` channels."""
    endpoints_num_filters: int
    filter_size_scale: float
    resample_alpha: float
    block_repeats: int
    init_drop_connect_rate: float | None
    min_level: int = 3
    max_level: int = 7
    activation: str = "swish"
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-4
    dtype: Any = jnp.float32

    def _block_group(self, x, block_fn: str, filters: int, rate, name: str, train: bool):
        """First block projects when channels differ (stride is always 1 here); the rest are identity."""
        cls, expansion = _BLOCKS[block_fn]
        common = dict(activation=self.activation, bn_momentum=self.bn_momentum,
                      bn_epsilon=self.bn_epsilon, dtype=self.dtype, drop_connect_rate=rate)
        use_projection = x.shape[-1] != filters * expansion
        for i in range(self.block_repeats):
            x = cls(filters, 1, use_projection and i == 0, name=f"{name}_{i}", **common)(x, train)
        return x

    @nn.compact
    def __call__(self, x, train: bool):
        act = activation_fn(self.activation)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=self.dtype)
        in_h, in_w = x.shape[1:3]
        x = x.astype(self.dtype)

        # Stem (REFERENCE §6.3): filters of the stem conv are not scaled.
        x = act(norm(name="stem_bn")(_conv(x, 64, 7, 2, self.dtype, "stem_conv")))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        feats, block_fns = [], []
        for g in range(2):
            x = self._block_group(x, "bottleneck", int(FILTER_SIZE_MAP[2] * self.filter_size_scale), None,
                                  f"stem_block{g + 1}", train)
            feats.append(x)
            block_fns.append("bottleneck")
        consumers = [0] * len(feats)

        # Scale-permuted rows (REFERENCE §6.1, §6.4).
        outputs = {}
        n_rows = len(BLOCK_SPECS)
        for row, spec in enumerate(BLOCK_SPECS):
            target_size = (math.ceil(in_h / 2 ** spec.level), math.ceil(in_w / 2 ** spec.level))
            filters = int(FILTER_SIZE_MAP[spec.level] * self.filter_size_scale)
            target_channels = filters * _BLOCKS[spec.block_fn][1]
            merged = 0
            for k, parent in enumerate(spec.input_offsets):
                merged = merged + Resample(
                    block_fns[parent], target_size, target_channels, self.resample_alpha,
                    activation=self.activation, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                    dtype=self.dtype, name=f"resample{row}_{k}")(feats[parent], train)
                consumers[parent] += 1
            if spec.is_output:
                # Features nobody consumed, with the target's size and channels, join the output row.
                for j, f in enumerate(feats):
                    if consumers[j] == 0 and f.shape[1:3] == target_size and f.shape[3] == merged.shape[3]:
                        merged = merged + f
                        consumers[j] += 1
            rate = None
            if self.init_drop_connect_rate is not None and 0 < self.init_drop_connect_rate < 1:
                rate = self.init_drop_connect_rate * (row + 1) / n_rows
            y = self._block_group(act(merged), spec.block_fn, filters, rate, f"block{row}", train)
            feats.append(y)
            block_fns.append(spec.block_fn)
            consumers.append(0)
            if spec.is_output:
                if spec.level in outputs:
                    raise ValueError(f"duplicate output level {spec.level}")
                outputs[spec.level] = y

        # Endpoints (REFERENCE §6.5).
        endpoints = {}
        for level in range(self.min_level, self.max_level + 1):
            if level not in outputs:
                raise ValueError(f"SpineNet has no output at level {level}")
            y = _conv(outputs[level], self.endpoints_num_filters, 1, 1, self.dtype, f"endpoint_conv_{level}")
            endpoints[level] = act(norm(name=f"endpoint_bn_{level}")(y))
        return endpoints


# REFERENCE §6.2 scaling table; drop-connect rates from §6.3 (49/96/190: 0.2, 143: 0.16).
spinenet_49s = functools.partial(SpineNet, endpoints_num_filters=128, filter_size_scale=0.65,
                                 resample_alpha=0.5, block_repeats=1, init_drop_connect_rate=0.2)
spinenet_49 = functools.partial(SpineNet, endpoints_num_filters=256, filter_size_scale=1.0,
                                resample_alpha=0.5, block_repeats=1, init_drop_connect_rate=0.2)
spinenet_96 = functools.partial(SpineNet, endpoints_num_filters=256, filter_size_scale=1.0,
                                resample_alpha=0.5, block_repeats=2, init_drop_connect_rate=0.2)
spinenet_143 = functools.partial(SpineNet, endpoints_num_filters=256, filter_size_scale=1.0,
                                 resample_alpha=1.0, block_repeats=3, init_drop_connect_rate=0.16)
spinenet_190 = functools.partial(SpineNet, endpoints_num_filters=512, filter_size_scale=1.3,
                                 resample_alpha=1.0, block_repeats=4, init_drop_connect_rate=0.2)
# Small variant for fast tests and the smoke scale (our choice; the paper has none):
# filters 16/32/64 at L2/L3/L4-L7, 32-channel endpoints, alpha 0.5, one block per group.
spinenet_tiny = functools.partial(SpineNet, endpoints_num_filters=32, filter_size_scale=0.25,
                                  resample_alpha=0.5, block_repeats=1, init_drop_connect_rate=0.2)
