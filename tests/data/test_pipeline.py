"""Host pipeline: fixed shapes, batches as a pure function of (seed, step), eval covers every image once."""
import numpy as np
import pytest

from stlib.data.coco import CocoSource
from stlib.data.pipeline import DetectionData
from stlib.data.sources import label_subset_source
from stlib.data.world import ensure_world


@pytest.fixture(scope="module")
def data():
    root = ensure_world("smoke", 0)
    src = CocoSource(root / "detection/annotations/train.json", root / "detection/train/images")
    return DetectionData(src, 64, max_boxes=8)


def test_shapes_and_dtypes(data):
    b = data.train_batch(0, 4, seed=0)
    assert b["image"].shape == (4, 64, 64, 3) and b["image"].dtype == np.uint8
    assert b["boxes"].shape == (4, 8, 4) and b["classes"].shape == (4, 8) and b["valid"].dtype == bool
    assert "mask" not in b
    m = DetectionData(data.source, 64, max_boxes=8, with_masks=True).train_batch(0, 4, seed=0)["mask"]
    assert m.shape == (4, 64, 64) and m.dtype == np.uint8
    for k in range(4):  # box pixels carry their class in the semantic mask (boxes are tight, objects fill them)
        for box, c in zip(b["boxes"][k][b["valid"][k]], b["classes"][k][b["valid"][k]]):
            y0, x0, y1, x1 = box.astype(int)
            assert (m[k, y0:y1, x0:x1] == c).any()
    ok = b["valid"]
    assert (b["classes"][ok] >= 1).all() and (b["classes"][~ok] == 0).all()


def test_batches_are_a_pure_function_of_step(data):
    a = data.train_batch(5, 4, seed=1)
    fresh = DetectionData(data.source, 64, max_boxes=8)
    b = fresh.train_batch(5, 4, seed=1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["image_id"], data.train_batch(6, 4, seed=1)["image_id"])
    # One epoch visits every image once.
    n = len(data)
    ids = np.concatenate([data.train_batch(s, 4, seed=2)["image_id"] for s in range(n // 4)])
    assert len(set(ids.tolist())) == len(ids)


def test_process_slices_make_the_global_batch(data):
    full = data.train_batch(3, 4, seed=0)
    parts = [data.train_batch(3, 4, seed=0, process_index=i, process_count=2) for i in range(2)]
    np.testing.assert_array_equal(full["image_id"], np.concatenate([p["image_id"] for p in parts]))


def test_eval_batches_cover_every_image_once(data):
    ids = []
    for b in data.eval_batches(6):
        assert b["image"].shape[0] == 6
        ids.extend(b["image_id"][b["example_valid"]].tolist())
    assert sorted(ids) == sorted(r.image_id for r in data.source.records)


def test_label_fractions_are_nested(data):
    s20 = label_subset_source(data.source, 0.2, 0)
    s50 = label_subset_source(data.source, 0.5, 0)
    a, b = {r.image_id for r in s20.records}, {r.image_id for r in s50.records}
    assert a < b and len(b) == round(0.5 * len(data.source.records))
