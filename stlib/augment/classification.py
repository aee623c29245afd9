"""On-device augmentation of object-centric classification batches (pure JAX, static shapes).

Policies (``policy``):
  flip_crop   the classification twin of Augment-S1 (Sec. 3.1 / Table 1): per example a random
              horizontal flip and a scale jitter s ~ U(0.8, 1.2), then a random S x S crop; when
              scaled down the rest is padded bottom/right with the mean colour (0 after
              normalization). Our choice for the object images: it reuses
              `stlib.augment.flip_crop.augment_s1` on an example with no boxes.
  randaugment RandAugment (N layers, magnitude M) on the uint8 image, then flip_crop. It runs
              the detection RandAugment of Augment-S4 (`stlib.augment.randaugment`) with an
              all-invalid box set, so the box-aware ops act on the image only.

Output images are float32 normalized with `IMAGENET_MEAN` / `IMAGENET_STD`, like detection.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from stlib.augment.flip_crop import IMAGENET_MEAN, IMAGENET_STD, augment_s1
from stlib.augment.ops import RANDAUGMENT_CONSTANTS
from stlib.augment.randaugment import randaugment
from stlib.registry import Registry

__all__ = ["CLASSIFICATION_POLICIES", "IMAGENET_MEAN", "IMAGENET_STD", "augment_classification",
           "prepare_classification_eval"]

# name -> what runs before flip_crop: policy(key, example, randaugment_layers, randaugment_magnitude, constants)
CLASSIFICATION_POLICIES = Registry("classification augment policy", field="pretrain.augment")


@CLASSIFICATION_POLICIES.register("flip_crop")
def _flip_crop_only(key, example, layers, magnitude, constants):
    return example


@CLASSIFICATION_POLICIES.register("randaugment")
def _randaugment_first(key, example, layers, magnitude, constants):
    return randaugment(key, example, layers, magnitude, constants)


# RandAugment's classification constants (translate 100 px, cutout 40 px) were set for 224 px
# ImageNet crops; by default they are scaled by S / 224 so ops move the same share of the image.
RANDAUGMENT_REFERENCE_SIZE = 224


def _as_example(image):
    size = image.shape[0]
    return {"image": image, "image_hw": jnp.array([size, image.shape[1]], jnp.int32),
            "boxes": jnp.zeros((1, 4), jnp.float32), "classes": jnp.zeros((1,), jnp.int32),
            "valid": jnp.zeros((1,), bool)}


def augment_classification(key, images_uint8, policy: str = "flip_crop", randaugment_layers: int = 2,
                           randaugment_magnitude: float = 10.0, scale_range: tuple = (0.8, 1.2),
                           hflip: bool = True, pixel_scale: float | None = None, mesh=None):
    """Augments a batch: uint8 [B,S,S,3] -> normalized float32 [B,S,S,3]; jit-able.

    Args:
      key: PRNG key; example i uses key i of ``split(key, B)`` (same key, same output).
      images_uint8: uint8 [B, S, S, 3].
      policy: "flip_crop" or "randaugment" (see the module docstring).
      randaugment_layers, randaugment_magnitude: RandAugment N and M.
      scale_range: (min, max) of the scale jitter; (1, 1) turns it off.
      hflip: random horizontal flips.
      pixel_scale: multiplies RandAugment's pixel constants; None: S / 224.
      mesh: the device mesh of a sharded batch; RandAugment's per-example loop then runs on each
        device's own slice (`shard_map`), as `stlib.augment.augment_batch` does, instead of
        gathering the batch onto every device.
    """
    before = CLASSIFICATION_POLICIES.get(policy)
    if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
        raise ValueError(f"augment_classification: want images [B,S,S,3], got shape {images_uint8.shape}")
    size = images_uint8.shape[1]
    lo, hi = scale_range
    if pixel_scale is None:
        pixel_scale = size / RANDAUGMENT_REFERENCE_SIZE
    constants = dataclasses.replace(RANDAUGMENT_CONSTANTS, pixel_scale=pixel_scale)

    def one(k, image):
        k_policy, k_flipcrop = jax.random.split(k)
        ex = _as_example(image.astype(jnp.uint8))
        ex = before(k_policy, ex, randaugment_layers, randaugment_magnitude, constants)
        return augment_s1(k_flipcrop, ex, lo, hi, hflip)["image"]

    keys = jax.random.split(key, images_uint8.shape[0])
    if policy == "randaugment" and jax.default_backend() == "cpu":
        # lax.map skips the branches RandAugment did not draw (vmap computes them all); see
        # stlib.augment.batch_mode for the measurements.
        run = lambda ks, x: jax.lax.map(lambda a: one(*a), (ks, x))
        if mesh is None or mesh.devices.size == 1:
            return run(keys, images_uint8)
        spec = PartitionSpec("data")
        # check_vma off: the empty box set made inside is replicated while the images vary per device
        return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec), out_specs=spec, check_vma=False)(
            keys, images_uint8)
    return jax.vmap(one)(keys, images_uint8)


def prepare_classification_eval(images_uint8):
    """Evaluation input: uint8 [..., 3] -> normalized float32, no augmentation."""
    return (images_uint8.astype(jnp.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
