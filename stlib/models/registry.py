"""Components picked by name (`model.backbone: efficientnet-b7`, `model.neck: nasfpn`,
`model.head: retinanet`), as scenic and big_vision do.

`create_model(model_params, num_classes)` builds a detector (head `retinanet`), a
segmenter (`segmentation`) or a classifier (`classification`) from one `ModelParams`.

Which BatchNorm settings a backbone uses: ResNet and SpineNet take the model's
(`model.bn_momentum/bn_epsilon`, the TPU's `batch_norm_activation`); EfficientNet keeps
its own 0.99 / 1e-3, because the TPU detection and segmentation wrappers pass it no
overrides (REFERENCE §5.2). `model.backbone_bn_epsilon`, when set, is the backbone's
epsilon whichever it is: an imported `model.init` sets it to its source's (torchvision
1e-5, ...), since BN statistics are only right with the epsilon they were made with. The
neck and the detection/segmentation heads keep `model.bn_epsilon`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from stlib.models import activations
from stlib.models.backbones import efficientnet, resnet, spinenet
from stlib.models.classifier import ClassificationHead, Classifier
from stlib.models.fpn import FPN
from stlib.models.nasfpn import NASFPN
from stlib.models.retinanet import RetinaNet
from stlib.models.segmentation import SegmentationHead, Segmenter
from stlib.registry import ParamsError, Registry


class IdentityNeck(nn.Module):
    """No neck: the backbone's own P-levels feed the head (SpineNet, REFERENCE §6.5)."""
    min_level: int = 3
    max_level: int = 7

    def __call__(self, feats: dict, train: bool):
        missing = [l for l in range(self.min_level, self.max_level + 1) if l not in feats]
        if missing:
            raise ValueError(f"model.neck identity: the backbone gives levels {sorted(feats)}, "
                             f"the head needs {self.min_level}..{self.max_level} (missing {missing}); "
                             "use model.neck fpn or nasfpn")
        return {l: feats[l] for l in range(self.min_level, self.max_level + 1)}


# name -> (module partial, whether the model's BN settings apply)
_BN_FROM_MODEL, _OWN_BN = True, False
BACKBONES = Registry("backbone", field="model.backbone")
for _name, _entry in {
    "resnet-tiny": (resnet.resnet_tiny, _BN_FROM_MODEL),
    "resnet-mini": (resnet.resnet_mini, _BN_FROM_MODEL),
    "resnet18": (resnet.resnet18, _BN_FROM_MODEL),
    "resnet34": (resnet.resnet34, _BN_FROM_MODEL),
    "resnet50": (resnet.resnet50, _BN_FROM_MODEL),
    "resnet50-keras": (resnet.resnet50_keras, _OWN_BN),  # its epsilon 1.001e-5 comes with its weights
    "resnet101": (resnet.resnet101, _BN_FROM_MODEL),
    **{f"efficientnet-{v}": (getattr(efficientnet, f"efficientnet_{v}"), _OWN_BN)
       for v in ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "l2", "tiny")},
    **{f"spinenet-{v}": (getattr(spinenet, f"spinenet_{v}"), _BN_FROM_MODEL)
       for v in ("49s", "49", "96", "143", "190", "tiny")},
}.items():
    BACKBONES.register(_name, _entry)


def _check_identity_neck(p) -> None:
    """The identity neck feeds a RetinaNet head the backbone's own P3-P7: only SpineNet has them."""
    m = p.model
    if m.head == "retinanet" and m.neck == "identity" and not is_spinenet(m.backbone):
        raise ParamsError(f"model.neck identity needs a backbone that outputs P3-P7 (spinenet-*), got {m.backbone!r}")


# name -> builder(mp) -> neck partial
NECKS = Registry("neck", field="model.neck", check=_check_identity_neck)
# name -> builder(mp, backbone partial, num_classes) -> the model
HEADS = Registry("head", field="model.head")
ACTIVATIONS = activations.ACTIVATIONS


def is_spinenet(name: str) -> bool:
    return name.startswith("spinenet-")


def _dtype(mp):
    return jnp.bfloat16 if mp.dtype == "bfloat16" else jnp.float32


def create_backbone(mp) -> Callable[..., nn.Module]:
    """The backbone partial named by `mp.backbone`, with the settings it takes from `mp`."""
    fn, bn_from_model = BACKBONES.get(mp.backbone)
    kw: dict[str, Any] = dict(dtype=_dtype(mp))
    if bn_from_model:
        kw.update(bn_momentum=mp.bn_momentum, bn_epsilon=mp.bn_epsilon)
    if mp.backbone_bn_epsilon is not None:   # the imported weights' own (stlib.models.weight_import)
        kw["bn_epsilon"] = mp.backbone_bn_epsilon
    if is_spinenet(mp.backbone):
        kw.update(activation=mp.activation, min_level=mp.min_level, max_level=mp.max_level)
    rate = getattr(mp, "drop_path_rate", None)
    if rate is not None:  # None keeps each backbone's published stochastic depth
        name = ("drop_connect_rate" if mp.backbone.startswith("efficientnet-") else
                "init_drop_connect_rate" if is_spinenet(mp.backbone) else "drop_path_rate")
        kw[name] = rate
    return functools.partial(fn, **kw)


