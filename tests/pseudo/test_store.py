"""Tests for stlib.pseudo.store.PseudoLabelStore: sharded writes, resume, validation, summary, COCO export."""

import contextlib
import io
import json
import os
import time

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from stlib.pseudo.labels import ImageLabels
from stlib.pseudo.store import STALE_TEMP_SECONDS, PseudoLabelStore

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}, {"id": 5, "name": "star"}]
META = {"categories": CATEGORIES, "teacher": "runs/teacher", "min_score": 0.05, "nms": 0.5, "source": "world:scenes"}
N, S = 7, 3  # shards [0, 3), [3, 6), [6, 7)


def _labels(i, with_mask=False):
    """Image i: i % 4 boxes with scores 0.9, 0.6, 0.3 and classes (i + j) % 3 + 1; image 4 is skipped."""
    if i == 4:
        return ImageLabels(i, f"im/{i:03d}.png", 0, 0, np.zeros((0, 4)), [], [], skipped="corrupt: cannot decode")
    n = i % 4
    boxes = [[y, y + 1.5, y + 10.25, y + 20.5] for y in range(n)]
    mask = None
    if with_mask and i % 2 == 0:
        mask = np.full((12, 16), 255, np.uint8)
        mask[2:6, 3:9] = i % 4
    return ImageLabels(i, f"im/{i:03d}.png", 12, 16, boxes, [(i + j) % 3 + 1 for j in range(n)],
                       [0.9, 0.6, 0.3][:n], mask=mask)


def _write_all(store, with_mask=False):
    for k in store.missing_shards():
        store.write_shard(k, [_labels(i, with_mask) for i in store.shard_range(k)])


def _assert_same(a: ImageLabels, b: ImageLabels):
    assert (a.index, a.key, a.height, a.width, a.skipped) == (b.index, b.key, b.height, b.width, b.skipped)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.boxes.dtype == np.float32 and a.classes.dtype == np.int32 and a.scores.dtype == np.float32
    if b.mask is None:
        assert a.mask is None
    else:
        assert a.mask.dtype == np.uint8
        np.testing.assert_array_equal(a.mask, b.mask)


def test_create_and_layout(tmp_path):
    store = PseudoLabelStore.create(tmp_path / "s", META, N, S)
    assert (store.num_images, store.shard_size, store.num_shards) == (N, S, 3)
    assert [store.shard_range(k) for k in range(3)] == [range(0, 3), range(3, 6), range(6, 7)]
    assert store.categories == CATEGORIES
    meta = json.loads((tmp_path / "s" / "store.json").read_text())
    assert meta == {**META, "version": 1, "num_images": N, "shard_size": S}
    assert store.missing_shards() == [0, 1, 2] and store.done_shards() == set()
    assert not store.complete
    with pytest.raises(ValueError, match="shard 3 outside 0..2"):
        store.shard_range(3)


def test_reopen_same_meta_resumes(tmp_path):
    store = PseudoLabelStore.create(tmp_path, META, N, S)
    store.write_shard(1, [_labels(i) for i in range(3, 6)])
    again = PseudoLabelStore.create(tmp_path, dict(META, categories=[dict(c) for c in CATEGORIES]), N, S)
    assert again.missing_shards() == [0, 2] and again.done_shards() == {1}
    assert PseudoLabelStore.open(tmp_path).missing_shards() == [0, 2]


@pytest.mark.parametrize("change, names", [
    (dict(meta=dict(META, teacher_digest="other")), ["'teacher_digest': store has '<absent>', new 'other'"]),
    (dict(meta=dict(META, min_score=0.1, extra=1)), ["'extra': store has '<absent>', new 1", "'min_score'"]),
    (dict(num_images=8), ["'num_images': store has 7, new 8"]),
    (dict(shard_size=4), ["'shard_size': store has 3, new 4"]),
])
def test_reopen_different_meta_errors(tmp_path, change, names):
    PseudoLabelStore.create(tmp_path, META, N, S)
    args = {"meta": META, "num_images": N, "shard_size": S, **change}
    with pytest.raises(ValueError, match="different settings") as e:
        PseudoLabelStore.create(tmp_path, **args)
    for name in names:
        assert name in str(e.value)


def test_reopen_ignores_provenance_that_is_not_identity(tmp_path):
    """A teacher's AP is a float of the machine that measured it and its folder a path: neither is
    what the labels are, so neither refuses a store (issue 14: a re-made teacher crashed the main job)."""
    PseudoLabelStore.create(tmp_path, dict(META, teacher_AP=0.0885), N, S)
    again = PseudoLabelStore.create(tmp_path, dict(META, teacher="elsewhere/teacher", teacher_AP=0.0872), N, S)
    assert again.meta["teacher_AP"] == 0.0885      # the store keeps what it was made with


