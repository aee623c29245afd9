import math

import jax.numpy as jnp
import numpy as np

from stlib import losses


def test_focal_loss_matches_direct_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=200).astype(np.float32)
    targets = rng.integers(0, 2, size=200).astype(np.float32)
    got = np.asarray(losses.focal_loss(jnp.asarray(logits), jnp.asarray(targets), 0.25, 1.5))
    for x, t, g in zip(logits, targets, got):
        p = 1 / (1 + math.exp(-x))
        if t == 1:
            want = -0.25 * (1 - p) ** 1.5 * math.log(p)
        else:
            want = -0.75 * p ** 1.5 * math.log(1 - p)
        assert abs(g - want) <= 1e-5 + 1e-4 * abs(want)


def test_huber():
    x = jnp.array([0.0, 0.05, 0.1, 0.3, -0.3])
    got = np.asarray(losses.huber_loss(x, jnp.zeros_like(x), 0.1))
    np.testing.assert_allclose(got, [0, 0.5 * 0.05 ** 2, 0.5 * 0.01, 0.1 * 0.3 - 0.5 * 0.01, 0.1 * 0.3 - 0.5 * 0.01], rtol=1e-5)


def test_detection_loss_normalization_and_masks():
    B, A, K = 2, 5, 3
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(B, A, K)), jnp.float32)
    boxes = jnp.asarray(rng.normal(size=(B, A, 4)), jnp.float32)
    cls_t = jnp.array([[2, 0, -1, 0, 1], [0, 0, 0, 3, -1]])
    box_t = jnp.asarray(rng.normal(size=(B, A, 4)), jnp.float32) * (cls_t > 0)[..., None]
    total, aux = losses.detection_loss(logits, boxes, cls_t, box_t, K, 0.25, 1.5, 0.1, 50.0)
    onehot = np.zeros((B, A, K))
    for b in range(B):
        for a in range(A):
            if cls_t[b, a] > 0:
                onehot[b, a, cls_t[b, a] - 1] = 1
    fl = np.asarray(losses.focal_loss(logits, jnp.asarray(onehot), 0.25, 1.5))
    keep = np.asarray(cls_t) >= 0
    norm = 3 + 1.0
    np.testing.assert_allclose(float(aux["cls_loss"]), (fl * keep[..., None]).sum() / norm, rtol=1e-5)
    hb = np.asarray(losses.huber_loss(boxes, box_t, 0.1)) * (np.asarray(cls_t) > 0)[..., None]
    np.testing.assert_allclose(float(aux["box_loss"]), hb.sum() / (4 * norm), rtol=1e-5)
    np.testing.assert_allclose(float(total), float(aux["cls_loss"]) + 50 * float(aux["box_loss"]), rtol=1e-6)
    assert float(aux["num_positives"]) == 3
    # Padding examples (weight 0) contribute nothing.
    t2, _ = losses.detection_loss(logits, boxes, cls_t, box_t, K, example_weight=jnp.array([1.0, 0.0]))
    t3, _ = losses.detection_loss(logits[:1], boxes[:1], cls_t[:1], box_t[:1], K)
    np.testing.assert_allclose(float(t2), float(t3), rtol=1e-5)
