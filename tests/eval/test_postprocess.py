"""Tests for stlib.eval.postprocess against a plain numpy reference."""

import dataclasses

import jax
import numpy as np
import pytest

from stlib.data.boxes import clip_boxes, decode_boxes
from stlib.eval.postprocess import PostprocessConfig, postprocess

IMAGE = (100, 120)


def _iou_one_to_many(a, boxes):
    ih = np.maximum(0.0, np.minimum(a[2], boxes[:, 2]) - np.maximum(a[0], boxes[:, 0]))
    iw = np.maximum(0.0, np.minimum(a[3], boxes[:, 3]) - np.maximum(a[1], boxes[:, 1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _class_nms(boxes, scores, cfg):
    """Greedy NMS / Gaussian Soft-NMS for one class; returns [(index, score)]."""
    scores = scores.astype(np.float64).copy()
    alive = scores >= cfg.score_threshold
    out = []
    while alive.any() and len(out) < cfg.max_detections:
        i = int(np.argmax(np.where(alive, scores, -np.inf)))
        out.append((i, scores[i]))
        alive[i] = False
        iou = _iou_one_to_many(boxes[i], boxes)
        if cfg.method == "nms":
            alive &= ~(iou > cfg.nms_iou_threshold)
        else:
            scores = np.where(alive, scores * np.exp(-0.5 * iou * iou / cfg.soft_nms_sigma), scores)
            alive &= scores >= cfg.score_threshold
    return out


def _decode_clip(deltas, anchors):
    """numpy float64 decode (no +1) and clip to IMAGE."""
    ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    yc, xc = anchors[:, 0] + ha / 2 + deltas[:, 0] * ha, anchors[:, 1] + wa / 2 + deltas[:, 1] * wa
    h = ha * np.exp(np.minimum(deltas[:, 2], np.log(1000 / 16)))
    w = wa * np.exp(np.minimum(deltas[:, 3], np.log(1000 / 16)))
    boxes = np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)
    return np.clip(boxes, 0.0, [IMAGE[0], IMAGE[1], IMAGE[0], IMAGE[1]])


def _reference(logits, deltas, anchors, cfg):
    """Per-image: sigmoid, global top-k, per-class NMS, merge, top max_detections."""
    results = []
    for lg, dl in zip(logits, deltas):
        num_classes = lg.shape[1]
        flat = lg.reshape(-1).astype(np.float64)
        order = np.argsort(-flat, kind="stable")[: cfg.pre_nms_top_k]
        a_idx, c_idx = order // num_classes, order % num_classes
        scores = 1.0 / (1.0 + np.exp(-flat[order]))
        boxes = _decode_clip(dl[a_idx].astype(np.float64), anchors[a_idx].astype(np.float64))
        dets = []
        for c in range(num_classes):
            sel = np.nonzero(c_idx == c)[0]
            for i, s in _class_nms(boxes[sel], scores[sel], cfg):
                dets.append((s, c + 1, boxes[sel][i]))
        dets.sort(key=lambda d: -d[0])
        results.append(dets[: cfg.max_detections])
    return results


def _random_inputs(rng, batch=3, num_clusters=6, per_cluster=12, num_classes=3):
    """Anchors in overlapping clusters (some past the image edge) and random outputs."""
    centres = rng.uniform(-10, [IMAGE[0] + 10, IMAGE[1] + 10], size=(num_clusters, 2))
    sizes = rng.uniform(8, 40, size=(num_clusters, 2))
    c = np.repeat(centres, per_cluster, 0) + rng.normal(0, 3, size=(num_clusters * per_cluster, 2))
    s = np.repeat(sizes, per_cluster, 0) * rng.uniform(0.7, 1.4, size=(num_clusters * per_cluster, 2))
    anchors = np.concatenate([c - s / 2, c + s / 2], axis=-1).astype(np.float32)
    n = len(anchors)
    logits = rng.normal(-1.5, 2.0, size=(batch, n, num_classes)).astype(np.float32)
    deltas = rng.normal(0, 0.15, size=(batch, n, 4)).astype(np.float32)
    return logits, deltas, anchors


def _check(out, ref, cfg):
    out = jax.tree.map(np.asarray, out)
    d = cfg.max_detections
    assert out["boxes"].shape[1:] == (d, 4) and out["classes"].shape[1:] == (d,)
    for b, dets in enumerate(ref):
        n = len(dets)
        assert int(out["num_detections"][b]) == n
        valid = out["valid"][b]
        np.testing.assert_array_equal(valid, np.arange(d) < n)
        np.testing.assert_allclose(out["scores"][b][:n], [x[0] for x in dets], rtol=2e-5, atol=1e-7)
        np.testing.assert_array_equal(out["classes"][b][:n], [x[1] for x in dets])
        if n:
            np.testing.assert_allclose(out["boxes"][b][:n], np.stack([x[2] for x in dets]), rtol=1e-5, atol=1e-4)
        # Padding rows are zeros.
        np.testing.assert_array_equal(out["scores"][b][n:], 0.0)
        np.testing.assert_array_equal(out["classes"][b][n:], 0)
        np.testing.assert_array_equal(out["boxes"][b][n:], 0.0)
        assert np.all(np.diff(out["scores"][b][:n]) <= 0)


_jit_postprocess = jax.jit(postprocess, static_argnames=("image_size", "cfg"))


@pytest.mark.parametrize(
    "cfg",
    [
        PostprocessConfig(max_detections=20),
        PostprocessConfig(max_detections=120),  # more slots than survivors: padding
        PostprocessConfig(max_detections=15, nms_iou_threshold=0.3, score_threshold=0.2),
        PostprocessConfig(max_detections=30, pre_nms_top_k=40),  # global top-k cut
        PostprocessConfig(max_detections=20, method="soft_nms"),
        PostprocessConfig(max_detections=120, method="soft_nms", soft_nms_sigma=0.5),
        PostprocessConfig(max_detections=30, method="soft_nms", pre_nms_top_k=40, score_threshold=0.1),
    ],
    ids=lambda c: f"{c.method}-D{c.max_detections}-k{c.pre_nms_top_k}-t{c.score_threshold}",
)
def test_against_reference(cfg):
    rng = np.random.default_rng(cfg.max_detections + cfg.pre_nms_top_k + (cfg.method == "soft_nms"))
    for _ in range(5):
        logits, deltas, anchors = _random_inputs(rng)
        out = _jit_postprocess(logits, deltas, anchors, IMAGE, cfg)
        _check(out, _reference(logits, deltas, anchors, cfg), cfg)


def test_batch_independence():
    rng = np.random.default_rng(3)
    logits, deltas, anchors = _random_inputs(rng, batch=4)
    cfg = PostprocessConfig(max_detections=10, method="soft_nms")
    batched = _jit_postprocess(logits, deltas, anchors, IMAGE, cfg)
    single = _jit_postprocess(logits[2:3], deltas[2:3], anchors, IMAGE, cfg)
    for key in batched:
        np.testing.assert_allclose(single[key][0], batched[key][2], rtol=1e-6)
    assert batched["classes"].dtype == np.int32 and batched["valid"].dtype == bool
    assert batched["num_detections"].shape == (4,)


def test_classes_do_not_suppress_each_other():
    """Also exercises the eager (non-jit) path."""
    anchors = np.array([[10, 10, 50, 50], [12, 12, 50, 50]], np.float32)
    logits = np.full((1, 2, 2), -20.0, np.float32)
    logits[0, 0, 0] = 3.0  # class 1 on anchor 0
    logits[0, 1, 0] = 2.0  # class 1 on anchor 1: suppressed by anchor 0
    logits[0, 1, 1] = 1.0  # class 2 on anchor 1: kept
    out = postprocess(logits, np.zeros((1, 2, 4), np.float32), anchors, IMAGE, PostprocessConfig(max_detections=5))
    assert int(out["num_detections"][0]) == 2
    np.testing.assert_array_equal(out["classes"][0][:2], [1, 2])
    np.testing.assert_allclose(out["boxes"][0][1], anchors[1])


def test_all_below_threshold():
    logits = np.full((2, 10, 4), -10.0, np.float32)
    anchors = np.tile(np.array([[0, 0, 10, 10]], np.float32), (10, 1))
    deltas = np.zeros((2, 10, 4), np.float32)
    out = _jit_postprocess(logits, deltas, anchors, IMAGE, PostprocessConfig(max_detections=7))
    np.testing.assert_array_equal(out["num_detections"], [0, 0])
    assert not np.any(out["valid"])


def test_config_validation():
    with pytest.raises(ValueError):
        PostprocessConfig(method="diou")
    with pytest.raises(ValueError):
        PostprocessConfig(method="soft_nms", soft_nms_sigma=0.0)
    assert dataclasses.asdict(PostprocessConfig()) == dict(
        pre_nms_top_k=5000, score_threshold=0.05, nms_iou_threshold=0.5, max_detections=100,
        method="nms", soft_nms_sigma=0.3)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nms", "soft_nms"])
def test_single_class_matches_tensorflow(method):
    """Cross-check one class against TF `non_max_suppression_with_scores`."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(11)
    cfg = PostprocessConfig(max_detections=40, method=method)
    for _ in range(5):
        logits, deltas, anchors = _random_inputs(rng, batch=1, num_classes=1)
        out = postprocess(logits, deltas, anchors, IMAGE, cfg)
        boxes = np.asarray(clip_boxes(decode_boxes(deltas[0], anchors), *IMAGE))
        scores = 1.0 / (1.0 + np.exp(-logits[0, :, 0]))
        idx, tf_scores = tf.image.non_max_suppression_with_scores(
            boxes, scores, cfg.max_detections, iou_threshold=cfg.nms_iou_threshold,
            score_threshold=cfg.score_threshold, soft_nms_sigma=cfg.soft_nms_sigma if method == "soft_nms" else 0.0)
        n = len(idx)
        assert int(out["num_detections"][0]) == n
        np.testing.assert_allclose(out["boxes"][0][:n], boxes[idx.numpy()], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(out["scores"][0][:n], tf_scores.numpy(), rtol=1e-5)
