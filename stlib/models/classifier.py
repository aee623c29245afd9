"""Image classifier = backbone (returning {level: features}) + classification head.

The parameter tree is {"backbone": ..., "head": ...}, so a detector can load the `backbone`
subtree of a classification checkpoint as is. For EfficientNet the head carries the 1x1
"top" conv + BN + swish (REFERENCE §5.1 "Head"), global average pooling, dropout and the
1000-way FC; `efficientnet_classifier("b0")` builds the full published network.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from stlib.models.activations import activation_fn
from stlib.models.backbones import efficientnet as effnet
from stlib.models.convolution import Conv



class ClassificationHead(nn.Module):
    """[optional 1x1 conv + BN + act] -> global average pool -> dropout -> Dense (float32 logits)."""
    num_classes: int
    conv_channels: Optional[int] = None
    activation: str = "swish"
    dropout_rate: float = 0.0
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: dict, train: bool):
        act = activation_fn(self.activation)
        x = feats[max(feats)]
        if self.conv_channels:
            x = Conv(self.conv_channels, (1, 1), use_bias=False, dtype=self.dtype,
                        kernel_init=effnet.CONV_INIT, name="top_conv")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, name="top_bn")(x)
            x = act(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        if self.dropout_rate > 0.0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        # Dense init U(+-1/sqrt(num_classes)) (REFERENCE §5.2): variance_scaling(1/3, fan_out, uniform).
        x = nn.Dense(self.num_classes, dtype=self.dtype,
                     kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform"),
                     bias_init=nn.initializers.zeros, name="predictions")(x)
        return x.astype(jnp.float32)


class Classifier(nn.Module):
    """`backbone` and `head` are partials (module factories); returns [B, num_classes] float32 logits.
    With train=True and any dropout/drop-connect pass `rngs={"dropout": key}`."""
    backbone: Callable[..., nn.Module]
    head: Callable[..., nn.Module]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, train: bool = False):
        feats = self.backbone(name="backbone")(images.astype(self.dtype), train=train)
        return self.head(name="head")(feats, train=train)


def efficientnet_classifier(variant: str, num_classes: int = 1000, dtype: Any = jnp.float32) -> Classifier:
    """The published EfficientNet classifier ('b0'..'b7', 'l2', or our 'tiny')."""
    v = effnet.normalize_variant(variant)
    width, depth, dropout = effnet.COEFFICIENTS[v]
    backbone = functools.partial(effnet.EfficientNet, width=width, depth=depth, dropout_rate=dropout,
                                 bn_momentum=0.99, bn_epsilon=1e-3, dtype=dtype)
    head = functools.partial(ClassificationHead, num_classes=num_classes,
                             conv_channels=effnet.round_filters(1280, width), activation="swish",
                             dropout_rate=dropout, bn_momentum=0.99, bn_epsilon=1e-3, dtype=dtype)
    return Classifier(backbone=backbone, head=head, dtype=dtype)
