"""Augmentation policies by name (`augment.policy`), applied on device inside the input step."""
from __future__ import annotations

import jax

from stlib.augment.flip_crop import augment_s1, normalize_image

POLICIES = ("s1",)


def augment_batch(key, batch: dict, aug) -> dict:
    """Applies the policy named by `aug.policy` to every example of `batch` (independent keys).

    Args:
      key: PRNG key.
      batch: dict of [B, ...] arrays (see `stlib.augment.flip_crop`); image uint8.
      aug: `stlib.config.AugmentParams`.
    Returns:
      The batch with a normalized float32 image and transformed boxes/valid/mask.
    """
    if aug.policy != "s1":
        raise ValueError(f"augment.policy: unknown policy {aug.policy!r} (known: {', '.join(POLICIES)})")
    keys = jax.random.split(key, batch["image"].shape[0])
    fn = lambda k, ex: augment_s1(k, ex, aug.scale_min, aug.scale_max, aug.hflip)
    return jax.vmap(fn)(keys, batch)


def prepare_eval_batch(batch: dict) -> dict:
    """Evaluation input: normalization only."""
    out = dict(batch)
    out["image"] = jax.vmap(normalize_image)(batch["image"], batch["image_hw"])
    return out
