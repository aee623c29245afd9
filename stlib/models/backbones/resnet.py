"""ResNet backbones (He et al. 2016) returning the C3-C5 endpoints a detector needs.

Variants are `functools.partial`s (flax examples habit): `resnet50`/`resnet101` at
paper scale, `resnet18`/`resnet34`, and the tiny variants the smoke and mini scales
train on a 2-core CPU.

Two layouts of the bottleneck ResNet-50 exist in the public checkpoints, and an imported
checkpoint only reproduces its network in the layout it was trained in:
- `resnet50` / `resnet101`: stride on the 3x3 conv ("v1.5"), no conv biases, symmetric
  padding of strided convs (TPU `fixed_padding`, torchvision, SimCLR's conversions).
- `resnet50_keras`: `keras.applications.ResNet50` ("v1"): stride on the first 1x1 conv,
  conv biases, BatchNorm epsilon 1.001e-5.
The small variants keep flax's SAME padding they were calibrated with.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from stlib.models.activations import activation_fn
from stlib.models.convolution import Conv

ModuleDef = Any


def drop_path(module: nn.Module, y, rate: float):
    """Stochastic depth (Huang et al. 2016) on a residual branch: per example, drop it with
    probability `rate` and scale survivors by 1/(1-rate); `rate` 0 is the identity. Uses the
    module's "dropout" rng."""
    if not rate:
        return y
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (y.shape[0],) + (1,) * (y.ndim - 1))
    return jnp.where(mask, y / jnp.asarray(keep, y.dtype), jnp.zeros_like(y))


def fixed_padding(kernel: int):
    """TPU `fixed_padding` / torch `padding=k//2`: (k-1) split with the smaller half first."""
    total = kernel - 1
    return ((total // 2, total - total // 2),) * 2


class BasicBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    drop_path_rate: float = 0.0          # stochastic depth of the residual branch (training only)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        y = drop_path(self, y, self.drop_path_rate)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), (self.strides, self.strides), name="proj_conv")(residual)
            residual = self.norm(name="proj_bn")(residual)
        return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    stride_in_1x1: bool = False          # keras.applications ResNet50 ("v1")
    act: Callable = nn.relu
    drop_path_rate: float = 0.0          # stochastic depth of the residual branch (training only)

    @nn.compact
    def __call__(self, x):
        residual = x
        s1, s3 = ((self.strides, 1) if self.stride_in_1x1 else (1, self.strides))
        y = self.act(self.norm(name="bn1")(self.conv(self.filters, (1, 1), (s1, s1), name="conv1")(x)))
        y = self.conv(self.filters, (3, 3), (s3, s3), name="conv2")(y)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(self.filters * 4, (1, 1), name="conv3")(y)
        y = self.norm(scale_init=nn.initializers.zeros, name="bn3")(y)
        y = drop_path(self, y, self.drop_path_rate)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides), name="proj_conv")(residual)
            residual = self.norm(name="proj_bn")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """ResNet; `__call__` returns {3: C3, 4: C4, 5: C5} (strides 8, 16, 32).

    `padding`: "same" (flax/TF SAME everywhere) or "symmetric" (strided convs and the stem
    pool padded (k-1)//2 before and the rest after, as TPU `fixed_padding` and torch do).
    `drop_path_rate`: stochastic depth with the linear decay rule of Huang et al. (block k of
    N drops its residual branch with probability rate*k/N, the last one with `rate`), the
    noise Noisy Student puts on its students (Xie et al. 2020: survival 0.8 at the last
    block); 0 (default) adds nothing. With train=True and rate > 0 pass `rngs={"dropout": key}`.
    """
    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_width: int = 64
    stem_kernel: int = 7
    padding: str = "same"
    stride_in_1x1: bool = False
    conv_bias: bool = False
    activation: str = "relu"
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-4
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"ResNet drop_path_rate {self.drop_path_rate}: must be in [0, 1)")
        if self.padding not in ("same", "symmetric"):
            raise ValueError(f"ResNet padding {self.padding!r}: expected 'same' or 'symmetric'")
        act = activation_fn(self.activation)
        symmetric = self.padding == "symmetric"

        def conv(features, kernel_size, strides=(1, 1), **kw):
            pad = fixed_padding(kernel_size[0]) if symmetric and strides[0] > 1 else "SAME"
            return Conv(features, kernel_size, strides, padding=pad, use_bias=self.conv_bias, dtype=self.dtype,
                           kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"), **kw)

        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=self.dtype)
        k = self.stem_kernel
        x = conv(self.stem_width, (k, k), (2, 2), name="stem_conv")(x)
        x = act(norm(name="stem_bn")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=fixed_padding(3) if symmetric else "SAME")
        extra = {}
        if self.block_cls is BottleneckBlock:
            extra = dict(stride_in_1x1=self.stride_in_1x1, act=act)
        feats = {}
        total, k = sum(self.stage_sizes), 0
        for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
            for j in range(n):
                strides = 2 if i > 0 and j == 0 else 1
                k += 1
                rate = self.drop_path_rate * k / total if train else 0.0
                x = self.block_cls(w, conv=conv, norm=norm, strides=strides, name=f"stage{i + 1}_block{j + 1}",
                                   drop_path_rate=rate, **extra)(x)
            feats[i + 2] = x
        return {3: feats[3], 4: feats[4], 5: feats[5]}


resnet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
resnet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
resnet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock, padding="symmetric")
resnet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock, padding="symmetric")
# keras.applications.ResNet50's layout, so its checkpoints reproduce their network exactly.
resnet50_keras = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock, padding="symmetric",
                                   stride_in_1x1=True, conv_bias=True, bn_epsilon=1.001e-5)
# Small variants for the smoke and mini scales (our choice; the paper has none).
resnet_mini = functools.partial(ResNet, stage_sizes=(1, 1, 2, 1), block_cls=BasicBlock,
                                widths=(32, 64, 128, 192), stem_width=32, stem_kernel=3)
resnet_tiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock,
                                widths=(8, 16, 16, 32), stem_width=8, stem_kernel=3)
