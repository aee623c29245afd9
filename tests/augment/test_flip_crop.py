"""Augment-S1: boxes and masks follow the pixels, flip twice is identity, determinism."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.augment import augment_batch
from stlib.augment.flip_crop import IGNORE_LABEL, augment_s1, hflip, normalize_image
from stlib.config import AugmentParams

S = 64


def make_example(rng, h=48, w=64, n=3):
    """A canvas whose mask carries each box as a label (k+1) so pixels can be checked against boxes."""
    img = np.zeros((S, S, 3), np.uint8)
    img[:h, :w] = rng.integers(0, 255, size=(h, w, 3))
    boxes = np.zeros((4, 4), np.float32)
    mask = np.full((S, S), IGNORE_LABEL, np.uint8)
    mask[:h, :w] = 0
    valid = np.zeros(4, bool)
    for k in range(n):
        y0, x0 = rng.integers(0, h - 12), rng.integers(0, w - 12)
        y1, x1 = y0 + rng.integers(6, 12), x0 + rng.integers(6, 12)
        boxes[k] = (y0, x0, y1, x1)
        mask[y0:y1, x0:x1] = k + 1
        valid[k] = True
    return {"image": jnp.asarray(img), "image_hw": jnp.array([h, w], jnp.int32), "boxes": jnp.asarray(boxes),
            "classes": jnp.arange(1, 5, dtype=jnp.int32), "valid": jnp.asarray(valid), "mask": jnp.asarray(mask)}


def disjoint_example(seed):
    rng = np.random.default_rng(seed)
    while True:
        ex = make_example(rng)
        m = np.asarray(ex["mask"])
        areas = [(m == k + 1).sum() for k in range(3)]
        b = np.asarray(ex["boxes"])
        full = [(b[k, 2] - b[k, 0]) * (b[k, 3] - b[k, 1]) for k in range(3)]
        if areas == full:  # no box hides another
            return ex


def test_flip_twice_is_identity():
    ex = make_example(np.random.default_rng(0))
    back = hflip(hflip(ex))
    for k in ("image", "mask"):
        np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(ex[k]))
    np.testing.assert_allclose(np.asarray(back["boxes"]), np.asarray(ex["boxes"]), atol=1e-5)


@pytest.mark.parametrize("seed", range(12))
def test_boxes_follow_pixels(seed):
    ex = disjoint_example(seed)
    out = jax.jit(lambda k, e: augment_s1(k, e, 0.8, 1.2, True))(jax.random.PRNGKey(seed), ex)
    m = np.asarray(out["mask"])
    for k in range(3):
        ys, xs = np.nonzero(m == k + 1)
        if not bool(out["valid"][k]):
            assert len(ys) < 2 * S  # dropped only when (nearly) nothing is left
            continue
        y0, x0, y1, x1 = np.asarray(out["boxes"][k])
        assert abs(ys.min() - y0) <= 1 and abs(xs.min() - x0) <= 1
        assert abs(ys.max() + 1 - y1) <= 1 and abs(xs.max() + 1 - x1) <= 1


def test_mask_holds_only_valid_labels_or_ignore_and_image_is_finite():
    batch = jax.tree.map(lambda *x: jnp.stack(x), *[make_example(np.random.default_rng(i)) for i in range(4)])
    out = augment_batch(jax.random.PRNGKey(0), batch, AugmentParams(scale_min=0.5, scale_max=2.0))
    vals = set(np.unique(np.asarray(out["mask"])).tolist())
    assert vals <= {0, 1, 2, 3, IGNORE_LABEL}
    assert np.isfinite(np.asarray(out["image"])).all() and np.isfinite(np.asarray(out["boxes"])).all()
    b = np.asarray(out["boxes"])
    assert (b >= 0).all() and (b <= S).all()
    assert out["image"].shape == (4, S, S, 3) and out["image"].dtype == jnp.float32


def test_determinism_per_key():
    batch = jax.tree.map(lambda *x: jnp.stack(x), *[make_example(np.random.default_rng(i)) for i in range(4)])
    aug = AugmentParams()
    a = augment_batch(jax.random.PRNGKey(1), batch, aug)
    b = augment_batch(jax.random.PRNGKey(1), batch, aug)
    c = augment_batch(jax.random.PRNGKey(2), batch, aug)
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    assert not np.array_equal(np.asarray(a["image"]), np.asarray(c["image"]))


def test_scale_one_without_flip_only_normalizes():
    ex = make_example(np.random.default_rng(3))
    out = augment_s1(jax.random.PRNGKey(0), ex, 1.0, 1.0, flip=False)
    np.testing.assert_allclose(np.asarray(out["image"]), np.asarray(normalize_image(ex["image"], ex["image_hw"])),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["boxes"]), np.asarray(ex["boxes"]), atol=1e-5)
