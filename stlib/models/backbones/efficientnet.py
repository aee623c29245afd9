"""EfficientNet B0-B7 and L2 (Tan & Le 2019; L2 from Noisy Student, Xie et al. 2020) as a
detection backbone: stem + MBConv blocks, returning the C2-C5 endpoints.

Facts from REFERENCE §5 (TPU `efficientnet_builder.py` / `efficientnet_model.py`):
- base (B0) block table §5.1, scaled by `round_filters` (width) and `round_repeats` (depth);
- BN momentum 0.99, epsilon 1e-3; swish everywhere, sigmoid SE gate; SE width from the
  block's *input* filters; convs without bias except the SE convs; SAME padding;
- drop-connect only on identity-skip blocks, rate 0.2*k/N over the expanded block list;
- endpoints §5.4: C2/C3 = last block of stages 2/3, C4 = last of stage 5, C5 = last of stage 7.

The 1x1 "top" conv (1280 channels, scaled) is *not* part of this module: it lives in the
classifier head (`stlib.models.classifier.ClassificationHead(conv_channels=...)`), so a
detector holding this backbone has no unused head parameters.

Submodule names mirror `keras.applications.EfficientNetB*` (`stem_conv`, `block2b`,
`block2b/expand_conv`, ...), which keeps the weight mapping in
`stlib.models.weight_import.efficientnet` a rename plus transposes. Flax's "SAME" padding
is TF's (extra row/column at the bottom/right), so converted TF/Keras weights give the
same outputs at any input size.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from stlib.models.depthwise import DepthwiseConv
from stlib.models.convolution import Conv

# REFERENCE §5.1: (repeats, kernel, stride, expand ratio, in filters, out filters) per stage 1..7.
BASE_BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
SE_RATIO = 0.25
DEPTH_DIVISOR = 8
# Pyramid level -> stage whose last block gives the endpoint (REFERENCE §5.4).
ENDPOINT_STAGES = {2: 2, 3: 3, 4: 5, 5: 7}

# REFERENCE §5.3: (width, depth, classifier dropout).
COEFFICIENTS = {
    "b0": (1.0, 1.0, 0.2),
    "b1": (1.0, 1.1, 0.2),
    "b2": (1.1, 1.2, 0.3),
    "b3": (1.2, 1.4, 0.3),
    "b4": (1.4, 1.8, 0.4),
    "b5": (1.6, 2.2, 0.4),
    "b6": (1.8, 2.6, 0.5),
    "b7": (2.0, 3.1, 0.5),
    "l2": (4.3, 5.3, 0.5),
    # Our choice, not from the papers: a ~10-block, 8-80 channel network for fast CPU tests.
    "tiny": (0.25, 0.34, 0.2),
}
# Training/eval resolution per variant (REFERENCE §5.3).
RESOLUTION = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600, "l2": 800}


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR) -> int:
    """Channel count scaled by `width`, rounded to a multiple of `divisor` (REFERENCE §5.2)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:  # never round down by more than 10%
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Number of blocks in a stage scaled by `depth` (ceil, REFERENCE §5.2)."""
    return int(math.ceil(depth * repeats))


def normalize_variant(variant: str) -> str:
    """'b0', 'B0', 'efficientnet-b0', 'efficientnet_b0' -> 'b0'; raises ValueError if unknown."""
    v = variant.lower()
    for prefix in ("efficientnet-", "efficientnet_", "efficientnet"):
        if v.startswith(prefix):
            v = v[len(prefix):]
            break
    if v not in COEFFICIENTS:
        raise ValueError(f"unknown EfficientNet variant {variant!r} (known: {', '.join(COEFFICIENTS)})")
    return v


def _letters(j: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'aa' (only reached beyond L2's 22 blocks per stage)."""
    s = ""
    j += 1
    while j > 0:
        j, r = divmod(j - 1, 26)
        s = chr(ord("a") + r) + s
    return s


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block of the fully expanded list."""
    name: str            # keras-style, e.g. "block2b"
    stage: int           # 1..7
    index: int           # 0-based position within its stage
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    expand: int          # expand ratio (1 for stage 1)
    drop_rate: float     # drop-connect rate (0 where there is no identity skip)

    @property
    def mid_ch(self) -> int:
        return self.in_ch * self.expand

    @property
    def se_ch(self) -> int:
        return max(1, int(self.in_ch * SE_RATIO))

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


def block_specs(width: float, depth: float, drop_connect_rate: float = 0.2) -> list[BlockSpec]:
    """The expanded block list; block k of N gets drop rate drop_connect_rate*k/N if it has a skip."""
    raw = []
    for stage, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(BASE_BLOCKS, start=1):
        c_in, c_out = round_filters(c_in, width), round_filters(c_out, width)
        for j in range(round_repeats(repeats, depth)):
            raw.append((stage, j, c_in if j == 0 else c_out, c_out, kernel, stride if j == 0 else 1, expand))
    n = len(raw)
    specs = []
    for k, (stage, j, c_in, c_out, kernel, stride, expand) in enumerate(raw):
        skip = stride == 1 and c_in == c_out
        specs.append(BlockSpec(f"block{stage}{_letters(j)}", stage, j, c_in, c_out, kernel, stride, expand,
                               drop_connect_rate * k / n if skip else 0.0))
    return specs


def drop_connect(x: jnp.ndarray, rate: float, key: jax.Array) -> jnp.ndarray:
    """Stochastic depth: zeroes whole examples with probability `rate`, scales the rest by 1/(1-rate)."""
    if rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


# Conv init N(0, sqrt(2/fan_out)) with fan_out = kh*kw*out_filters (REFERENCE §5.2). TF's depthwise
# kernels are [kh,kw,C,1], i.e. fan_out = kh*kw; flax's are [kh,kw,1,C], where kh*kw is the fan_in.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
DEPTHWISE_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation (REFERENCE §5.2 "MBConv")."""
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    expand: int
    drop_rate: float = 0.0
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(Conv, padding="SAME", use_bias=False, dtype=self.dtype, kernel_init=CONV_INIT)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=self.dtype)
        mid = self.in_ch * self.expand
        inputs = x
        if self.expand != 1:
            x = nn.swish(norm(name="expand_bn")(conv(mid, (1, 1), name="expand_conv")(x)))
        x = DepthwiseConv(self.kernel, self.stride, dtype=self.dtype, kernel_init=DEPTHWISE_INIT, name="dwconv")(x)
        x = nn.swish(norm(name="bn")(x))
        # Squeeze-excitation; width from the block input filters (REFERENCE §5.2 "SE width").
        se = jnp.mean(x, axis=(1, 2), keepdims=True)
        se = Conv(max(1, int(self.in_ch * SE_RATIO)), (1, 1), dtype=self.dtype, kernel_init=CONV_INIT,
                     name="se_reduce")(se)
        se = Conv(mid, (1, 1), dtype=self.dtype, kernel_init=CONV_INIT, name="se_expand")(nn.swish(se))
        x = x * nn.sigmoid(se)
        x = norm(name="project_bn")(conv(self.out_ch, (1, 1), name="project_conv")(x))
        if self.stride == 1 and self.in_ch == self.out_ch:
            if train and self.drop_rate > 0.0:
                x = drop_connect(x, self.drop_rate, self.make_rng("dropout"))
            x = x + inputs
        return x


