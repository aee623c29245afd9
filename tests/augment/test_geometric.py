"""Geometric ops: boxes and masks follow the pixels; identities; fill; pixels outside the region."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.augment.flip_crop import IGNORE_LABEL
from stlib.augment.geometric import (FILL_VALUE, MAPS, box_region, content_region, invert_affine,
                                     warp_region)
from tests.augment.helpers import assert_boxes_match_mask, assert_mask_labels, disjoint_example

# (map, argument) pairs spanning level 10 in both directions at the test canvas' size.
CASES = [("Rotate", 30.0), ("Rotate", -30.0), ("Rotate", 12.0), ("ShearX", 0.3), ("ShearX", -0.3),
         ("ShearY", 0.3), ("ShearY", -0.15), ("TranslateX", 25.0), ("TranslateX", -9.5),
         ("TranslateY", 20.0), ("TranslateY", -7.0), ("Flip", 0.0)]


def _warp(ex, name, arg):
    region = content_region(ex)
    hw = jnp.stack([region[2] - region[0], region[3] - region[1]]).astype(jnp.float32)
    return jax.jit(lambda e: warp_region(e, region, MAPS[name](jnp.float32(arg), hw), True))(ex)


@pytest.mark.parametrize("name,arg", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_boxes_follow_pixels(name, arg, seed):
    ex = disjoint_example(seed, side=(8, 20))
    out = _warp(ex, name, arg)
    assert_boxes_match_mask(out, 3, context=f"{name}({arg})")
    assert_mask_labels(out, 3, context=f"{name}({arg})")
    # The pad around the content is never touched.
    h, w = np.asarray(ex["image_hw"])
    pad = np.ones(out["image"].shape[:2], bool)
    pad[:h, :w] = False
    np.testing.assert_array_equal(np.asarray(out["image"])[pad], np.asarray(ex["image"])[pad])
    np.testing.assert_array_equal(np.asarray(out["mask"])[pad], np.asarray(ex["mask"])[pad])
    assert out["image"].dtype == jnp.uint8 and np.isfinite(np.asarray(out["boxes"])).all()


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"])
def test_zero_magnitude_is_identity(name):
    ex = disjoint_example(0)
    out = _warp(ex, name, 0.0)
    for k in ("image", "mask", "valid"):
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(ex[k]))
    np.testing.assert_allclose(np.asarray(out["boxes"]), np.asarray(ex["boxes"]), atol=1e-4)


def test_flip_twice_is_identity_and_translate_back_restores_interior():
    ex = disjoint_example(1)
    back = _warp(_warp(ex, "Flip", 0.0), "Flip", 0.0)
    for k in ("image", "mask"):
        np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(ex[k]))
    np.testing.assert_allclose(np.asarray(back["boxes"]), np.asarray(ex["boxes"]), atol=1e-4)
    moved = _warp(ex, "TranslateX", 10.0)
    # Content shifted by -10 px (REFERENCE §1.6); the vacated right strip gets the fill value.
    h, w = np.asarray(ex["image_hw"])
    np.testing.assert_array_equal(np.asarray(moved["image"])[:h, :w - 10], np.asarray(ex["image"])[:h, 10:w])
    assert (np.asarray(moved["image"])[:h, w - 10:w] == FILL_VALUE).all()
    assert (np.asarray(moved["mask"])[:h, w - 10:w] == IGNORE_LABEL).all()


def test_rotation_turns_content_about_the_centre():
    ex = disjoint_example(2)
    out = _warp(ex, "Rotate", 90.0)
    # A square region rotated by 90 degrees is a transpose plus a flip, pixel for pixel.
    ex2 = dict(ex, image_hw=jnp.array([48, 48], jnp.int32))
    out = _warp(ex2, "Rotate", 90.0)
    src = np.asarray(ex2["image"])[:48, :48]
    got = np.asarray(out["image"])[:48, :48]
    assert np.array_equal(got, np.rot90(src, 1)) or np.array_equal(got, np.rot90(src, -1))


def test_invert_affine_round_trip():
    a = MAPS["Rotate"](jnp.float32(17.0), jnp.array([40.0, 60.0]))
    inv = invert_affine(a)
    p = jnp.array([3.0, 5.0])
    q = a[:, :2] @ p + a[:, 2]
    np.testing.assert_allclose(np.asarray(inv[:, :2] @ q + inv[:, 2]), np.asarray(p), atol=1e-4)


def test_per_box_warp_changes_only_the_box_crop_and_no_labels():
    ex = disjoint_example(3, side=(10, 16))
    region = box_region(ex["boxes"][0], ex["image_hw"])
    hw = jnp.stack([region[2] - region[0], region[3] - region[1]]).astype(jnp.float32)
    out = warp_region(ex, region, MAPS["TranslateY"](jnp.float32(4.0), hw), move_labels=False)
    r = np.asarray(region)
    changed = np.any(np.asarray(out["image"]) != np.asarray(ex["image"]), axis=-1)
    ys, xs = np.nonzero(changed)
    assert len(ys) > 0
    assert ys.min() >= r[0] and ys.max() < r[2] and xs.min() >= r[1] and xs.max() < r[3]
    for k in ("boxes", "valid", "mask"):
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(ex[k]))


def test_vmap_matches_per_example():
    exs = [disjoint_example(s) for s in range(3)]
    args = jnp.array([10.0, -20.0, 5.0])

    def one(e, a):
        region = content_region(e)
        hw = jnp.stack([region[2], region[3]]).astype(jnp.float32)
        return warp_region(e, region, MAPS["Rotate"](a, hw), True)
    batched = jax.vmap(one)(jax.tree.map(lambda *x: jnp.stack(x), *exs), args)
    for i, e in enumerate(exs):
        single = one(e, args[i])
        np.testing.assert_array_equal(np.asarray(batched["image"][i]), np.asarray(single["image"]))
        np.testing.assert_allclose(np.asarray(batched["boxes"][i]), np.asarray(single["boxes"]), atol=1e-4)
