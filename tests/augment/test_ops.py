"""Every named op: static shapes and dtypes, boxes follow pixels, level-0 identities, values in range."""
import dataclasses

import jax
import numpy as np
import pytest

from stlib.augment.ops import AUTOAUGMENT_CONSTANTS, DETECTION_OPS, OPS, apply_op
from tests.augment.helpers import assert_boxes_match_mask, assert_mask_labels, disjoint_example, stack

CONST = dataclasses.replace(AUTOAUGMENT_CONSTANTS, pixel_scale=0.1)  # 64-px canvases
# REFERENCE §1.7: at level 0 these ops change nothing (translate/rotate/shear 0, pad 0, addition 0).
IDENTITY_AT_ZERO = ("SolarizeAdd", "Cutout", "BBox_Cutout", "Cutout_Only_BBoxes", "Rotate_BBox", "ShearX_BBox",
                    "ShearY_BBox", "TranslateX_BBox", "TranslateY_BBox", "Rotate_Only_BBoxes",
                    "ShearX_Only_BBoxes", "ShearY_Only_BBoxes", "TranslateX_Only_BBoxes",
                    "TranslateY_Only_BBoxes")


@pytest.fixture(scope="module")
def batch():
    return stack([disjoint_example(s, side=(8, 20)) for s in range(4)])


def _run(batch, name, level, seed=0, prob=3.0):
    """The op on a batch (prob 3: per-box ops hit every box, whole-image ops always run)."""
    fn = jax.jit(jax.vmap(lambda k, ex: apply_op(k, ex, name, level, prob, CONST)))
    return fn(jax.random.split(jax.random.PRNGKey(seed), batch["image"].shape[0]), batch)


def test_the_25_detection_ops_of_reference():
    assert len(DETECTION_OPS) == 25 and set(OPS) == set(DETECTION_OPS) | {"Invert"}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_keeps_shapes_labels_and_range(batch, name):
    for level in (0, 5, 10):
        out = _run(batch, name, level)
        assert jax.tree.map(lambda a: (a.shape, a.dtype), out) == jax.tree.map(lambda a: (a.shape, a.dtype), batch)
        for i in range(4):
            ex = jax.tree.map(lambda a: a[i], out)
            assert_boxes_match_mask(ex, 3, context=f"{name}@{level}")
            assert_mask_labels(ex, 3, context=f"{name}@{level}")
        assert np.isfinite(np.asarray(out["boxes"])).all()
        if OPS[name].kind in ("color", "cutout", "bbox_cutout") or OPS[name].kind.startswith("box_"):
            # Pixel ops leave labels alone.
            for k in ("boxes", "valid", "mask"):
                np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(batch[k]))
        # The pad around the content never changes.
        h, w = np.asarray(batch["image_hw"][0])
        np.testing.assert_array_equal(np.asarray(out["image"])[:, h:], np.asarray(batch["image"])[:, h:])


@pytest.mark.parametrize("name", IDENTITY_AT_ZERO)
def test_level_zero_identity(batch, name):
    out = _run(batch, name, 0)
    for k in ("image", "mask", "valid"):
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(batch[k]), err_msg=name)
    np.testing.assert_allclose(np.asarray(out["boxes"]), np.asarray(batch["boxes"]), atol=1e-4)


@pytest.mark.parametrize("name", ["Rotate_BBox", "Cutout", "TranslateY_Only_BBoxes", "Color"])
def test_probability_zero_skips_and_keys_decide(batch, name):
    out = _run(batch, name, 10, prob=0.0)
    np.testing.assert_array_equal(np.asarray(out["image"]), np.asarray(batch["image"]))
    a, b, c = (_run(batch, name, 10, seed=s, prob=1.0) for s in (1, 1, 2))
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    if name != "Color":  # Color has no randomness
        assert not np.array_equal(np.asarray(a["image"]), np.asarray(c["image"]))


def test_per_box_ops_touch_only_box_crops(batch):
    out = _run(batch, "Cutout_Only_BBoxes", 10)
    changed = np.any(np.asarray(out["image"]) != np.asarray(batch["image"]), axis=-1)
    inside = np.zeros_like(changed)
    for i in range(4):
        for k in range(3):
            y0, x0, y1, x1 = np.asarray(batch["boxes"][i, k]).astype(int)
            inside[i, y0:y1 + 1, x0:x1 + 1] = True
    assert changed.any() and not (changed & ~inside).any()


def test_random_sign_covers_both_directions(batch):
    ex = jax.tree.map(lambda a: a[:1], batch)
    shifts = set()
    for seed in range(8):
        out = _run(ex, "TranslateX_BBox", 10, seed=seed)
        shifts.add(float(out["boxes"][0, 0, 1] - batch["boxes"][0, 0, 1]) > 0)
    assert shifts == {True, False}
