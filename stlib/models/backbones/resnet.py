"""ResNet backbones (He et al. 2016) returning the C3-C5 endpoints a detector needs.

Variants are `functools.partial`s (flax examples habit): `resnet50`/`resnet101` at
paper scale, `resnet18`/`resnet34`, and the tiny variants the smoke and mini scales
train on a 2-core CPU.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any


class BasicBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), (self.strides, self.strides), name="proj_conv")(residual)
            residual = self.norm(name="proj_bn")(residual)
        return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides), name="proj_conv")(residual)
            residual = self.norm(name="proj_bn")(residual)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    """ResNet; `__call__` returns {3: C3, 4: C4, 5: C5} (strides 8, 16, 32)."""
    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_width: int = 64
    stem_kernel: int = 7
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=self.dtype)
        k = self.stem_kernel
        x = conv(self.stem_width, (k, k), (2, 2), name="stem_conv")(x)
        x = nn.relu(norm(name="stem_bn")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        feats = {}
        for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
            for j in range(n):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(w, conv=conv, norm=norm, strides=strides, name=f"stage{i + 1}_block{j + 1}")(x)
            feats[i + 2] = x
        return {3: feats[3], 4: feats[4], 5: feats[5]}


resnet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
resnet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
resnet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
resnet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)
# Small variants for the smoke and mini scales (our choice; the paper has none).
resnet_mini = functools.partial(ResNet, stage_sizes=(1, 1, 2, 1), block_cls=BasicBlock,
                                widths=(32, 64, 128, 192), stem_width=32, stem_kernel=3)
resnet_tiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock,
                                widths=(8, 16, 16, 32), stem_width=8, stem_kernel=3)