class EfficientNet(nn.Module):
    """EfficientNet stem + MBConv blocks; `__call__` returns {2: C2, 3: C3, 4: C4, 5: C5}
    (strides 4, 8, 16, 32). `dropout_rate` is the classifier's and only kept as metadata.
    With train=True and drop_connect_rate > 0 pass `rngs={"dropout": key}`."""
    width: float
    depth: float
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    dtype: Any = jnp.float32
    stem_filters: int = 32
    head_filters: int = 1280

    @property
    def stem_channels(self) -> int:
        return round_filters(self.stem_filters, self.width)

    @property
    def head_channels(self) -> int:
        """Channels of the (classifier-side) top conv: round_filters(head_filters, width)."""
        return round_filters(self.head_filters, self.width)

    def specs(self) -> list[BlockSpec]:
        return block_specs(self.width, self.depth, self.drop_connect_rate)

    def endpoint_channels(self) -> dict[int, int]:
        last = {s.stage: s.out_ch for s in self.specs()}
        return {level: last[stage] for level, stage in ENDPOINT_STAGES.items()}

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.astype(self.dtype)
        x = Conv(self.stem_channels, (3, 3), (2, 2), padding="SAME", use_bias=False, dtype=self.dtype,
                    kernel_init=CONV_INIT, name="stem_conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                         dtype=self.dtype, name="stem_bn")(x)
        x = nn.swish(x)
        specs = self.specs()
        last_of_stage = {s.stage: s.name for s in specs}
        wanted = {last_of_stage[stage]: level for level, stage in ENDPOINT_STAGES.items()}
        feats = {}
        for s in specs:
            x = MBConv(s.in_ch, s.out_ch, s.kernel, s.stride, s.expand, s.drop_rate, self.bn_momentum,
                       self.bn_epsilon, self.dtype, name=s.name)(x, train)
            if s.name in wanted:
                feats[wanted[s.name]] = x
        return {level: feats[level] for level in sorted(feats)}


def _variant(name: str):
    width, depth, dropout = COEFFICIENTS[name]
    return functools.partial(EfficientNet, width=width, depth=depth, dropout_rate=dropout)


efficientnet_b0 = _variant("b0")
efficientnet_b1 = _variant("b1")
efficientnet_b2 = _variant("b2")
efficientnet_b3 = _variant("b3")
efficientnet_b4 = _variant("b4")
efficientnet_b5 = _variant("b5")
efficientnet_b6 = _variant("b6")
efficientnet_b7 = _variant("b7")
efficientnet_l2 = _variant("l2")
# Our choice (no paper model): width 0.25, depth 0.34 -> 10 blocks, 8-80 channels, for fast tests.
efficientnet_tiny = _variant("tiny")

VARIANTS = {"b0": efficientnet_b0, "b1": efficientnet_b1, "b2": efficientnet_b2, "b3": efficientnet_b3,
            "b4": efficientnet_b4, "b5": efficientnet_b5, "b6": efficientnet_b6, "b7": efficientnet_b7,
            "l2": efficientnet_l2, "tiny": efficientnet_tiny}
