"""NAS-FPN (Ghiasi et al. 2019) neck producing P3-P7, as used by the TPU detection code.

Facts from REFERENCE §7.1/§7.2 (TPU `modeling/architecture/nasfpn.py`):

* Inputs: backbone levels min_level.. (C3-C5; a C2 entry is ignored) are projected to
  `channels` by a 1x1 conv (with bias; separable when `use_separable_conv`) + BN (no act)
  only when their channel count differs; missing coarser levels are made by max-pooling
  the previous level by 2 (P6 = pool(P5'), P7 = pool(P6)), no conv.
* `num_repeats` cells, each with its own weights, built from the 7 node specs in
  `NASFPN_BLOCK_SPECS` (indices 0..4 are the cell inputs P3..P7). A node resamples its two
  inputs to its level, combines them (sum, or global-pooling attention
  A + B * sigmoid(max_{H,W} A) with A the input from the coarser original level), adds any
  not-yet-consumed feature of the same level when it is an output node, then applies
  act -> 3x3 conv (bias) -> BN (no act). The last five nodes, keyed by level, are the
  cell's output and the next cell's input.
* Resampling: 1x1 conv + BN if the channel count differs, max-pool (window = stride =
  2^d, SAME) to go coarser, nearest-neighbour x2^d to go finer.

Odd sizes: level L of an image of side S has side ceil(S / 2^L) (SAME convs/pools), so
max-pooling lands on the right size and nearest upsampling can overshoot by at most
2^d - 1 pixels, which are cropped from the bottom/right (TF would fail there instead).

Convolution kernels use TF's `tf.layers` default (Glorot uniform), biases zeros.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from stlib.models.activations import activation_fn
from stlib.models.depthwise import DepthwiseConv
from stlib.models.convolution import Conv

# (output level, combine fn, (input index 0, input index 1), is_output); REFERENCE §7.1.
NASFPN_BLOCK_SPECS = (
    (4, "attention", (1, 3), False),
    (4, "sum", (1, 5), False),
    (3, "sum", (0, 6), True),
    (4, "sum", (6, 7), True),
    (5, "attention", (7, 8), True),
    (7, "attention", (6, 9), True),
    (6, "attention", (9, 10), True),
)
_KERNEL_INIT = nn.initializers.glorot_uniform()   # tf.layers.conv2d / separable_conv2d default


def global_attention(a, b):
    """Global-pooling attention merge: a + b * sigmoid(max over H, W of a), per channel.

    `a` is the feature whose original level is coarser (TPU `global_attention(feat0, feat1)`).
    """
    return a + b * jax.nn.sigmoid(jnp.max(a, axis=(1, 2), keepdims=True))


def nearest_upsample(x, factor: int):
    """Nearest-neighbour upsampling of an NHWC tensor by an integer factor."""
    if factor == 1:
        return x
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def crop_to(x, hw):
    """Crops NHWC `x` to spatial size `hw` (bottom/right); `x` must be at least that large."""
    h, w = hw
    if x.shape[1] < h or x.shape[2] < w:
        raise ValueError(f"feature of spatial size {x.shape[1:3]} is smaller than the target {tuple(hw)}")
    return x[:, :h, :w]


class ConvOp(nn.Module):
    """k x k conv with bias, SAME padding; separable (depthwise k x k, depth multiplier 1,
    then pointwise 1x1 with the bias) when `separable`, as `tf.layers.separable_conv2d`."""
    features: int
    kernel_size: int
    separable: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = (self.kernel_size, self.kernel_size)
        if not self.separable:
            return Conv(self.features, k, padding="SAME", kernel_init=_KERNEL_INIT, dtype=self.dtype,
                           name="conv")(x)
        x = DepthwiseConv(self.kernel_size, kernel_init=_KERNEL_INIT, dtype=self.dtype, name="depthwise")(x)
        return Conv(self.features, (1, 1), kernel_init=_KERNEL_INIT, dtype=self.dtype, name="pointwise")(x)


class Resample(nn.Module):
    """TPU `resample_feature_map`: [1x1 conv + BN if channels differ] -> max-pool or nearest
    upsample from `level` to `target_level`, cropped to `target_hw` when given."""
    channels: int
    separable: bool = False
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, level: int, target_level: int, train: bool, target_hw=None):
        if x.shape[-1] != self.channels:
            x = ConvOp(self.channels, 1, self.separable, self.dtype, name="proj")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, name="bn")(x)
        if level < target_level:
            s = 2 ** (target_level - level)
            x = nn.max_pool(x, (s, s), strides=(s, s), padding="SAME")
        elif level > target_level:
            x = nearest_upsample(x, 2 ** (level - target_level))
        if target_hw is not None:
            x = crop_to(x, target_hw)
        return x


class NASFPN(nn.Module):
    """NAS-FPN neck: `(feats {level: NHWC}, train) -> {min_level..max_level: NHWC with `channels`}`.

    Submodules: `input_proj_{l}` (backbone levels needing a projection), and per cell i and
    node j (row j of `NASFPN_BLOCK_SPECS`, i.e. feature index j + 5): `cell{i}_node{j}_in{0,1}` (resampling of the node inputs; parameter-free unless
    channels differ), `cell{i}_node{j}_extra{k}` (zero-out-degree merges), `cell{i}_node{j}_conv`
    and `cell{i}_node{j}_bn`.
    """
    channels: int = 256
    num_repeats: int = 5
    use_separable_conv: bool = False
    use_sum_for_combination: bool = False
    activation: str = "relu"
    min_level: int = 3
    max_level: int = 7
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-4
    dtype: Any = jnp.float32
    block_specs: tuple = NASFPN_BLOCK_SPECS

    def _resample(self, name):
        return Resample(self.channels, self.use_separable_conv, self.bn_momentum, self.bn_epsilon, self.dtype,
                        name=name)

    @nn.compact
    def __call__(self, feats: dict, train: bool):
        if self.min_level not in feats:
            raise ValueError(f"NASFPN needs backbone level {self.min_level}; got levels {sorted(feats)}")
        levels = list(range(self.min_level, self.max_level + 1))
        inputs = []
        for level in levels:
            if level in feats:
                inputs.append(self._resample(f"input_proj_{level}")(feats[level], level, level, train))
            else:
                # Coarser level by max-pooling the previous one (P6 from P5', P7 from P6); no params.
                inputs.append(nn.max_pool(inputs[-1], (2, 2), strides=(2, 2), padding="SAME"))
        for i in range(self.num_repeats):
            out = self._cell(i, inputs, levels, train)
            inputs = [out[level] for level in levels]
        return {level: x for level, x in zip(levels, inputs)}

    def _cell(self, cell: int, inputs, levels, train: bool) -> dict:
        act = activation_fn(self.activation)
        nodes = list(inputs)
        node_levels = list(levels)
        sizes = {level: x.shape[1:3] for level, x in zip(levels, inputs)}
        used = [0] * len(nodes)
        for j, (level, combine, offsets, is_output) in enumerate(self.block_specs):
            for k in offsets:
                if k >= len(nodes):
                    raise ValueError(f"node {j} input index {k} out of range ({len(nodes)} features)")
            pre = f"cell{cell}_node{j}"
            resampled = []
            for slot, k in enumerate(offsets):
                used[k] += 1
                resampled.append(self._resample(f"{pre}_in{slot}")(nodes[k], node_levels[k], level, train,
                                                                   sizes[level]))
            x0, x1 = resampled
            l0, l1 = node_levels[offsets[0]], node_levels[offsets[1]]
            if self.use_sum_for_combination or combine == "sum":
                x = x0 + x1
            elif combine == "attention":
                x = global_attention(x0, x1) if l0 >= l1 else global_attention(x1, x0)
            else:
                raise ValueError(f"unknown combine fn {combine!r}")
            if is_output:
                # Zero-out-degree rule: unconsumed features of the same level are added in.
                for k in range(len(nodes)):
                    if used[k] == 0 and node_levels[k] == level:
                        used[k] += 1
                        x = x + self._resample(f"{pre}_extra{k}")(nodes[k], node_levels[k], level, train,
                                                                  sizes[level])
            x = act(x)
            x = ConvOp(self.channels, 3, self.use_separable_conv, self.dtype, name=f"{pre}_conv")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, name=f"{pre}_bn")(x)
            nodes.append(x)
            node_levels.append(level)
            used.append(0)
        n_out = len(levels)
        out = {node_levels[k]: nodes[k] for k in range(len(nodes) - n_out, len(nodes))}
        if sorted(out) != list(levels):
            raise ValueError(f"block specs produce output levels {sorted(out)}, expected {list(levels)}")
        return out
