"""Evaluation scores the ground truth the loader trains on: dropped boxes are no misses, clipped
boxes are evaluated clipped, crowd boxes stay COCO's ignore regions (issue 14)."""
import contextlib
import io
import json
import math

import pytest
from pycocotools.coco import COCO

from stlib.data.coco import CocoSource, clean_gt_annotations
from stlib.eval.coco_eval import evaluate_coco

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
IMAGES = [{"id": 1, "file_name": "a.png", "height": 40, "width": 60},
          {"id": 2, "file_name": "b.png", "height": 30, "width": 30}]
# (id, image, category, xywh, iscrowd, area): boxes inside their image
CLEAN = [
    (1, 1, 1, [5.0, 5.0, 10.0, 10.0], 0, 100.0),
    (2, 1, 1, [50.0, 20.0, 10.0, 15.0], 0, 150.0),   # what the loader makes of box 2 below
    (3, 2, 2, [2.0, 2.0, 8.0, 8.0], 0, 64.0),
    (4, 2, 1, [10.0, 10.0, 20.0, 20.0], 1, 400.0),   # a crowd region, reaching the image's corner
    (5, 2, 1, [0.0, 20.0, 6.0, 6.0], 0, 36.0),       # nobody finds this one: a real miss
]
# The same objects as a user's json may hold them: box 2 and the crowd box run out of the image,
# and four boxes the loader drops (entirely outside, zero area) that are no objects of the image.
DIRTY = [
    (1, 1, 1, [5.0, 5.0, 10.0, 10.0], 0, 100.0),
    (2, 1, 1, [50.0, 20.0, 20.0, 15.0], 0, 300.0),   # half outside: clipped to CLEAN's box 2
    (3, 2, 2, [2.0, 2.0, 8.0, 8.0], 0, 64.0),
    (4, 2, 1, [10.0, 10.0, 40.0, 40.0], 1, 1600.0),  # crowd, partly outside: clipped, still crowd
    (5, 2, 1, [0.0, 20.0, 6.0, 6.0], 0, 36.0),
    (6, 1, 1, [70.0, 5.0, 10.0, 10.0], 0, 100.0),    # right of the image
    (7, 1, 2, [-20.0, -20.0, 5.0, 5.0], 0, 25.0),    # above-left of the image
    (8, 2, 2, [3.0, 3.0, 0.0, 7.0], 0, 0.0),         # zero width
    (9, 2, 1, [100.0, 100.0, 5.0, 5.0], 1, 25.0),    # a crowd box outside the image
]
# Fixed predictions (xywh, score): hits, a near hit, a false positive, one inside the crowd region.
PREDICTIONS = [
    {"image_id": 1, "category_id": 1, "bbox": [5.0, 5.0, 10.0, 10.0], "score": 0.9},
    {"image_id": 1, "category_id": 1, "bbox": [50.0, 20.0, 10.0, 15.0], "score": 0.8},
    {"image_id": 1, "category_id": 2, "bbox": [30.0, 10.0, 8.0, 8.0], "score": 0.85},  # false positive
    {"image_id": 2, "category_id": 2, "bbox": [2.5, 2.0, 8.0, 8.0], "score": 0.7},
    {"image_id": 2, "category_id": 1, "bbox": [15.0, 15.0, 10.0, 10.0], "score": 0.95},  # in the crowd region
]


def write_json(path, rows):
    anns = [{"id": i, "image_id": im, "category_id": c, "bbox": b, "iscrowd": crowd, "area": area}
            for i, im, c, b, crowd, area in rows]
    path.write_text(json.dumps({"images": IMAGES, "annotations": anns, "categories": CATEGORIES}))
    return path


def source(tmp_path, name, rows):
    return CocoSource(write_json(tmp_path / f"{name}.json", rows), tmp_path, check_files=False)


def same(a: dict, b: dict) -> bool:
    return all(a[k] == pytest.approx(b[k]) or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_out_of_image_boxes_do_not_change_ap(tmp_path):
    clean, dirty = source(tmp_path, "clean", CLEAN), source(tmp_path, "dirty", DIRTY)
    assert dirty.stats["boxes_dropped_outside"] == 2 and dirty.stats["boxes_dropped_zero_area"] == 1
    assert dirty.stats["boxes_clipped"] == 1
    want = evaluate_coco(clean.coco_gt(), PREDICTIONS)
    got = evaluate_coco(dirty.coco_gt(), PREDICTIONS)
    assert 0.0 < want["AP"] < 1.0
    assert same(got, want), (got, want)
    # The raw json (what evaluation read before) scores the same predictions lower.
    raw = COCO()
    raw.dataset = json.loads((tmp_path / "dirty.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        raw.createIndex()
    assert evaluate_coco(raw, PREDICTIONS)["AP"] < want["AP"] - 0.05


def test_crowd_boxes_stay_ignore_regions(tmp_path):
    gt = source(tmp_path, "dirty", DIRTY).coco_gt()
    assert sorted(gt.getAnnIds()) == [1, 2, 3, 4, 5]
    assert gt.anns[4]["iscrowd"] == 1 and gt.anns[4]["bbox"] == [10.0, 10.0, 20.0, 20.0]
    assert gt.anns[4]["area"] == pytest.approx(400.0)   # the share of the box left in the image
    assert gt.anns[2]["bbox"] == [50.0, 20.0, 10.0, 15.0] and gt.anns[2]["area"] == pytest.approx(150.0)
    # A detection inside the crowd region is neither a hit nor a false positive.
    outside_crowd = [p for p in PREDICTIONS if p["score"] != 0.95]
    assert same(evaluate_coco(gt, PREDICTIONS), evaluate_coco(gt, outside_crowd))


def test_the_source_json_and_its_records_are_untouched(tmp_path):
    dirty = source(tmp_path, "dirty", DIRTY)
    raw = json.loads((tmp_path / "dirty.json").read_text())["annotations"]
    gt = dirty.coco_gt()
    gt.anns[2]["bbox"][0] = -1.0                      # COCOeval writes into its GT
    assert dirty._gt_dataset["annotations"] == raw
    assert [len(r.boxes) for r in dirty.records] == [2, 2]  # crowd boxes are not trained on


def test_clean_gt_annotations_keeps_untouched_boxes_exactly():
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0.1, 0.2, 3.3, 4.4], "area": 7.0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}]
    out = clean_gt_annotations(anns, [{"id": 1, "height": 10, "width": 10}])
    assert out[0] == anns[0] and out[0] is not anns[0]
    assert out[1] == {**anns[1], "area": 4.0, "iscrowd": 0} and "area" not in anns[1]
