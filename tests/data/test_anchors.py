"""Tests for stlib.data.anchors: layout, flatten order, matching, targets."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.data import anchors as A
from stlib.data.boxes import encode_boxes, pairwise_iou

CFG = A.AnchorConfig()


def test_config_defaults():
    assert CFG.num_anchors_per_location == 9
    assert (CFG.min_level, CFG.max_level, CFG.num_scales, CFG.aspect_ratios, CFG.anchor_size) == (
        3, 7, 3, (1.0, 2.0, 0.5), 4.0)


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (100, 75)])
def test_anchor_count_and_shapes(size):
    shapes = A.level_shapes(size, CFG)
    assert [s[0] for s in shapes] == [3, 4, 5, 6, 7]
    for level, h, w in shapes:
        assert (h, w) == (math.ceil(size[0] / 2**level), math.ceil(size[1] / 2**level))
    anchors = A.generate_anchors(size, CFG)
    assert anchors.dtype == np.float32
    assert anchors.shape == (sum(h * w * 9 for _, h, w in shapes), 4)


def test_known_anchors_64():
    anchors = A.generate_anchors((64, 64), CFG)
    r2 = math.sqrt(2.0)
    # Level 3, location (0, 0): centre (4, 4); scale 0 ar 1 -> 32 x 32.
    np.testing.assert_allclose(anchors[0], [-12, -12, 20, 20], atol=1e-5)
    # ar 2 (w/h): w = 32 sqrt2, h = 32 / sqrt2.
    np.testing.assert_allclose(anchors[1], [4 - 8 * r2, 4 - 16 * r2, 4 + 8 * r2, 4 + 16 * r2], atol=1e-5)
    # Scale 1, ar 1: 32 * 2^(1/3).
    s = 32 * 2 ** (1 / 3)
    np.testing.assert_allclose(anchors[3], [4 - s / 2, 4 - s / 2, 4 + s / 2, 4 + s / 2], atol=1e-5)
    # Level 3, location (y=0, x=1): centre (4, 12).
    np.testing.assert_allclose(anchors[9], [-12, -4, 20, 28], atol=1e-5)
    # Level 3, location (y=1, x=0): centre (12, 4), row-major.
    np.testing.assert_allclose(anchors[8 * 9], [-4, -12, 28, 20], atol=1e-5)
    # First level-4 anchor: centre (8, 8), size 64.
    np.testing.assert_allclose(anchors[64 * 9], [-24, -24, 40, 40], atol=1e-5)
    # Level 7 is a 1x1 grid centred at 64, size 512.
    np.testing.assert_allclose(anchors[-9], [-192, -192, 320, 320], atol=1e-4)


def test_anchor_size_override():
    anchors = A.generate_anchors((64, 64), A.AnchorConfig(anchor_size=3.0))
    np.testing.assert_allclose(anchors[0], [-8, -8, 16, 16], atol=1e-5)


def _explicit_anchor(level, y, x, a, cfg):
    stride = 2**level
    scale, ar = divmod(a, len(cfg.aspect_ratios))
    base = cfg.anchor_size * stride * 2 ** (scale / cfg.num_scales)
    ar = cfg.aspect_ratios[ar]
    w, h = base * math.sqrt(ar), base / math.sqrt(ar)
    yc, xc = stride / 2 + y * stride, stride / 2 + x * stride
    return [yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2]


def test_flatten_order_matches_generate_anchors():
    size = (96, 64)
    cfg = A.AnchorConfig(num_scales=2, aspect_ratios=(1.0, 2.0, 0.5))
    n = cfg.num_anchors_per_location
    outputs = {}
    for level, h, w in A.level_shapes(size, cfg):
        # Head layout: channel index = anchor * C + c, with C = 4 here.
        x = np.zeros((2, h, w, n * 4), np.float32)
        for y in range(h):
            for xx in range(w):
                for a in range(n):
                    x[:, y, xx, a * 4:(a + 1) * 4] = _explicit_anchor(level, y, xx, a, cfg)
        outputs[level] = jnp.asarray(x)
    # Insertion order must not matter.
    outputs = dict(reversed(list(outputs.items())))
    flat = np.asarray(A.flatten_level_outputs(outputs, 4))
    anchors = A.generate_anchors(size, cfg)
    assert flat.shape == (2,) + anchors.shape
    np.testing.assert_allclose(flat[0], anchors, atol=1e-4)
    np.testing.assert_allclose(flat[1], anchors, atol=1e-4)


# ---------------------------------------------------------------- matching


def _ref_match(iou, valid, match_thr, unmatched_thr, force):
    """Plain-Python TPU ArgMaxMatcher on an [M, A] IoU matrix."""
    m, a_n = iou.shape
    idx = np.full(a_n, -1)
    typ = np.zeros(a_n, int)
    for a in range(a_n):
        best, best_v = -1, -np.inf
        for g in range(m):
            if valid[g] and iou[g, a] > best_v:  # strict: first gt wins ties
                best, best_v = g, iou[g, a]
        if best < 0 or best_v < unmatched_thr:
            typ[a] = 0
        elif best_v >= match_thr:
            typ[a], idx[a] = 1, best
        else:
            typ[a] = -1
    if force:
        for g in reversed(range(m)):  # lower gt index written last, so it wins
            if valid[g]:
                a = int(np.argmax(iou[g]))
                typ[a], idx[a] = 1, g
    idx[typ != 1] = -1
    return idx, typ


def _jittered_anchors(rng):
    """Real anchor layout with sub-pixel jitter.

    Unjittered anchors of equal area give exact IoU ties (a gt inside two of
    them), which float rounding breaks differently under jit and eagerly.
    """
    anchors = A.generate_anchors((64, 64), CFG)
    return (anchors + rng.uniform(-0.5, 0.5, size=anchors.shape)).astype(np.float32)


def _random_gt(rng, m, size=64):
    yx = rng.uniform(-5, size - 4, size=(m, 2))
    hw = rng.uniform(3, 50, size=(m, 2))
    gt = np.concatenate([yx, yx + hw], axis=-1).astype(np.float32)
    valid = rng.uniform(size=m) < 0.7
    gt[~valid] = 0.0  # padding
    return gt, valid


@pytest.mark.parametrize("thresholds", [(0.5, 0.5), (0.5, 0.4)])
@pytest.mark.parametrize("force", [True, False])
def test_match_random_against_reference(thresholds, force):
    rng = np.random.default_rng(int(thresholds[1] * 10) + 2 * force)
    anchors = _jittered_anchors(rng)
    match = jax.jit(functools.partial(
        A.match_anchors, match_threshold=thresholds[0], unmatched_threshold=thresholds[1], force_match=force))
    saw = {1: 0, 0: 0, -1: 0}
    for case in range(25):
        gt, valid = _random_gt(rng, 8)
        if case == 0:
            valid[:] = False
        if case == 1:
            gt[3] = gt[2]  # duplicate gt: both claim the same anchor
            valid[2:4] = True
        idx, typ = match(anchors, gt, valid)
        iou = np.asarray(pairwise_iou(gt, anchors))
        ref_idx, ref_typ = _ref_match(iou, valid, *thresholds, force)
        np.testing.assert_array_equal(np.asarray(typ), ref_typ)
        np.testing.assert_array_equal(np.asarray(idx), ref_idx)
        assert idx.dtype == jnp.int32 and typ.dtype == jnp.int32
        for t in saw:
            saw[t] += int(np.sum(ref_typ == t))
        if case == 0:
            assert np.all(ref_typ == 0)
    assert saw[1] > 0 and saw[0] > 0
    assert (saw[-1] > 0) == (thresholds[1] < thresholds[0])


def test_force_match_conflict_lowest_gt_wins():
    anchors = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    gt = np.array([[0, 0, 5, 5], [0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    valid = np.array([True, True, False])
    idx, typ = A.match_anchors(anchors, gt, valid, force_match=False)
    np.testing.assert_array_equal(idx, [1, -1])
    np.testing.assert_array_equal(typ, [1, 0])
    # Both valid gts claim anchor 0; TPU ArgMaxMatcher gives it to gt 0 even
    # though gt 1 overlaps it perfectly.
    idx, typ = A.match_anchors(anchors, gt, valid, force_match=True)
    np.testing.assert_array_equal(idx, [0, -1])
    np.testing.assert_array_equal(typ, [1, 0])


def test_force_match_below_threshold_and_padding():
    anchors = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    # Padded gt coincides with anchor 1 but must never match.
    gt = np.array([[0, 0, 4, 4], [20, 20, 30, 30]], np.float32)
    valid = np.array([True, False])
    idx, typ = A.match_anchors(anchors, gt, valid)
    np.testing.assert_array_equal(idx, [0, -1])
    np.testing.assert_array_equal(typ, [1, 0])
    idx, typ = A.match_anchors(anchors, gt, np.array([False, False]))
    np.testing.assert_array_equal(idx, [-1, -1])
    np.testing.assert_array_equal(typ, [0, 0])
    idx, typ = A.match_anchors(anchors, np.zeros((0, 4), np.float32), np.zeros((0,), bool))
    np.testing.assert_array_equal(typ, [0, 0])


def test_bad_thresholds():
    with pytest.raises(ValueError):
        A.match_anchors(np.zeros((1, 4)), np.zeros((1, 4)), np.ones(1, bool), 0.4, 0.5)


def test_assign_targets_batched():
    rng = np.random.default_rng(7)
    anchors = _jittered_anchors(rng)
    batch, m = 4, 6
    gts, valids = zip(*(_random_gt(rng, m) for _ in range(batch)))
    gt = np.stack(gts)
    valid = np.stack(valids)
    valid[2] = False
    classes = rng.integers(1, 11, size=(batch, m)).astype(np.int32)
    fn = functools.partial(A.assign_targets, unmatched_threshold=0.4)
    out = jax.jit(jax.vmap(fn, in_axes=(None, 0, 0, 0)))(anchors, gt, classes, valid)
    assert out["cls_targets"].shape == (batch, len(anchors)) and out["cls_targets"].dtype == jnp.int32
    assert out["box_targets"].shape == (batch, len(anchors), 4) and out["box_targets"].dtype == jnp.float32
    for b in range(batch):
        iou = np.asarray(pairwise_iou(gt[b], anchors))
        idx, typ = _ref_match(iou, valid[b], 0.5, 0.4, True)
        pos = typ == 1
        np.testing.assert_array_equal(out["positive"][b], pos)
        ref_cls = np.where(pos, classes[b][np.maximum(idx, 0)], np.where(typ == -1, -1, 0))
        np.testing.assert_array_equal(out["cls_targets"][b], ref_cls)
        ref_box = np.where(pos[:, None], encode_boxes(gt[b][np.maximum(idx, 0)], anchors), 0.0)
        np.testing.assert_allclose(out["box_targets"][b], ref_box, rtol=1e-6, atol=1e-6)
        assert np.all(np.isfinite(out["box_targets"][b]))
    assert not np.any(out["positive"][2])


def test_a_negative_class_marks_an_ignore_box():
    """Self-training's uncertain pseudo boxes (class < 0): the anchors they match are ignored,
    neither positive nor background; a real box next to them is unaffected."""
    anchors = A.generate_anchors((64, 64), A.AnchorConfig(3, 4, 1, (1.0,), 4.0))
    boxes = jnp.array([[0.0, 0.0, 32.0, 32.0], [32.0, 32.0, 64.0, 64.0], [0, 0, 0, 0]], jnp.float32)
    valid = jnp.array([True, True, False])
    real = A.assign_targets(anchors, boxes, jnp.array([3, 5, 0]), valid)
    ign = A.assign_targets(anchors, boxes, jnp.array([3, -1, 0]), valid)
    hits_second = real["positive"] & (real["cls_targets"] == 5)
    assert int(hits_second.sum()) > 0
    assert bool(jnp.all(ign["cls_targets"][hits_second] == -1)) and not bool(jnp.any(ign["positive"][hits_second]))
    keep = ~hits_second
    np.testing.assert_array_equal(ign["cls_targets"][keep], real["cls_targets"][keep])
    np.testing.assert_array_equal(ign["box_targets"][hits_second], 0.0)
