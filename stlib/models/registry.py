"""Components picked by name (`model.backbone: resnet50`), as scenic and big_vision do."""
from __future__ import annotations

import jax.numpy as jnp

from stlib.models.backbones import resnet
from stlib.models.retinanet import RetinaNet

BACKBONES = {
    "resnet-tiny": resnet.resnet_tiny,
    "resnet-mini": resnet.resnet_mini,
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
}


def create_model(model_params, num_classes: int):
    """Builds the detector named by `model_params` (a `stlib.config.ModelParams`)."""
    if model_params.backbone not in BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone {model_params.backbone!r} (known: {', '.join(BACKBONES)})")
    if model_params.name != "retinanet":
        raise ValueError(f"model.name: unknown model {model_params.name!r} (known: retinanet)")
    mp = model_params
    return RetinaNet(
        backbone=BACKBONES[mp.backbone], num_classes=num_classes,
        num_anchors=mp.num_scales * len(mp.aspect_ratios), fpn_channels=mp.fpn_channels,
        head_convs=mp.head_convs, head_channels=mp.head_channels, min_level=mp.min_level,
        max_level=mp.max_level, bn_momentum=mp.bn_momentum, bn_epsilon=mp.bn_epsilon,
        dtype=jnp.bfloat16 if mp.dtype == "bfloat16" else jnp.float32)
