"""AutoAugment detection policies v0-v3 (Zoph et al. 2019), the AutoAugment of Augment-S2/S3.

Tables copied from REFERENCE §1.2-1.5 (TPU `utils/autoaugment_utils.py`); `v0` is the
policy of the AutoAugment-detection paper and the one the detection configs use
(REFERENCE §1.1, §1.8), so it is Augment-S2/S3's default. Mechanics (REFERENCE §1.1):
one sub-policy drawn uniformly per image, its ops applied in order, each with its own
probability. The TPU applies the policy to the decoded image before normalization, flip
and scale jitter; we apply it to the content rectangle of the host-resized canvas, which
for COCO at 640 is the decoded image up to a small resize.
"""
from __future__ import annotations

import jax

from stlib.augment.ops import AUTOAUGMENT_CONSTANTS, OpConstants, apply_op
from stlib.registry import Registry

# (op, probability, level) per op; one tuple per sub-policy.
POLICY_V0 = (
    (("TranslateX_BBox", 0.6, 4), ("Equalize", 0.8, 10)),
    (("TranslateY_Only_BBoxes", 0.2, 2), ("Cutout", 0.8, 8)),
    (("Sharpness", 0.0, 8), ("ShearX_BBox", 0.4, 0)),
    (("ShearY_BBox", 1.0, 2), ("TranslateY_Only_BBoxes", 0.6, 6)),
    (("Rotate_BBox", 0.6, 10), ("Color", 1.0, 6)),
)

POLICY_V1 = POLICY_V0 + (
    (("Color", 0.0, 0), ("ShearX_Only_BBoxes", 0.8, 4)),
    (("ShearY_Only_BBoxes", 0.8, 2), ("Flip_Only_BBoxes", 0.0, 10)),
    (("Equalize", 0.6, 10), ("TranslateX_BBox", 0.2, 2)),
    (("Color", 1.0, 10), ("TranslateY_Only_BBoxes", 0.4, 6)),
    (("Rotate_BBox", 0.8, 10), ("Contrast", 0.0, 10)),
    (("Cutout", 0.2, 2), ("Brightness", 0.8, 10)),
    (("Color", 1.0, 6), ("Equalize", 1.0, 2)),
    (("Cutout_Only_BBoxes", 0.4, 6), ("TranslateY_Only_BBoxes", 0.8, 2)),
    (("Color", 0.2, 8), ("Rotate_BBox", 0.8, 10)),
    (("Sharpness", 0.4, 4), ("TranslateY_Only_BBoxes", 0.0, 4)),
    (("Sharpness", 1.0, 4), ("SolarizeAdd", 0.4, 4)),
    (("Rotate_BBox", 1.0, 8), ("Sharpness", 0.2, 8)),
    (("ShearY_BBox", 0.6, 10), ("Equalize_Only_BBoxes", 0.6, 8)),
    (("ShearX_BBox", 0.2, 6), ("TranslateY_Only_BBoxes", 0.2, 10)),
    (("SolarizeAdd", 0.6, 8), ("Brightness", 0.8, 10)),
)

POLICY_V2 = (
    (("Color", 0.0, 6), ("Cutout", 0.6, 8), ("Sharpness", 0.4, 8)),
    (("Rotate_BBox", 0.4, 8), ("Sharpness", 0.4, 2), ("Rotate_BBox", 0.8, 10)),
    (("TranslateY_BBox", 1.0, 8), ("AutoContrast", 0.8, 2)),
    (("AutoContrast", 0.4, 6), ("ShearX_BBox", 0.8, 8), ("Brightness", 0.0, 10)),
    (("SolarizeAdd", 0.2, 6), ("Contrast", 0.0, 10), ("AutoContrast", 0.6, 0)),
    (("Cutout", 0.2, 0), ("Solarize", 0.8, 8), ("Color", 1.0, 4)),
    (("TranslateY_BBox", 0.0, 4), ("Equalize", 0.6, 8), ("Solarize", 0.0, 10)),
    (("TranslateY_BBox", 0.2, 2), ("ShearY_BBox", 0.8, 8), ("Rotate_BBox", 0.8, 8)),
    (("Cutout", 0.8, 8), ("Brightness", 0.8, 8), ("Cutout", 0.2, 2)),
    (("Color", 0.8, 4), ("TranslateY_BBox", 1.0, 6), ("Rotate_BBox", 0.6, 6)),
    (("Rotate_BBox", 0.6, 10), ("BBox_Cutout", 1.0, 4), ("Cutout", 0.2, 8)),
    (("Rotate_BBox", 0.0, 0), ("Equalize", 0.6, 6), ("ShearY_BBox", 0.6, 8)),
    (("Brightness", 0.8, 8), ("AutoContrast", 0.4, 2), ("Brightness", 0.2, 2)),
    (("TranslateY_BBox", 0.4, 8), ("Solarize", 0.4, 6), ("SolarizeAdd", 0.2, 10)),
    (("Contrast", 1.0, 10), ("SolarizeAdd", 0.2, 8), ("Equalize", 0.2, 4)),
)

