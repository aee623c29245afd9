"""SimCLR views: shapes, determinism, per-example keys, the identity path, crop/flip/gray/jitter
against independent formulas (colorsys, jax.image.resize, numpy)."""
import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.augment import simclr
from stlib.augment.flip_crop import IMAGENET_MEAN, IMAGENET_STD
from stlib.augment.simclr import simclr_views

S = 32
views = jax.jit(simclr_views, static_argnames=("crop_scale", "crop_ratio", "hflip", "color_strength", "color_prob",
                                                "gray_prob"))
PLAIN = dict(crop_scale=(1.0, 1.0), hflip=False, color_prob=0.0, gray_prob=0.0)


def _images(seed=0, b=4):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, S, S, 3), dtype=np.uint8))


def _normalize(x01):
    return (np.asarray(x01, np.float32) - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)


def _unnormalize(x):
    return np.asarray(x) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)


def test_shapes_determinism_and_independent_draws():
    images = _images()
    v1, v2 = views(jax.random.key(0), images)
    assert v1.shape == v2.shape == images.shape and v1.dtype == v2.dtype == jnp.float32
    assert bool(jnp.isfinite(v1).all() & jnp.isfinite(v2).all())
    # Clipped to [0, 1] before normalization.
    assert _unnormalize(v1).min() >= -1e-5 and _unnormalize(v1).max() <= 1 + 1e-5
    a1, a2 = views(jax.random.key(0), images)
    np.testing.assert_array_equal(v1, a1)
    np.testing.assert_array_equal(v2, a2)
    for i in range(images.shape[0]):                       # the two views of every example differ
        assert not np.allclose(v1[i], v2[i])
    b1, _ = views(jax.random.key(1), images)
    assert not np.allclose(v1, b1)
    # The same image twice in a batch is augmented differently.
    t1, _ = views(jax.random.key(2), jnp.stack([images[0], images[0], images[1], images[2]]))
    assert not np.allclose(t1[0], t1[1])


def test_an_example_depends_on_key_view_and_index_only():
    """Example i's views come from (key, view, i): the batch around it does not change them."""
    images = _images()
    kw = dict(color_prob=0.0, gray_prob=0.0)          # crop + flip: enough randomness, a cheaper compile
    v1, v2 = views(jax.random.key(0), images, **kw)
    s1, s2 = views(jax.random.key(0), images[:2], **kw)
    np.testing.assert_array_equal(s1, v1[:2])
    np.testing.assert_array_equal(s2, v2[:2])
    assert not np.allclose(v1, v2)

def test_identity_path_is_plain_normalization():
    images = _images()
    v1, v2 = views(jax.random.key(3), images, **PLAIN)
    want = _normalize(np.asarray(images) / 255.0)
    np.testing.assert_allclose(v1, want, atol=1e-5)
    np.testing.assert_allclose(v2, want, atol=1e-5)


def test_crop_is_a_bilinear_resize_of_a_window():
    images = _images(b=2)
    half = S // 2                        # area 1/4, ratio 1: a 16 x 16 window, resized x2
    v1, _ = views(jax.random.key(4), images, crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), hflip=False,
                  color_prob=0.0, gray_prob=0.0)
    resize = jax.jit(jax.vmap(lambda w: jax.image.resize(w, (S, S, 3), "linear")))
    offsets = [(y, x) for y in range(S - half + 1) for x in range(S - half + 1)]
    for img, out in zip(np.asarray(images, np.float32) / 255.0, np.asarray(v1)):
        windows = np.stack([img[y:y + half, x:x + half] for y, x in offsets])
        ref = _normalize(resize(jnp.asarray(windows)))
        err = np.abs(ref - out).max(axis=(1, 2, 3))
        assert err.min() < 1e-4, err.min()
    # Crops of different examples / views are at different places.
    assert not np.allclose(v1[0], _normalize(np.asarray(images[0]) / 255.0))


