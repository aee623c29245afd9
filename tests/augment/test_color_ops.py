"""Pixel-only AutoAugment / RandAugment ops: bit-exact against TF primitives and TPU formulas,
level-0 identities, region semantics, jit/vmap, cutout determinism."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.augment import color_ops as C

tf = pytest.importorskip("tensorflow")

H, W = 24, 30
FULL = np.array([0, 0, H, W], np.int32)
LEVEL_FACTORS = [l / 10 * 1.8 + 0.1 for l in range(11)]  # REFERENCE §1.7
# A non-identity argument for every op (used by the region tests).
ARGS = {"AutoContrast": 0.0, "Equalize": 0.0, "Posterize": 2.0, "Solarize": 100.0, "SolarizeAdd": 60.0,
        "Invert": 0.0, "Color": 0.28, "Contrast": 1.72, "Brightness": 1.54, "Sharpness": 0.1}


@functools.lru_cache(maxsize=None)
def jitted(name):
    return jax.jit(C.COLOR_OPS[name])


def call(name, image, region, arg):
    return np.asarray(jitted(name)(jnp.asarray(image), jnp.asarray(region, jnp.int32), jnp.float32(arg)))


def rand_image(seed, h=H, w=W, lo=0, hi=256):
    return np.random.default_rng(seed).integers(lo, hi, (h, w, 3)).astype(np.uint8)


# ----------------------------------------------------------------------------- TF cross-checks

def test_grayscale_matches_tf():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (512, 512, 3)).astype(np.uint8)
    ref = tf.image.rgb_to_grayscale(colours).numpy()[..., 0]
    np.testing.assert_array_equal(np.asarray(jax.jit(C.rgb_to_grayscale)(colours)), ref)
    img = rand_image(1)
    out = call("Color", img, FULL, 0.0)  # factor 0 -> the degenerate image itself
    np.testing.assert_array_equal(out, np.repeat(tf.image.rgb_to_grayscale(img).numpy(), 3, axis=-1))


def test_tf_uint8_shift_clamps_to_7():
    # The surprising TF fact Posterize relies on: shifts >= 8 of a uint8 act like shifts by 7.
    r = tf.bitwise.right_shift(tf.constant([200], tf.uint8), tf.constant([8], tf.uint8)).numpy()
    assert r.tolist() == [1]


@pytest.mark.parametrize("bits", range(9))
def test_posterize_matches_tf(bits):
    v = np.arange(256, dtype=np.uint8)
    img = np.stack([v] * 3, -1).reshape(16, 16, 3)
    shift = 8 - bits  # TPU `posterize`
    ref = tf.bitwise.left_shift(tf.bitwise.right_shift(img, shift), shift).numpy()
    out = call("Posterize", img, [0, 0, 16, 16], bits)
    np.testing.assert_array_equal(out, ref)
    if bits == 0:
        assert set(np.unique(out)) == {0, 128}


def pil_equalize(channel):
    """Straightforward NumPy transcription of PIL ImageOps.equalize for one uint8 channel."""
    histo = np.bincount(channel.ravel(), minlength=256)
    nonzero = histo[histo > 0]
    step = (nonzero.sum() - nonzero[-1]) // 255 if len(nonzero) else 0
    if step == 0:
        return channel
    lut, n = [], step // 2
    for count in histo:
        lut.append(min(255, n // step))
        n += count
    return np.asarray(lut, np.uint8)[channel]


@pytest.mark.parametrize("seed,lo,hi", [(0, 0, 256), (1, 100, 140), (2, 30, 32), (3, 77, 78), (4, 0, 2)])
def test_equalize_matches_pil(seed, lo, hi):
    img = rand_image(seed, lo=lo, hi=hi)
    img[0, 0, 0] = 255  # exercise the top bin / "last nonzero" rule
    ref = np.stack([pil_equalize(img[..., c]) for c in range(3)], -1)
    np.testing.assert_array_equal(call("Equalize", img, FULL, 0.0), ref)


def tf_autocontrast(image):
    """TPU `autocontrast`, transcribed with TF ops."""
    def scale_channel(im):
        lo = tf.cast(tf.reduce_min(im), tf.float32)
        hi = tf.cast(tf.reduce_max(im), tf.float32)
        if not hi > lo:
            return im
        scale = 255.0 / (hi - lo)
        offset = -lo * scale
        im = tf.cast(im, tf.float32) * scale + offset
        return tf.cast(tf.clip_by_value(im, 0.0, 255.0), tf.uint8)
    return tf.stack([scale_channel(image[:, :, c]) for c in range(3)], 2).numpy()


def test_autocontrast_matches_tf():
    rng = np.random.default_rng(5)
    for k in range(40):
        lo, hi = sorted(rng.integers(0, 256, 2))
        img = rng.integers(lo, hi + 1, (8, 12, 3)).astype(np.uint8)
        img[0, 0] = lo
        img[-1, -1, :2] = hi  # channel 2 may stay flat
        np.testing.assert_array_equal(call("AutoContrast", img, [0, 0, 8, 12], 0.0), tf_autocontrast(img))
    full = rand_image(6)
    full[0, 0], full[1, 1] = 0, 255  # scale exactly 1.0: identity (GPU division once gave 0.99999994)
    np.testing.assert_array_equal(call("AutoContrast", full, FULL, 0.0), full)


def tf_blend(image1, image2, factor):
    """TPU `blend`, transcribed with TF ops (separate Mul / AddV2, no fused multiply-add)."""
    if factor == 0.0:
        return image1
    if factor == 1.0:
        return image2
    image1, image2 = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
    temp = image1 + factor * (image2 - image1)
    if 0.0 < factor < 1.0:
        return tf.cast(temp, tf.uint8).numpy()
    return tf.cast(tf.clip_by_value(temp, 0.0, 255.0), tf.uint8).numpy()


def test_blend_matches_tf_all_pixel_pairs():
    a, b = (x.astype(np.uint8) for x in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    factors = LEVEL_FACTORS + [0.0, 1.0, -0.3, 0.999, 2.5] + list(np.random.default_rng(0).uniform(0, 2, 8))
    blend = jax.jit(C.blend)
    for f in factors:
        f = np.float32(f)
        np.testing.assert_array_equal(np.asarray(blend(a, b, f)), tf_blend(a, b, float(f)), err_msg=str(f))


SHARP_IMAGES = {
    "random": lambda: rand_image(6, 40, 48),
    "flat_rows": lambda: np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None], (256, 5, 3)).copy(),
    "blocks": lambda: np.repeat(np.repeat(rand_image(7, 12, 12), 3, 0), 3, 1),
    "bright": lambda: rand_image(8, 20, 20, lo=250),
    "dark": lambda: rand_image(9, 20, 20, hi=4),
}


def fma_depthwise_reference(img):
    """TF's AVX-512 CPU depthwise kernel in numpy: the 9 taps row-major, acc = fma(x, w, acc) in float32.
    float64 holds x * w + acc exactly (8 + 24 bits of product, sums below 2^13 with ulps down to
    2^-27), so one rounding to float32 per tap is exactly a fused multiply-add."""
    w = (np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13.0)).astype(np.float32)
    x = img.astype(np.float64)
    h, wd, _ = img.shape
    acc = np.zeros((h - 2, wd - 2, img.shape[2]), np.float32)
    for i in range(3):
        for j in range(3):
            acc = (x[i:i + h - 2, j:j + wd - 2] * np.float64(w[i, j]) + acc.astype(np.float64)).astype(np.float32)
    return np.clip(acc, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", sorted(SHARP_IMAGES))
def test_sharpness_degenerate_matches_tf_depthwise_conv(kind):
    """Exactly the FMA kernel (an independent numpy reference), the same on every machine since the op
    is integer arithmetic. TF itself is CPU-dependent: its depthwise kernel fuses the multiply-adds
    where the build uses FMA (the AVX-512 EPYC the op was written on) and rounds each product first
    elsewhere (an AVX2 EPYC), so against TF the op is within one level, and equal where TF uses FMA."""
    img = SHARP_IMAGES[kind]()
    kernel = tf.tile(tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32, shape=[3, 3, 1, 1]) / 13.0,
                     [1, 1, 3, 1])
    ref = tf.nn.depthwise_conv2d(tf.cast(img, tf.float32)[None], kernel, [1, 1, 1, 1], padding="VALID")
    ref = tf.cast(tf.clip_by_value(ref, 0.0, 255.0), tf.uint8).numpy()[0]
    h, w, _ = img.shape
    out = call("Sharpness", img, [0, 0, h, w], 0.0)
    np.testing.assert_array_equal(out[1:-1, 1:-1], fma_depthwise_reference(img))
    assert np.abs(out[1:-1, 1:-1].astype(int) - ref.astype(int)).max() <= 1
    border = np.ones((h, w), bool)
    border[1:-1, 1:-1] = False
    np.testing.assert_array_equal(out[border], img[border])
    if kind == "flat_rows":  # TF's FMA accumulation turns a flat v into v - 1 for most v
        assert (out[2:-2, 1:-1] < img[2:-2, 1:-1]).any()


def test_contrast_degenerate_is_pixel_count_over_256():
    img = rand_image(10, 64, 80)
    for region, n in (([0, 0, 64, 80], 64 * 80), ([5, 7, 25, 30], 20 * 23)):
        out = call("Contrast", img, region, 0.0)
        y0, x0, y1, x1 = region
        assert (out[y0:y1, x0:x1] == min(n // 256, 255)).all()
    big = np.zeros((300, 300, 3), np.uint8)  # >= 65,280 pixels: saturates at 255
    assert (call("Contrast", big, [0, 0, 300, 300], 0.0) == 255).all()


def test_simple_lut_ops():
    img = rand_image(11)
    v = img.astype(np.int32)
    np.testing.assert_array_equal(call("Solarize", img, FULL, 100), np.where(v < 100, v, 255 - v))
    np.testing.assert_array_equal(call("SolarizeAdd", img, FULL, 60), np.where(v < 128, np.minimum(v + 60, 255), v))
    np.testing.assert_array_equal(call("Invert", img, FULL, 0), 255 - v)
    np.testing.assert_array_equal(call("Brightness", img, FULL, 0.0), 0 * v)
    np.testing.assert_array_equal(call("Brightness", img, FULL, 0.5), (v * np.float32(0.5)).astype(np.uint8))


# ----------------------------------------------------------------------------- identities

@pytest.mark.parametrize("name,arg", [("Solarize", 256), ("SolarizeAdd", 0), ("Posterize", 8), ("Color", 1.0),
                                      ("Contrast", 1.0), ("Brightness", 1.0), ("Sharpness", 1.0)])
def test_level_identities(name, arg):
    img = rand_image(12)
    np.testing.assert_array_equal(call(name, img, FULL, arg), img)


def test_cutout_pad_zero_is_identity():
    img = rand_image(13)
    out = jax.jit(C.cutout)(jax.random.PRNGKey(0), img, jnp.asarray(FULL), jnp.float32(0))
    np.testing.assert_array_equal(np.asarray(out), img)


# ----------------------------------------------------------------------------- region semantics

REGIONS = [[3, 4, 17, 21], [0, 0, H, W], [10, 0, 11, 30], [5, 5, 8, 7]]


@pytest.mark.parametrize("name", sorted(C.COLOR_OPS))
def test_region_equals_op_on_crop(name):
    img = rand_image(14)
    img[4:9, 6:12] = 40  # some structure so statistics differ between region and full image
    for y0, x0, y1, x1 in REGIONS:
        out = call(name, img, [y0, x0, y1, x1], ARGS[name])
        assert out.dtype == np.uint8 and out.shape == img.shape
        outside = np.ones((H, W), bool)
        outside[y0:y1, x0:x1] = False
        np.testing.assert_array_equal(out[outside], img[outside])
        crop = img[y0:y1, x0:x1]
        ref = call(name, crop, [0, 0, y1 - y0, x1 - x0], ARGS[name])
        np.testing.assert_array_equal(out[y0:y1, x0:x1], ref)


@pytest.mark.parametrize("name", sorted(C.COLOR_OPS))
def test_empty_region_is_noop(name):
    img = rand_image(15)
    for region in ([5, 5, 5, 9], [5, 5, 9, 5], [9, 9, 2, 3], [0, 0, 0, 0]):
        np.testing.assert_array_equal(call(name, img, region, ARGS[name]), img)
    out = C.cutout(jax.random.PRNGKey(1), img, jnp.array([9, 9, 2, 3]), jnp.float32(5))
    np.testing.assert_array_equal(np.asarray(out), img)


# ----------------------------------------------------------------------------- jit / vmap

BATCH_REGIONS = np.array([[0, 0, H, W], [2, 3, 20, 25], [7, 1, 8, 29], [4, 4, 4, 10]], np.int32)


@pytest.mark.parametrize("name", sorted(C.COLOR_OPS))
def test_vmap_matches_per_example(name):
    imgs = np.stack([rand_image(20 + i) for i in range(4)])
    base = ARGS[name]
    args = np.array([base, base * 0.5, base * 1.5 + 1, 0.0], np.float32)
    out = np.asarray(jax.jit(jax.vmap(C.COLOR_OPS[name]))(imgs, BATCH_REGIONS, args))
    for i in range(4):
        np.testing.assert_array_equal(out[i], np.asarray(C.COLOR_OPS[name](imgs[i], BATCH_REGIONS[i], args[i])))


def test_cutout_vmap_and_determinism():
    imgs = np.stack([rand_image(30 + i) for i in range(4)])
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    pads = np.array([3, 5, 0, 2], np.float32)
    out = np.asarray(jax.jit(jax.vmap(C.cutout))(keys, imgs, BATCH_REGIONS, pads))
    for i in range(4):
        np.testing.assert_array_equal(out[i], np.asarray(C.cutout(keys[i], imgs[i], BATCH_REGIONS[i], pads[i])))


def test_cutout_hole():
    img = np.zeros((H, W, 3), np.uint8)
    region = jnp.array([3, 4, 17, 21])
    fn = jax.jit(C.cutout)
    outs = [np.asarray(fn(jax.random.PRNGKey(k), img, region, jnp.float32(3))) for k in range(6)]
    np.testing.assert_array_equal(outs[0], np.asarray(fn(jax.random.PRNGKey(0), img, region, jnp.float32(3))))
    assert any((o != outs[0]).any() for o in outs[1:])
    for o in outs:
        hole = (o == C.REPLACE_VALUE).all(-1)
        assert (o[~hole] == 0).all() and hole.any()
        ys, xs = np.nonzero(hole)
        assert ys.min() >= 3 and ys.max() < 17 and xs.min() >= 4 and xs.max() < 21
        assert ys.max() - ys.min() < 6 and xs.max() - xs.min() < 6  # side <= 2 * pad
        assert hole.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # a rectangle


def test_fill_rect():
    img = rand_image(40)
    out = np.array(C.fill_rect(img, jnp.array([2, 3, 5, 9])))
    assert (out[2:5, 3:9] == 128).all()
    out[2:5, 3:9] = img[2:5, 3:9]
    np.testing.assert_array_equal(out, img)
