"""Segmentation head / model / loss / mIoU (REFERENCE §7.3, §7.4)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.models.nasfpn import NASFPN
from stlib.eval.miou import confusion_matrix, miou
from stlib.losses import segmentation_loss
from stlib.models.segmentation import (SegmentationHead, Segmenter, legacy_resize_bilinear, pyramid_feature_fusion,
                                       resize_labels_to, segmentation_upsample_logits)
from stlib.train.state import count_params


def test_head_size_matches_reference():
    """REFERENCE §7.4: 3 x (3x3 conv 256 + BN) + 1x1 conv to 21 classes = 1.78M."""
    feats = {l: jax.ShapeDtypeStruct((1, 512 // 2 ** l, 512 // 2 ** l, 256), jnp.float32) for l in range(3, 8)}
    head = SegmentationHead(num_classes=21)
    shapes = jax.eval_shape(lambda f: head.init(jax.random.PRNGKey(0), f, train=False), feats)
    n = count_params(shapes["params"])
    print(f"segmentation head params {n} vs 1.78M: ratio {n / 1.78e6:.4f}")
    assert n == 3 * (3 * 3 * 256 * 256 + 256 + 2 * 256) + 256 * 21 + 21
    assert n == pytest.approx(1.78e6, rel=0.01)
    out = jax.eval_shape(lambda f: head.apply(jax.tree.map(jnp.zeros_like, shapes), f, train=False), feats)
    assert out.shape == (1, 128, 128, 21) and out.dtype == jnp.float32


def _legacy_bilinear_numpy(x, size):
    """Direct loop over the TF1 legacy formula: src = dst * in / out, 2x2 neighbours."""
    b, h, w, c = x.shape
    oh, ow = size
    out = np.zeros((b, oh, ow, c), np.float64)
    for i in range(oh):
        sy = i * h / oh
        y0 = int(np.floor(sy)); y1 = min(y0 + 1, h - 1); dy = sy - y0
        for j in range(ow):
            sx = j * w / ow
            x0 = int(np.floor(sx)); x1 = min(x0 + 1, w - 1); dx = sx - x0
            top = x[:, y0, x0] * (1 - dx) + x[:, y0, x1] * dx
            bot = x[:, y1, x0] * (1 - dx) + x[:, y1, x1] * dx
            out[:, i, j] = top * (1 - dy) + bot * dy
    return out


@pytest.mark.parametrize("size", [(8, 12), (6, 7), (2, 2), (5, 9)])
def test_legacy_bilinear_matches_formula(size):
    x = np.random.RandomState(0).randn(2, 4, 6, 3).astype(np.float32)
    np.testing.assert_allclose(np.asarray(legacy_resize_bilinear(x, size)), _legacy_bilinear_numpy(x, size),
                               rtol=1e-5, atol=1e-5)


def test_legacy_bilinear_known_values():
    x = np.arange(3, dtype=np.float32).reshape(1, 1, 3, 1) * 10    # [0, 10, 20]
    y = np.asarray(legacy_resize_bilinear(x, (1, 6)))[0, 0, :, 0]
    np.testing.assert_allclose(y, [0, 5, 10, 15, 20, 20])            # not half-pixel: no shift, clamped tail


def test_legacy_bilinear_matches_tf1():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.RandomState(1)
    x = rng.randn(2, 5, 7, 3).astype(np.float32)
    for size in [(10, 14), (40, 56), (8, 9), (3, 4), (13, 23)]:
        want = tf.compat.v1.image.resize_bilinear(x, size, align_corners=False, half_pixel_centers=False).numpy()
        np.testing.assert_allclose(np.asarray(legacy_resize_bilinear(x, size)), want, rtol=1e-6, atol=1e-6)
    labels = rng.randint(0, 21, size=(2, 17, 23, 1)).astype(np.int32)
    for size in [(5, 6), (4, 4), (9, 11)]:
        want = tf.compat.v1.image.resize_nearest_neighbor(labels, size, align_corners=False,
                                                          half_pixel_centers=False).numpy()[..., 0]
        np.testing.assert_array_equal(np.asarray(resize_labels_to(labels, size)), want)
    # At the exact 4x ratio of the paper (512 -> 128) TF1 bilinear on ids is the same pick.
    big = rng.randint(0, 21, size=(1, 32, 32, 1)).astype(np.float32)
    bil = tf.compat.v1.image.resize_bilinear(big, (8, 8), align_corners=False, half_pixel_centers=False).numpy()
    np.testing.assert_array_equal(np.asarray(resize_labels_to(big.astype(np.int32), (8, 8))), bil[..., 0])


def test_pyramid_fusion_sums_upsampled_levels_and_crops_odd_sizes():
    rng = np.random.RandomState(2)
    feats = {3: rng.randn(1, 4, 4, 2).astype(np.float32), 4: rng.randn(1, 2, 2, 2).astype(np.float32)}
    fused = np.asarray(pyramid_feature_fusion(feats, 2))
    want = _legacy_bilinear_numpy(feats[3], (8, 8)) + _legacy_bilinear_numpy(feats[4], (8, 8))
    np.testing.assert_allclose(fused, want, rtol=1e-5, atol=1e-5)
    # 200 px image: P3 25, P4 13 -> per-level x2^k sizes 50 and 52, both cropped to 50.
    odd = {3: rng.randn(1, 25, 25, 2).astype(np.float32), 4: rng.randn(1, 13, 13, 2).astype(np.float32)}
    fused = np.asarray(pyramid_feature_fusion(odd, 2))
    want = (_legacy_bilinear_numpy(odd[3], (50, 50)) + _legacy_bilinear_numpy(odd[4], (52, 52))[:, :50, :50])
    np.testing.assert_allclose(fused, want, rtol=1e-5, atol=1e-5)


def test_segmentation_loss_matches_numpy_and_ignores():
    rng = np.random.RandomState(3)
    logits = rng.randn(2, 3, 4, 5).astype(np.float32)
    labels = rng.randint(0, 5, size=(2, 12, 16)).astype(np.int32)
    labels[0, :4, :] = 255                                   # ignored pixels
    small = labels[:, ::4, ::4]                              # exact 4x ratio picks (4i, 4j)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = small != 255
    nll = -np.take_along_axis(logp, np.where(valid, small, 0)[..., None], -1)[..., 0]
    want = (nll * valid).sum() / valid.sum()
    assert float(segmentation_loss(logits, labels)) == pytest.approx(want, rel=1e-5)
    assert float(segmentation_loss(logits, labels[..., None])) == pytest.approx(want, rel=1e-5)
    # Logits at ignored pixels do not matter.
    changed = logits.copy()
    changed[0, 0] += 100.0
    assert float(segmentation_loss(changed, labels)) == pytest.approx(want, rel=1e-5)


def test_segmentation_loss_all_ignored_is_zero_with_finite_grad():
    logits = jnp.ones((1, 2, 2, 3))
    labels = jnp.full((1, 8, 8), 255, jnp.int32)
    loss, grad = jax.value_and_grad(segmentation_loss)(logits, labels)
    assert float(loss) == 0.0
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(jnp.abs(grad))) == 0.0


def test_miou_hand_made():
    labels = jnp.array([[0, 0, 1, 1, 2, 255]])
    pred = jnp.array([[0, 1, 1, 1, 0, 2]])
    cm = confusion_matrix(pred, labels, num_classes=4)
    np.testing.assert_array_equal(np.asarray(cm), [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    mean, per_class = miou(pred, labels, num_classes=4)
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0, fn 1 -> 0;
    # class 3 absent from both -> NaN and excluded from the mean (the 255 pixel's pred 2 is ignored).
    np.testing.assert_allclose(np.asarray(per_class[:3]), [1 / 3, 2 / 3, 0.0], rtol=1e-6)
    assert bool(jnp.isnan(per_class[3]))
    assert float(mean) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3, rel=1e-6)
    assert float(miou(jnp.zeros((2, 2), jnp.int32), jnp.full((2, 2), 255), 3)[0]) == 0.0


def test_upsample_logits_to_label_size():
    logits = jnp.asarray(np.random.RandomState(4).randn(1, 4, 4, 3), jnp.float32)
    up = segmentation_upsample_logits(logits, (16, 16))
    assert up.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(np.asarray(up[:, ::4, ::4]), np.asarray(logits), rtol=1e-6)


def _tiny_segmenter():
    from stlib.models.backbones import resnet
    return Segmenter(backbone=functools.partial(resnet.resnet_tiny),
                     neck=functools.partial(NASFPN, channels=16, num_repeats=2),
                     head=functools.partial(SegmentationHead, num_classes=5, channels=16),
                     num_classes=5)


def test_tiny_segmenter_forward():
    model = _tiny_segmenter()
    images = jnp.asarray(np.random.RandomState(5).rand(2, 64, 64, 3), jnp.float32)

    @jax.jit  # one compilation for init + both modes
    def run(x):
        variables = model.init(jax.random.PRNGKey(0), x, train=False)
        out_eval = model.apply(variables, x, train=False)
        out_train, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return variables, out_eval, out_train

    variables, out_eval, out_train = run(images)
    assert set(variables["params"]) == {"backbone", "neck", "head"}
    for out in (out_eval, out_train):
        assert out.shape == (2, 16, 16, 5) and out.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(out)))
    labels = jnp.asarray(np.random.RandomState(6).randint(0, 5, size=(2, 64, 64)))
    assert bool(jnp.isfinite(segmentation_loss(out_train, labels)))


@pytest.mark.parametrize("size", [100, 202])
def test_tiny_segmenter_odd_sizes_abstractly(size):
    """Logits are ceil(S / 4) for any S (202: P3 is 26 -> 52 after fusion, cropped to 51)."""
    model = _tiny_segmenter()

    def run(x):
        variables = model.init(jax.random.PRNGKey(0), x, train=False)
        return model.apply(variables, x, train=False)

    out = jax.eval_shape(run, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    assert out.shape == (1, -(-size // 4), -(-size // 4), 5)