def test_create_and_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none" / "store.json")):
        PseudoLabelStore.open(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "store.json").write_text("{not json")
    with pytest.raises(ValueError, match="store.json: not valid JSON"):
        PseudoLabelStore.open(tmp_path / "bad")
    with pytest.raises(ValueError, match="'categories' must be a non-empty list"):
        PseudoLabelStore.create(tmp_path / "c", {"teacher": "x"}, N, S)
    with pytest.raises(ValueError, match="may not set"):
        PseudoLabelStore.create(tmp_path / "c", dict(META, complete=True), N, S)
    with pytest.raises(ValueError, match="shard_size must be an integer >= 1"):
        PseudoLabelStore.create(tmp_path / "c", META, N, 0)


@pytest.mark.parametrize("indices, match", [
    ([0, 1], r"missing indices \[2\]"),
    ([0, 1, 1, 2], r"duplicate indices \[1\]"),
    ([0, 1, 2, 3], r"extra indices \[3\]"),
    ([1, 0, 2], "indices out of order"),
])
def test_write_shard_checks_indices(tmp_path, indices, match):
    store = PseudoLabelStore.create(tmp_path, META, N, S)
    with pytest.raises(ValueError, match=f"shard 0 needs one ImageLabels per index 0..2 in order: {match}"):
        store.write_shard(0, [_labels(i) for i in indices])
    assert store.missing_shards() == [0, 1, 2]


def test_write_shard_checks_classes_and_masks(tmp_path):
    store = PseudoLabelStore.create(tmp_path, META, N, S)
    bad = [_labels(0), _labels(1), ImageLabels(2, "im/002.png", 12, 16, [[0, 0, 1, 1]] * 2, [4, 0], [0.5, 0.5])]
    with pytest.raises(ValueError, match=r"image 2 \('im/002.png'\) has classes \[0, 4\] outside 1..3"):
        store.write_shard(0, bad)
    bad[2] = ImageLabels(2, "im/002.png", 12, 16, [], [], [], mask=np.zeros((16, 12), np.uint8))
    with pytest.raises(ValueError, match=r"mask shape \(16, 12\) is not \(height, width\) = \(12, 16\)"):
        store.write_shard(0, bad)
    with pytest.raises(ValueError, match="shard 5 outside"):
        store.write_shard(5, [])
    assert store.done_shards() == set()


@pytest.mark.parametrize("with_mask", [False, True])
def test_round_trip(tmp_path, with_mask):
    store = PseudoLabelStore.create(tmp_path, META, N, S)
    _write_all(store, with_mask)
    assert store.missing_shards() == []
    got = [label for k in range(store.num_shards) for label in store.read_shard(k)]
    assert len(got) == N
    for i, label in enumerate(got):
        _assert_same(label, _labels(i, with_mask))
    with np.load(store.shard_path(0), allow_pickle=False) as z:
        assert ("mask_png" in z.files) == with_mask
        assert z["key"].dtype.kind == "U" and z["boxes"].shape == (0 + 1 + 2, 4)


def test_partial_writes_and_leftover_temp(tmp_path):
    store = PseudoLabelStore.create(tmp_path, META, N, S)
    store.write_shard(2, [_labels(6)])
    # A killed writer's temp file (named as stlib.io.write_bytes_atomic names them), and a fresh one
    # that may belong to a live writer of another shard.
    stale = store.shard_dir / ".shard-00000.npz.abc123.tmp"
    stale.write_bytes(b"half a shard")
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    fresh = store.shard_dir / ".shard-00001.npz.def456.tmp"
    fresh.write_bytes(b"being written")
    assert store.missing_shards() == [0, 1]
    reopened = PseudoLabelStore.open(tmp_path)
    assert reopened.missing_shards() == [0, 1] and reopened.done_shards() == {2}
    assert not stale.exists() and fresh.exists()
    with pytest.raises(FileNotFoundError, match="shard 0 not written yet"):
        reopened.read_shard(0)
    with pytest.raises(ValueError, match=r"2 of 3 shards missing: \[0, 1\]"):
        reopened.load()
    assert [label.index for label in reopened.load(allow_partial=True)] == [6]


def test_mark_complete_and_load(tmp_path):
    store = PseudoLabelStore.create(tmp_path, META, N, S)
    store.write_shard(0, [_labels(i) for i in range(3)])
    with pytest.raises(ValueError, match=r"cannot mark it complete, 2 of 3 shards missing: \[1, 2\]"):
        store.mark_complete()
    _write_all(store)
    with pytest.raises(ValueError, match="not marked complete; call mark_complete"):
        store.load()
    summary = store.mark_complete()
    assert store.complete and PseudoLabelStore.open(tmp_path).complete
    meta = json.loads(store.meta_path.read_text())
    assert meta["complete"] is True and meta["summary"] == summary
    # the completed store reopens with the same meta
    assert PseudoLabelStore.create(tmp_path, META, N, S).complete

    everything = store.load()
    assert [label.index for label in everything] == list(range(N))
    assert sum(len(label.boxes) for label in everything) == 9
    high = store.load(min_score=0.5)
    assert sum(len(label.boxes) for label in high) == 8
    assert all((label.scores >= 0.5).all() for label in high)
    np.testing.assert_array_equal(high[3].scores, np.float32([0.9, 0.6]))  # image 3: its 0.3 box dropped
    np.testing.assert_array_equal(high[3].boxes, everything[3].boxes[:2])