POLICY_V3 = (
    (("Posterize", 0.8, 2), ("TranslateX_BBox", 1.0, 8)),
    (("BBox_Cutout", 0.2, 10), ("Sharpness", 1.0, 8)),
    (("Rotate_BBox", 0.6, 8), ("Rotate_BBox", 0.8, 10)),
    (("Equalize", 0.8, 10), ("AutoContrast", 0.2, 10)),
    (("SolarizeAdd", 0.2, 2), ("TranslateY_BBox", 0.2, 8)),
    (("Sharpness", 0.0, 2), ("Color", 0.4, 8)),
    (("Equalize", 1.0, 8), ("TranslateY_BBox", 1.0, 8)),
    (("Posterize", 0.6, 2), ("Rotate_BBox", 0.0, 10)),
    (("AutoContrast", 0.6, 0), ("Rotate_BBox", 1.0, 6)),
    (("Equalize", 0.0, 4), ("Cutout", 0.8, 10)),
    (("Brightness", 1.0, 2), ("TranslateY_BBox", 1.0, 6)),
    (("Contrast", 0.0, 2), ("ShearY_BBox", 0.8, 0)),
    (("AutoContrast", 0.8, 10), ("Contrast", 0.2, 10)),
    (("Rotate_BBox", 1.0, 10), ("Cutout", 1.0, 10)),
    (("SolarizeAdd", 0.8, 6), ("Equalize", 0.8, 8)),
)

POLICY_TEST = ((("TranslateX_BBox", 1.0, 4), ("Equalize", 1.0, 10)),)

# name -> sub-policies (`augment.autoaugment_policy`)
POLICIES = Registry("AutoAugment policy", field="augment.autoaugment_policy")
for _name, _policy in (("v0", POLICY_V0), ("v1", POLICY_V1), ("v2", POLICY_V2), ("v3", POLICY_V3),
                       ("test", POLICY_TEST)):
    POLICIES.register(_name, _policy)


def apply_subpolicy(key, example, subpolicy, constants: OpConstants = AUTOAUGMENT_CONSTANTS):
    """Runs the ops of one sub-policy in order, each with its own probability."""
    for (name, prob, level), k in zip(subpolicy, jax.random.split(key, len(subpolicy))):
        example = apply_op(k, example, name, level, prob, constants)
    return example


def autoaugment(key, example, policy: str = "v0", constants: OpConstants = AUTOAUGMENT_CONSTANTS):
    """AutoAugment-detection on one example (uint8 image; boxes in pixels; optional mask).

    Args:
      key: PRNG key.
      example: dict with `image` uint8 [S, S, 3], `image_hw` [2], `boxes` [M, 4], `valid` [M],
        optional `mask` [S, S]; other keys pass through.
      policy: v0 (default, the paper's) | v1 | v2 | v3 | test.
      constants: the ops' pixel constants (REFERENCE §1.1), possibly rescaled.
    Returns:
      The example with the same keys, shapes and dtypes.
    """
    subpolicies = POLICIES.get(policy)
    k_choice, k_apply = jax.random.split(key)
    index = jax.random.randint(k_choice, (), 0, len(subpolicies))
    branches = [lambda k, ex, sp=sp: apply_subpolicy(k, ex, sp, constants) for sp in subpolicies]
    return jax.lax.switch(index, branches, k_apply, dict(example))
