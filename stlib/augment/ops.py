"""The named ops of AutoAugment-detection and RandAugment: level -> argument, and how each is applied.

REFERENCE §1.6 lists the 25 detection ops; RandAugment adds `Invert` (§2). Each name maps
to an `OpSpec`: which kind of op it is, its base transform, its level -> argument map
(§1.7) and whether its magnitude gets a random sign (Rotate, Shear, Translate: §1.1).

Kinds:
  color        pixel op on the content region (stlib.augment.color_ops)
  cutout       Cutout on the content region, fill 128
  bbox_cutout  BBox_Cutout: a hole inside ONE random box
  geometric    `*_BBox` ops: the whole content moves; boxes and mask follow
  box_*        `*_Only_BBoxes` ops: applied to each box crop independently with
               probability p/3, boxes visited in shuffled order; boxes (and masks) unchanged

Pixel constants (translate 250 px, cutout 100 px, ...) are for COCO-sized images
(~640 px); `OpConstants.pixel_scale` scales them for smaller worlds (the mini preset).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from stlib.augment import color_ops
from stlib.augment.geometric import MAPS, box_region, content_region, warp_region

MAX_LEVEL = 10.0  # REFERENCE §1.1


@dataclasses.dataclass(frozen=True)
class OpConstants:
    """Pixel and fraction constants of the ops (REFERENCE §1.1 for AutoAugment, §2.2 for RandAugment)."""
    cutout_const: float = 100.0          # Cutout pad at level 10 (px)
    translate_const: float = 250.0       # Translate*_BBox at level 10 (px)
    cutout_bbox_const: float = 50.0      # Cutout_Only_BBoxes pad at level 10 (px)
    translate_bbox_const: float = 120.0  # Translate*_Only_BBoxes at level 10 (px)
    cutout_max_pad_fraction: float = 0.75  # BBox_Cutout pad fraction at level 10
    pixel_scale: float = 1.0             # our addition: multiplies every pixel constant above

    def px(self, name: str) -> float:
        return getattr(self, name) * self.pixel_scale


AUTOAUGMENT_CONSTANTS = OpConstants()                                      # REFERENCE §1.1
RANDAUGMENT_CONSTANTS = OpConstants(cutout_const=40.0, translate_const=100.0)  # REFERENCE §2.2 class defaults


@dataclasses.dataclass(frozen=True)
class OpSpec:
    kind: str
    base: Optional[str]                   # COLOR_OPS / MAPS key
    arg: Callable[[float, OpConstants], float]
    signed: bool = False


def _none(level, c):
    return 0.0


def _enhance(level, c):
    return level / MAX_LEVEL * 1.8 + 0.1


def _rotate(level, c):
    return level / MAX_LEVEL * 30.0


def _shear(level, c):
    return level / MAX_LEVEL * 0.3


def _translate(level, c):
    return level / MAX_LEVEL * c.px("translate_const")


def _translate_bbox(level, c):
    return level / MAX_LEVEL * c.px("translate_bbox_const")


def _posterize(level, c):
    return float(int(level / MAX_LEVEL * 4))


def _solarize(level, c):
    return float(int(level / MAX_LEVEL * 256))


def _solarize_add(level, c):
    return float(int(level / MAX_LEVEL * 110))


def _cutout(level, c):
    return float(int(level / MAX_LEVEL * c.px("cutout_const")))


def _cutout_bbox(level, c):
    return float(int(level / MAX_LEVEL * c.px("cutout_bbox_const")))


def _bbox_cutout_fraction(level, c):
    return level / MAX_LEVEL * c.cutout_max_pad_fraction


OPS: dict[str, OpSpec] = {
    # Pixel ops on the whole content.
    "AutoContrast": OpSpec("color", "AutoContrast", _none),
    "Equalize": OpSpec("color", "Equalize", _none),
    "Invert": OpSpec("color", "Invert", _none),             # RandAugment only (REFERENCE §2)
    "Posterize": OpSpec("color", "Posterize", _posterize),
    "Solarize": OpSpec("color", "Solarize", _solarize),
    "SolarizeAdd": OpSpec("color", "SolarizeAdd", _solarize_add),
    "Color": OpSpec("color", "Color", _enhance),
    "Contrast": OpSpec("color", "Contrast", _enhance),
    "Brightness": OpSpec("color", "Brightness", _enhance),
    "Sharpness": OpSpec("color", "Sharpness", _enhance),
    "Cutout": OpSpec("cutout", None, _cutout),
    "BBox_Cutout": OpSpec("bbox_cutout", None, _bbox_cutout_fraction),
    # Whole-image geometric ops: boxes and masks follow.
    "Rotate_BBox": OpSpec("geometric", "Rotate", _rotate, True),
    "ShearX_BBox": OpSpec("geometric", "ShearX", _shear, True),
    "ShearY_BBox": OpSpec("geometric", "ShearY", _shear, True),
    "TranslateX_BBox": OpSpec("geometric", "TranslateX", _translate, True),
    "TranslateY_BBox": OpSpec("geometric", "TranslateY", _translate, True),
    # Per-box ops (probability p/3 per box).
    "Rotate_Only_BBoxes": OpSpec("box_geometric", "Rotate", _rotate, True),
    "ShearX_Only_BBoxes": OpSpec("box_geometric", "ShearX", _shear, True),
    "ShearY_Only_BBoxes": OpSpec("box_geometric", "ShearY", _shear, True),
    "TranslateX_Only_BBoxes": OpSpec("box_geometric", "TranslateX", _translate_bbox, True),
    "TranslateY_Only_BBoxes": OpSpec("box_geometric", "TranslateY", _translate_bbox, True),
    "Flip_Only_BBoxes": OpSpec("box_geometric", "Flip", _none),
    "Solarize_Only_BBoxes": OpSpec("box_color", "Solarize", _solarize),
    "Equalize_Only_BBoxes": OpSpec("box_color", "Equalize", _none),
    "Cutout_Only_BBoxes": OpSpec("box_cutout", None, _cutout_bbox),
}

DETECTION_OPS = tuple(n for n in OPS if n != "Invert")  # the 25 ops of REFERENCE §1.6
BBOX_ONLY_PROB_SCALE = 1.0 / 3.0  # REFERENCE §1.1: per-box ops run with probability p/3


def op_argument(key, name: str, level: float, constants: OpConstants):
    """The op's argument at `level` (REFERENCE §1.7), negated with probability 1/2 for signed ops."""
    spec = OPS[name]
    arg = jnp.asarray(spec.arg(level, constants), jnp.float32)
    if spec.signed:
        arg = jnp.where(jax.random.bernoulli(key, 0.5), -arg, arg)
    return arg