def test_flip_only_is_identity_or_mirror():
    images = _images(b=8)
    v1, v2 = views(jax.random.key(5), images, crop_scale=(1.0, 1.0), hflip=True, color_prob=0.0, gray_prob=0.0)
    ref = _normalize(np.asarray(images) / 255.0)
    outs = np.concatenate([v1, v2])
    refs = np.concatenate([ref, ref])
    mirrored = [np.allclose(o, r[:, ::-1], atol=1e-5) for o, r in zip(outs, refs)]
    same = [np.allclose(o, r, atol=1e-5) for o, r in zip(outs, refs)]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_grayscale_is_tf_luma_on_all_channels():
    images = _images()
    v1, _ = views(jax.random.key(6), images, crop_scale=(1.0, 1.0), hflip=False, color_prob=0.0, gray_prob=1.0)
    x = np.asarray(images, np.float64) / 255.0
    luma = 0.2989 * x[..., 0] + 0.5870 * x[..., 1] + 0.1140 * x[..., 2]
    np.testing.assert_allclose(_unnormalize(v1), np.repeat(luma[..., None], 3, -1), atol=1e-5)


def test_color_jitter_changes_colours_within_range():
    images = _images()
    v1, v2 = views(jax.random.key(7), images, crop_scale=(1.0, 1.0), hflip=False, color_prob=1.0, gray_prob=0.0,
                   color_strength=1.0)
    plain = _normalize(np.asarray(images) / 255.0)
    for v in (v1, v2):
        x = _unnormalize(v)
        assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5
        assert all(not np.allclose(a, b, atol=1e-3) for a, b in zip(np.asarray(v), plain))


def test_hsv_conversions_match_colorsys():
    rgb = np.random.default_rng(0).random((200, 3)).astype(np.float32)
    rgb[:5] = [[0.3, 0.3, 0.3], [0, 0, 0], [1, 1, 1], [1, 0, 0], [0.2, 0.9, 0.9]]   # greys and ties
    hsv = np.asarray(simclr.rgb_to_hsv(jnp.asarray(rgb)))
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in rgb.astype(np.float64)])
    np.testing.assert_allclose(hsv, ref, atol=1e-6)
    np.testing.assert_allclose(simclr.hsv_to_rgb(jnp.asarray(ref, jnp.float32)), rgb, atol=1e-6)


jitter = jax.jit(simclr._jitter, static_argnums=2)


@pytest.mark.parametrize("which, u_value", [(0, 0.9), (1, 0.1), (2, 0.8), (3, 0.2)])
def test_each_jitter_op_against_its_formula(which, u_value):
    """u = 0.5 makes every factor neutral (1, 1, 1, hue + 0); move one op's draw at a time."""
    strength = 1.0
    x = np.random.default_rng(1).random((8, 8, 3)).astype(np.float32)
    u = np.full(8, 0.5, np.float32)
    u[4:8] = [0.1, 0.2, 0.3, 0.4]        # order: brightness, contrast, saturation, hue
    u[which] = u_value
    got = np.asarray(jitter(jnp.asarray(u), jnp.asarray(x), strength))
    xd = x.astype(np.float64)
    if which == 0:                       # brightness: x * f, f ~ U(max(0, 1 - 0.8), 1 + 0.8)
        f = 0.2 + 1.6 * u_value
        want = np.clip(xd * f, 0, 1)
    elif which == 1:                     # contrast: (x - channel mean) * f + mean, f ~ U(0.2, 1.8)
        f = 0.2 + 1.6 * u_value
        m = xd.mean(axis=(0, 1))
        want = np.clip((xd - m) * f + m, 0, 1)
    else:
        hsv = np.array([colorsys.rgb_to_hsv(*p) for p in xd.reshape(-1, 3)])
        if which == 2:                   # saturation: s * f clipped, f ~ U(0.2, 1.8)
            hsv[:, 1] = np.clip(hsv[:, 1] * (0.2 + 1.6 * u_value), 0, 1)
        else:                            # hue: h + d mod 1, d ~ U(-0.2, 0.2)
            hsv[:, 0] = np.mod(hsv[:, 0] + (-0.2 + 0.4 * u_value), 1.0)
        want = np.array([colorsys.hsv_to_rgb(*p) for p in hsv]).reshape(x.shape)
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
    (dict(crop_scale=(0.5, 0.2)), "crop_scale"),
    (dict(crop_ratio=(1.5, 1.0)), "crop_ratio"),
    (dict(gray_prob=1.5), "gray_prob"),
    (dict(color_prob=-0.1), "color_prob"),
    (dict(color_strength=-1.0), "color_strength"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        simclr_views(jax.random.key(0), _images(), **kwargs)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        simclr_views(jax.random.key(0), _images().astype(jnp.float32))
    with pytest.raises(ValueError, match=r"\[B,H,W,3\]"):
        simclr_views(jax.random.key(0), _images()[..., :1])
