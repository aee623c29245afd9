"""Augment-S1: boxes and masks follow the pixels, flip twice is identity, determinism."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.augment import augment_batch
from stlib.augment.flip_crop import IGNORE_LABEL, augment_s1, hflip, normalize_image
from stlib.config import AugmentParams

from tests.augment.helpers import S, disjoint_example, make_example


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
    out = augment_batch(jax.random.PRNGKey(0), batch, AugmentParams(scale_range=(0.5, 2.0)))
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