def test_summary_counts(tmp_path):
    store = PseudoLabelStore.create(tmp_path, META, N, S)
    _write_all(store)
    # classes by image (scores 0.9, 0.6, 0.3): 1: [2]; 2: [3, 1]; 3: [1, 2, 3]; 5: [3]; 6: [1, 2]
    # (image 0 has no box, image 4 is skipped)
    s = store.summary()
    assert s["images"] == N and s["skipped"] == 1 and s["skipped_reasons"] == {"corrupt": 1}
    assert s["images_with_boxes"] == 5 and s["boxes"] == 9
    assert s["boxes_per_image"] == pytest.approx(9 / 6)
    assert s["per_class"] == {"circle": 3, "square": 3, "star": 3}
    assert s["min_score"] == 0.0 and s["shards_written"] == s["num_shards"] == 3
    s = store.summary(min_score=0.7)
    assert s["boxes"] == 5 and s["images_with_boxes"] == 5
    assert s["per_class"] == {"circle": 2, "square": 1, "star": 2}
    assert store.summary(min_score=0.95)["images_with_boxes"] == 0


def test_export_coco(tmp_path):
    store = PseudoLabelStore.create(tmp_path / "store", META, N, S)
    _write_all(store)
    store.mark_complete()
    path = tmp_path / "pseudo.json"
    data = store.export_coco(path, min_score=0.5)
    assert json.loads(path.read_text()) == json.loads(json.dumps(data))
    assert [im["id"] for im in data["images"]] == [1, 2, 3, 4, 6, 7]  # index + 1; image 4 (skipped) left out
    assert data["images"][1] == {"id": 2, "file_name": "im/001.png", "height": 12, "width": 16}
    assert data["categories"] == CATEGORIES
    assert data["info"]["min_score"] == 0.5 and data["info"]["teacher"] == "runs/teacher"
    # image 2: boxes [0, 1.5, 10.25, 20.5] class 3 -> id 5 and [1, 2.5, 11.25, 21.5] class 1 -> id 1
    anns = [a for a in data["annotations"] if a["image_id"] == 3]
    assert [a["category_id"] for a in anns] == [5, 1]
    assert anns[0]["bbox"] == [1.5, 0.0, 19.0, 10.25] and anns[0]["area"] == pytest.approx(19.0 * 10.25)
    assert [round(a["score"], 6) for a in anns] == [0.9, 0.6] and anns[0]["iscrowd"] == 0

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        results = coco.loadRes(data["annotations"])
        ev = COCOeval(coco, results, "bbox")
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) == 8
    assert len(results.getAnnIds()) == 8
    assert ev.eval["precision"][0, :, :, 0, -1].max() == pytest.approx(1.0)  # labels scored against themselves


def test_export_matches_world_hidden_gt(tmp_path):
    """Perfect labels of the smoke world's scene pool score AP 1 against its hidden ground truth."""
    from stlib.pseudo.sources import parse_unlabeled

    src = parse_unlabeled("world:scenes", world_scale="smoke")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(src.hidden_gt))
    cats = sorted(gt.dataset["categories"], key=lambda c: c["id"])
    class_of = {c["id"]: k + 1 for k, c in enumerate(cats)}
    id_of = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
    store = PseudoLabelStore.create(tmp_path, {"categories": [{"id": c["id"], "name": c["name"]} for c in cats],
                                               "source": src.spec}, len(src), 5)
    for k in store.missing_shards():
        labels = []
        for i in store.shard_range(k):
            anns = gt.loadAnns(gt.getAnnIds(imgIds=[id_of[src.key(i)]]))
            boxes = [[y, x, y + h, x + w] for x, y, w, h in (a["bbox"] for a in anns)]
            im = gt.imgs[id_of[src.key(i)]]
            labels.append(ImageLabels(i, src.key(i), im["height"], im["width"], boxes,
                                      [class_of[a["category_id"]] for a in anns], [1.0] * len(anns)))
        store.write_shard(k, labels)
    store.mark_complete()
    data = store.export_coco(tmp_path / "pseudo.json")
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(data["annotations"]), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_unreadable_shard_names_the_file(tmp_path):
    store = PseudoLabelStore.create(tmp_path, META, N, S)
    store.shard_path(0).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="shard-00000.npz: cannot read shard"):
        store.read_shard(0)
    store.write_shard(1, [_labels(i) for i in range(3, 6)])
    os.replace(store.shard_path(1), store.shard_path(2))  # a shard file under the wrong name
    with pytest.raises(ValueError, match=r"shard-00002.npz: holds indices \[3, 4, 5\], expected 6..6"):
        store.read_shard(2)
