"""Tests for stlib.data.boxes."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from stlib.data import boxes as B


def _random_boxes(rng, n, lo=1.0, hi=200.0):
    yx = rng.uniform(-50, 500, size=(n, 2))
    hw = rng.uniform(lo, hi, size=(n, 2))
    return np.concatenate([yx, yx + hw], axis=-1).astype(np.float32)


def _iou_loop(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            ih = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            iw = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = ih * iw
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    anchors = _random_boxes(rng, 500, 4.0, 300.0)
    # Boxes near their anchors, sizes within the decode clip range.
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2 + rng.normal(0, 20, size=(500, 2))
    size = (anchors[:, 2:] - anchors[:, :2]) * np.exp(rng.uniform(-2, 2, size=(500, 2)))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=-1).astype(np.float32)
    deltas = B.encode_boxes(boxes, anchors)
    decoded = B.decode_boxes(deltas, anchors)
    np.testing.assert_allclose(decoded, boxes, rtol=1e-5, atol=1e-3)
    # Batched leading dims and jit.
    decoded_b = jax.jit(B.decode_boxes)(deltas.reshape(5, 100, 4), anchors.reshape(5, 100, 4))
    np.testing.assert_allclose(decoded_b.reshape(500, 4), boxes, rtol=1e-5, atol=1e-3)


def test_encode_values():
    anchor = np.array([[10.0, 20.0, 30.0, 60.0]], np.float32)  # yc 20, xc 40, h 20, w 40
    box = np.array([[15.0, 30.0, 55.0, 50.0]], np.float32)  # yc 35, xc 40, h 40, w 20
    np.testing.assert_allclose(
        B.encode_boxes(box, anchor), [[15 / 20, 0.0, math.log(2.0), math.log(0.5)]], rtol=1e-6
    )


def test_encode_degenerate_box_is_finite():
    anchor = np.array([[0.0, 0.0, 10.0, 10.0]], np.float32)
    box = np.array([[5.0, 5.0, 5.0, 5.0]], np.float32)
    assert np.all(np.isfinite(B.encode_boxes(box, anchor)))


def test_decode_clips_size():
    anchor = np.array([[0.0, 0.0, 16.0, 32.0]], np.float32)
    deltas = np.array([[0.0, 0.0, 10.0, 20.0]], np.float32)
    out = np.asarray(B.decode_boxes(deltas, anchor))[0]
    np.testing.assert_allclose(out[2] - out[0], 16 * 1000 / 16, rtol=1e-5)
    np.testing.assert_allclose(out[3] - out[1], 32 * 1000 / 16, rtol=1e-5)
    # Centre preserved; no lower clip on shrinking.
    np.testing.assert_allclose((out[0] + out[2]) / 2, 8.0, atol=1e-3)
    small = np.asarray(B.decode_boxes(np.array([[0.0, 0.0, -10.0, 0.0]], np.float32), anchor))[0]
    np.testing.assert_allclose(small[2] - small[0], 16 * math.exp(-10), rtol=1e-3)


def test_pairwise_iou_matches_loop():
    rng = np.random.default_rng(1)
    a = _random_boxes(rng, 17)
    b = _random_boxes(rng, 23)
    b[:5] = a[:5]  # some identical pairs
    np.testing.assert_allclose(B.pairwise_iou(a, b), _iou_loop(a, b), rtol=1e-5, atol=1e-6)
    # Leading batch dims.
    ab = np.stack([a, a[::-1]])
    bb = np.stack([b, b[::-1]])
    out = np.asarray(jax.jit(B.pairwise_iou)(ab, bb))
    assert out.shape == (2, 17, 23)
    np.testing.assert_allclose(out[1], _iou_loop(a[::-1], b[::-1]), rtol=1e-5, atol=1e-6)


def test_pairwise_iou_zero_area_is_zero():
    z = np.array([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    out = np.asarray(B.pairwise_iou(z, z))
    assert not np.any(np.isnan(out))
    np.testing.assert_array_equal(out, 0.0)
    # Gradient through IoU of degenerate boxes is finite too.
    g = jax.grad(lambda x: B.pairwise_iou(x, x).sum())(jnp.asarray(z))
    assert np.all(np.isfinite(g))


def test_box_area_and_clip():
    boxes = np.array([[-5.0, 2.0, 20.0, 130.0], [3.0, 3.0, 1.0, 9.0]], np.float32)
    np.testing.assert_allclose(B.box_area(boxes), [25 * 128, 0.0])
    clipped = np.asarray(B.clip_boxes(boxes, 16, 100))
    np.testing.assert_allclose(clipped, [[0.0, 2.0, 16.0, 100.0], [3.0, 3.0, 1.0, 9.0]])