def _region_hw(region):
    return (region[2] - region[0]).astype(jnp.float32), (region[3] - region[1]).astype(jnp.float32)


def _pixels_in_box(kind, base, key, image, region, arg):
    """One per-box op on the crop `region` of `image` (pixels only)."""
    if kind == "box_color":
        return color_ops.COLOR_OPS[base](image, region, arg)
    if kind == "box_cutout":
        return color_ops.cutout(key, image, region, arg)
    forward = MAPS[base](arg, jnp.stack(_region_hw(region)))
    return warp_region({"image": image}, region, forward, move_labels=False)["image"]


def _bbox_cutout(key, example, pad_fraction):
    """BBox_Cutout (TPU `_cutout_inside_bbox`): hole of half-size int(f * box_side / 2) in one random box."""
    k_box, k_y, k_x = jax.random.split(key, 3)
    valid = example["valid"]
    # Uniform over the valid boxes.
    pick = jax.random.categorical(k_box, jnp.where(valid, 0.0, -jnp.inf))
    region = box_region(example["boxes"][pick], example["image_hw"])
    h = region[2] - region[0]
    w = region[3] - region[1]
    pad_h = jnp.floor(pad_fraction * (h / 2)).astype(jnp.int32)
    pad_w = jnp.floor(pad_fraction * (w / 2)).astype(jnp.int32)
    cy = jax.random.randint(k_y, (), region[0], region[2])
    cx = jax.random.randint(k_x, (), region[1], region[3])
    hw = example["image_hw"].astype(jnp.int32)
    rect = jnp.stack([jnp.maximum(cy - pad_h, 0), jnp.maximum(cx - pad_w, 0),
                      jnp.minimum(cy + pad_h, hw[0]), jnp.minimum(cx + pad_w, hw[1])])
    image = color_ops.fill_rect(example["image"], rect)
    return jnp.where(valid.any(), image, example["image"])


def apply_op(key, example, name: str, level: float, prob: float, constants: OpConstants):
    """Applies op `name` at `level` with probability `prob` (REFERENCE §1.1 mechanics).

    Whole-image ops run with probability `prob`; per-box ops always run and visit each
    valid box in shuffled order, applying the op to it with probability `prob / 3`.
    Returns the example with the same keys and shapes.
    """
    spec = OPS[name]
    if prob <= 0.0:
        return example  # TPU: a zero-probability op is skipped outright
    k_apply, k_sign, k_op = jax.random.split(key, 3)
    arg = op_argument(k_sign, name, level, constants)
    if spec.kind.startswith("box_"):
        return _per_box(k_op, example, spec, arg, prob * BBOX_ONLY_PROB_SCALE)

    def run(ex):
        ex = dict(ex)
        region = content_region(ex)
        if spec.kind == "color":
            ex["image"] = color_ops.COLOR_OPS[spec.base](ex["image"], region, arg)
        elif spec.kind == "cutout":
            ex["image"] = color_ops.cutout(k_op, ex["image"], region, arg)
        elif spec.kind == "bbox_cutout":
            ex["image"] = _bbox_cutout(k_op, ex, arg)
        else:
            ex = warp_region(ex, region, MAPS[spec.base](arg, jnp.stack(_region_hw(region))), move_labels=True)
        return ex

    if prob >= 1.0:
        return run(example)
    do = jax.random.uniform(k_apply) < prob
    return jax.lax.cond(do, run, lambda ex: dict(ex), example)


def _per_box(key, example, spec: OpSpec, arg, prob: float):
    boxes, valid = example["boxes"], example["valid"]
    num = boxes.shape[0]
    k_perm, k_loop = jax.random.split(key)
    order = jax.random.permutation(k_perm, num)

    def body(image, inputs):
        i, k = inputs
        k_do, k_op = jax.random.split(k)
        region = box_region(boxes[i], example["image_hw"])
        do = valid[i] & (jax.random.uniform(k_do) < prob)
        image = jax.lax.cond(do, lambda im: _pixels_in_box(spec.kind, spec.base, k_op, im, region, arg),
                             lambda im: im, image)
        return image, None

    image, _ = jax.lax.scan(body, example["image"], (order, jax.random.split(k_loop, num)))
    out = dict(example)
    out["image"] = image
    return out
