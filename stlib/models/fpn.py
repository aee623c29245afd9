"""Feature Pyramid Network (Lin et al. 2017) producing P3-P7 from C3-C5.

Follows TPU `modeling/architecture/fpn.py`: 1x1 lateral convs, nearest top-down
upsampling and addition, 3x3 post-hoc convs, then P6 = 3x3/2 conv on P5 and
P7 = 3x3/2 conv on relu(P6); every conv output is batch-normalized (no activation).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from stlib.models.convolution import Conv


def upsample2x(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class FPN(nn.Module):
    channels: int = 256
    min_level: int = 3
    max_level: int = 7
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: dict, train: bool):
        conv = functools.partial(Conv, self.channels, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=self.dtype)
        backbone_max = max(feats)
        levels = range(self.min_level, backbone_max + 1)
        lateral = {l: conv((1, 1), name=f"lateral_{l}")(feats[l]) for l in levels}
        out = {backbone_max: lateral[backbone_max]}
        for l in range(backbone_max - 1, self.min_level - 1, -1):
            up = upsample2x(out[l + 1])[:, : lateral[l].shape[1], : lateral[l].shape[2]]
            out[l] = lateral[l] + up
        out = {l: norm(name=f"post_bn_{l}")(conv((3, 3), name=f"post_conv_{l}")(out[l])) for l in levels}
        for l in range(backbone_max + 1, self.max_level + 1):
            x = out[l - 1]
            if l > backbone_max + 1:
                x = jax.nn.relu(x)
            out[l] = norm(name=f"post_bn_{l}")(conv((3, 3), strides=(2, 2), name=f"coarse_conv_{l}")(x))
        return out
