"""RandAugment for detection, the RandAugment of Augment-S4 (Sec. 3.1: magnitude 10).

The TPU detection code has no RandAugment (REFERENCE §2.1); this follows TFM's
`RandAugment.build_for_detection` (REFERENCE §2.2): the 16 RandAugment ops with the
geometric ones swapped for their box-aware `*_BBox` versions, plus an identity branch;
each of N layers draws one of the 17 uniformly and always applies it at level M
(TFM samples a probability but does not use it). Constants are TFM's class defaults:
cutout 40 px, translate 100 px. N is not stated in the paper: params choose 2, the
RandAugment default.
"""
from __future__ import annotations

import jax

from stlib.augment.ops import RANDAUGMENT_CONSTANTS, OpConstants, apply_op

# REFERENCE §2.2: TFM's op list, geometric ops replaced by their _BBox versions.
RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate_BBox", "Posterize", "Solarize", "Color",
                   "Contrast", "Brightness", "Sharpness", "ShearX_BBox", "ShearY_BBox", "TranslateX_BBox",
                   "TranslateY_BBox", "Cutout", "SolarizeAdd")


def randaugment(key, example, num_layers: int = 2, magnitude: float = 10.0,
                constants: OpConstants = RANDAUGMENT_CONSTANTS):
    """RandAugment (detection) on one example; same contract as `autoaugment`.

    Args:
      key: PRNG key.
      example: dict with `image` uint8, `image_hw`, `boxes` (pixels), `valid`, optional `mask`.
      num_layers: N, ops applied in sequence.
      magnitude: M, the level of every op (0-10; larger extrapolates linearly).
      constants: pixel constants (REFERENCE §2.2), possibly rescaled.
    """
    branches = [lambda k, ex, name=name: apply_op(k, ex, name, magnitude, 1.0, constants)
                for name in RANDAUGMENT_OPS]
    branches.append(lambda k, ex: dict(ex))  # TFM's identity branch
    for k in jax.random.split(key, num_layers):
        k_choice, k_op = jax.random.split(k)
        index = jax.random.randint(k_choice, (), 0, len(branches))
        example = jax.lax.switch(index, branches, k_op, dict(example))
    return example
