"""RetinaNet (Lin et al. 2017): backbone -> FPN P3-P7 -> shared class and box heads.

Head facts from REFERENCE §4.3 (TPU `RetinanetHead`): 4 convs 3x3 of 256 channels shared
across levels with a separate BatchNorm per level, ReLU; class conv with prior-probability
bias -log((1-0.01)/0.01); box conv; kernels N(0, 0.01) for the tower and N(0, 1e-5) for
the predictors. Classes have no background column (sigmoid per class; TPU's column 0
is never positive and dropped at inference, so the two are equivalent).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from stlib.models.activations import activation_fn
from stlib.models.fpn import FPN
from stlib.models.convolution import Conv


class RetinaNetHead(nn.Module):
    num_classes: int
    num_anchors: int = 9
    num_convs: int = 4
    channels: int = 256
    min_level: int = 3
    max_level: int = 7
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-4
    prior_prob: float = 0.01             # REFERENCE §4.3
    activation: str = "relu"             # REFERENCE §4.3: relu by default, swish in the SpineNet configs
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: dict, train: bool):
        tower_init = nn.initializers.normal(0.01)
        pred_init = nn.initializers.normal(1e-5)
        cls_convs = [Conv(self.channels, (3, 3), kernel_init=tower_init, dtype=self.dtype, name=f"cls_conv_{i}")
                     for i in range(self.num_convs)]
        box_convs = [Conv(self.channels, (3, 3), kernel_init=tower_init, dtype=self.dtype, name=f"box_conv_{i}")
                     for i in range(self.num_convs)]
        bias = -math.log((1 - self.prior_prob) / self.prior_prob)
        cls_pred = Conv(self.num_anchors * self.num_classes, (3, 3), kernel_init=pred_init,
                           bias_init=nn.initializers.constant(bias), dtype=self.dtype, name="cls_pred")
        box_pred = Conv(self.num_anchors * 4, (3, 3), kernel_init=pred_init, dtype=self.dtype, name="box_pred")

        def norm(name):
            return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                epsilon=self.bn_epsilon, dtype=self.dtype, name=name)

        act = activation_fn(self.activation)
        cls_out, box_out = {}, {}
        for l in range(self.min_level, self.max_level + 1):
            x = feats[l]
            for i, c in enumerate(cls_convs):
                x = act(norm(f"cls_bn_{i}_l{l}")(c(x)))
            cls_out[l] = cls_pred(x).astype(jnp.float32)
            x = feats[l]
            for i, c in enumerate(box_convs):
                x = act(norm(f"box_bn_{i}_l{l}")(c(x)))
            box_out[l] = box_pred(x).astype(jnp.float32)
        return cls_out, box_out


class RetinaNet(nn.Module):
    """Returns per-level raw outputs: ({level: [B,h,w,A*K]}, {level: [B,h,w,A*4]}).

    `backbone` and `neck` are partials called with `name=` only (the registry binds their
    settings); `neck=None` is the FPN of `fpn_channels`. The neck's variables live under
    "fpn" whatever the neck is (the TPU's `multilevel_features` slot), so checkpoints of
    FPN detectors keep their layout.
    """
    backbone: Callable[..., nn.Module]
    num_classes: int
    neck: Optional[Callable[..., nn.Module]] = None
    num_anchors: int = 9
    fpn_channels: int = 256
    head_convs: int = 4
    head_channels: int = 256
    min_level: int = 3
    max_level: int = 7
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-4
    activation: str = "relu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, train: bool = False):
        bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=self.dtype)
        feats = self.backbone(name="backbone")(images.astype(self.dtype), train=train)
        if self.neck is None:
            pyramid = FPN(self.fpn_channels, self.min_level, self.max_level, **bn, name="fpn")(feats, train=train)
        else:
            pyramid = self.neck(name="fpn")(feats, train=train)
        return RetinaNetHead(self.num_classes, self.num_anchors, self.head_convs, self.head_channels,
                             self.min_level, self.max_level, **bn, activation=self.activation,
                             name="head")(pyramid, train=train)