def create_neck(mp) -> Callable[..., nn.Module]:
    """The neck partial named by `mp.neck`."""
    return NECKS.get(mp.neck)(mp)


def _bn(mp) -> dict:
    return dict(bn_momentum=mp.bn_momentum, bn_epsilon=mp.bn_epsilon, dtype=_dtype(mp))


@NECKS.register("fpn")
def fpn_neck(mp):
    return functools.partial(FPN, mp.fpn_channels, mp.min_level, mp.max_level, **_bn(mp))


@NECKS.register("nasfpn")
def nasfpn_neck(mp):
    return functools.partial(NASFPN, channels=mp.fpn_channels, num_repeats=mp.nasfpn_repeats,
                             use_separable_conv=mp.separable_conv, activation=mp.activation,
                             min_level=mp.min_level, max_level=mp.max_level, **_bn(mp))


@NECKS.register("identity")
def identity_neck(mp):
    return functools.partial(IdentityNeck, mp.min_level, mp.max_level)


def create_model(model_params, num_classes: int):
    """Builds the model named by `model_params` (a `stlib.config.ModelParams`).

    Returns a `RetinaNet` (head retinanet), `Segmenter` (segmentation) or `Classifier`
    (classification); `num_classes` is the dataset's (no background column for
    detection; segmentation counts its background class).
    """
    mp = model_params
    backbone = create_backbone(mp)
    ACTIVATIONS.get(mp.activation)
    return HEADS.get(mp.head)(mp, backbone, num_classes)


@HEADS.register("retinanet")
def retinanet_model(mp, backbone, num_classes: int):
    """A RetinaNet detector; its own FPN unless `mp.neck` names another neck."""
    NECKS.get(mp.neck)
    return RetinaNet(
        backbone=backbone, num_classes=num_classes, neck=None if mp.neck == "fpn" else create_neck(mp),
        num_anchors=mp.num_scales * len(mp.aspect_ratios), fpn_channels=mp.fpn_channels,
        head_convs=mp.head_convs, head_channels=mp.head_channels, min_level=mp.min_level,
        max_level=mp.max_level, bn_momentum=mp.bn_momentum, bn_epsilon=mp.bn_epsilon,
        activation=mp.activation, dtype=_dtype(mp))


@HEADS.register("segmentation")
def segmentation_model(mp, backbone, num_classes: int):
    """A segmenter: backbone, `mp.neck`, segmentation head at `mp.segmentation_level`."""
    head = functools.partial(SegmentationHead, num_classes=num_classes, num_convs=mp.head_convs,
                             channels=mp.head_channels, level=mp.segmentation_level, activation=mp.activation,
                             bn_momentum=mp.bn_momentum, bn_epsilon=mp.bn_epsilon, dtype=_dtype(mp))
    return Segmenter(backbone=backbone, neck=create_neck(mp), head=head, num_classes=num_classes,
                     dtype=_dtype(mp))


@HEADS.register("classification")
def classification_model(mp, backbone, num_classes: int):
    """A classifier: backbone and the head it was published with (`classification_head`)."""
    return Classifier(backbone=backbone, head=classification_head(mp, num_classes), dtype=_dtype(mp))


def classification_head(mp, num_classes: int) -> Callable[..., nn.Module]:
    """The classifier head a backbone was published with: EfficientNet's 1x1 "top" conv
    (round_filters(1280), BN, swish) before pooling, a plain pool + FC otherwise."""
    fn, bn_from_model = BACKBONES[mp.backbone]
    if mp.backbone.startswith("efficientnet-"):
        kw = fn.keywords
        # The top conv + BN belong to the published network (imported with the backbone): their epsilon too.
        eps = mp.backbone_bn_epsilon if mp.backbone_bn_epsilon is not None else 1e-3
        return functools.partial(
            ClassificationHead, num_classes=num_classes,
            conv_channels=efficientnet.round_filters(1280, kw["width"]), activation="swish",
            dropout_rate=mp.classifier_dropout if mp.classifier_dropout is not None else kw["dropout_rate"],
            bn_momentum=0.99, bn_epsilon=eps, dtype=_dtype(mp))
    return functools.partial(ClassificationHead, num_classes=num_classes, conv_channels=None,
                             activation=mp.activation, dropout_rate=mp.classifier_dropout or 0.0,
                             bn_momentum=mp.bn_momentum, bn_epsilon=mp.bn_epsilon, dtype=_dtype(mp))
