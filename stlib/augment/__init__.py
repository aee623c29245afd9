"""Augment-S1..S4 by name (`augment.policy`), applied on the device inside the train step.

Sec. 3.1 / Table 1:
  s1  FlipCrop: horizontal flip + scale jitter (0.8, 1.2), then crop
  s2  AutoAugment (detection policy v0) + FlipCrop
  s3  AutoAugment + large scale jitter (0.5, 2.0) + flip + crop
  s4  RandAugment (magnitude 10) + large scale jitter + flip + crop
The AutoAugment/RandAugment part runs first, on the uint8 content (REFERENCE §3.1 order),
then flip, normalization and the scale jitter/crop of `flip_crop`.
"""
from __future__ import annotations

import dataclasses

import jax
from jax.sharding import PartitionSpec

from stlib.augment import flip_crop
from stlib.augment.autoaugment import autoaugment
from stlib.augment.flip_crop import normalize_image
from stlib.augment.ops import AUTOAUGMENT_CONSTANTS, RANDAUGMENT_CONSTANTS
from stlib.augment.randaugment import randaugment
from stlib.registry import Registry

# name -> policy(key, example, aug); iterated in order s1..s4 (the notebooks' galleries).
POLICIES = Registry("augment policy", field="augment.policy")


def augment_example(key, example: dict, aug) -> dict:
    """One example through the policy `aug.policy` (a `stlib.config.AugmentParams`).

    Args:
      key: PRNG key; same key, same output.
      example: `image` uint8 [S, S, 3], `image_hw` [2], `boxes` [M, 4] (pixels, yxyx),
        `classes` [M], `valid` [M], optional `mask` [S, S] (255 = ignore); others pass through.
    Returns:
      Same keys and shapes; `image` normalized float32, boxes/valid/mask transformed.
    """
    return POLICIES.get(aug.policy)(key, example, aug)


def _flip_crop(key, example, aug, policy: str):
    """Flip, normalization and the scale jitter/crop of `policy` (its jitter, `AugmentParams.jitter`)."""
    lo, hi = dataclasses.replace(aug, policy=policy).jitter()
    return flip_crop.augment_s1(key, example, lo, hi, aug.hflip)


@POLICIES.register("s1")
def augment_s1(key, example, aug):
    """Augment-S1: FlipCrop."""
    _, k_flipcrop = jax.random.split(key)
    return _flip_crop(k_flipcrop, example, aug, "s1")


def _autoaugment_then_flip_crop(key, example, aug, policy: str):
    k_policy, k_flipcrop = jax.random.split(key)
    constants = dataclasses.replace(AUTOAUGMENT_CONSTANTS, pixel_scale=aug.pixel_scale)
    example = autoaugment(k_policy, example, aug.autoaugment_policy, constants)
    return _flip_crop(k_flipcrop, example, aug, policy)


@POLICIES.register("s2")
def augment_s2(key, example, aug):
    """Augment-S2: AutoAugment (`aug.autoaugment_policy`) + FlipCrop."""
    return _autoaugment_then_flip_crop(key, example, aug, "s2")


@POLICIES.register("s3")
def augment_s3(key, example, aug):
    """Augment-S3: AutoAugment + large scale jitter + flip + crop."""
    return _autoaugment_then_flip_crop(key, example, aug, "s3")


@POLICIES.register("s4")
def augment_s4(key, example, aug):
    """Augment-S4: RandAugment + large scale jitter + flip + crop."""
    k_policy, k_flipcrop = jax.random.split(key)
    constants = dataclasses.replace(RANDAUGMENT_CONSTANTS, pixel_scale=aug.pixel_scale)
    example = randaugment(k_policy, example, aug.randaugment_layers, aug.randaugment_magnitude, constants)
    return _flip_crop(k_flipcrop, example, aug, "s4")


def batch_mode(mode: str = "auto", image_size: int = 0) -> str:
    """"auto" picks the faster of "map" and "vmap" as benchmarks/augment.py measured them.

    "map" runs the examples one after another (`lax.map`), so the ops a policy did not
    draw are skipped; "vmap" runs them side by side, which turns every conditional into a
    select that computes all branches. Measured (benchmarks/RESULTS.md, Augment-S2..S4):
    on 2 CPU cores map is 6-16x faster at 128 px and 6-9x at 640; on an H200 vmap is ~4x
    faster at 128 px and map ~1.7x faster at 640. So: map on CPU, and on accelerators
    vmap up to 256 px, map above (no TPU measurement yet).
    """
    if mode == "auto":
        if jax.default_backend() == "cpu":
            return "map"
        return "vmap" if image_size <= 256 else "map"
    if mode not in ("map", "vmap"):
        raise ValueError(f"augment_batch: mode must be auto|map|vmap, got {mode!r}")
    return mode


def augment_batch(key, batch: dict, aug, mode: str = "auto", mesh=None) -> dict:
    """Applies `aug.policy` to every example of `batch` with independent keys (see `batch_mode`).

    Example i always gets key i of `split(key, B)`, so the output does not depend on the
    devices. With a `mesh`, "map" runs per device on its own slice of the batch (`shard_map`
    over the `data` axis): a bare `lax.map` cannot be split along the batch, so XLA would
    gather the whole batch onto every device and lose data parallelism for the rest of the
    step (the mini step went from 192 to 340 ms on 2 CPU devices; benchmarks/RESULTS.md).
    """
    keys = jax.random.split(key, batch["image"].shape[0])
    fn = lambda k, ex: augment_example(k, ex, aug)
    if batch_mode(mode, batch["image"].shape[1]) == "vmap" or aug.policy == "s1":
        return jax.vmap(fn)(keys, batch)
    run = lambda ks, b: jax.lax.map(lambda args: fn(*args), (ks, b))
    if mesh is None or mesh.devices.size == 1:
        return run(keys, batch)
    spec = PartitionSpec("data")
    return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec), out_specs=spec)(keys, batch)


def prepare_eval_batch(batch: dict) -> dict:
    """Evaluation input: normalization only."""
    out = dict(batch)
    out["image"] = jax.vmap(normalize_image)(batch["image"], batch["image_hw"])
    return out
