"""Tests for stlib.data.coco: tiny COCO folders written to tmp_path, good and bad."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools.cocoeval import COCOeval

from stlib.data.coco import (
    STAT_KEYS,
    CocoSource,
    CorruptImageError,
    DataError,
    DetectionRecord,
    clip_boxes,
    load_images_cached,
    summarize,
)

CATEGORIES = [{"id": 7, "name": "kite"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def _pixels(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_coco(root, images, annotations, categories=CATEGORIES, write=True):
    """Write ``root/images/*`` (PNG, known pixels) and ``root/ann.json``; return (ann_file, image_dir).

    ``images`` rows are (id, file_name, height, width); ``annotations`` rows are
    (ann id, image id, category id, bbox[, iscrowd]).
    """
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    if write:
        for image_id, file_name, h, w in images:
            Image.fromarray(_pixels(h, w, image_id)).save(image_dir / file_name)
    data = {
        "images": [{"id": i, "file_name": f, "height": h, "width": w} for i, f, h, w in images],
        "annotations": [
            {"id": a[0], "image_id": a[1], "category_id": a[2], "bbox": a[3], "iscrowd": a[4] if len(a) > 4 else 0, "area": 100.0}
            for a in annotations
        ],
        "categories": categories,
    }
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, image_dir


GOOD_IMAGES = [(20, "b.png", 30, 40), (10, "a.png", 24, 32), (30, "c.png", 16, 16)]
GOOD_ANNS = [
    (1, 10, 3, [2.0, 4.0, 10.0, 6.0]),       # car
    (2, 10, 7, [0.0, 0.0, 5.0, 5.0]),        # kite
    (3, 20, 1, [10.5, 1.5, 20.0, 8.0]),      # person
    (4, 20, 1, [0.0, 0.0, 40.0, 30.0], 1),   # crowd person
]


@pytest.fixture
def good(tmp_path):
    return CocoSource(*write_coco(tmp_path, GOOD_IMAGES, GOOD_ANNS))


def test_good_dataset_records(good, tmp_path):
    assert good.name == "ann"
    assert good.categories == [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "kite"}]
    assert good.num_classes == 3
    assert [r.image_id for r in good.records] == [10, 20, 30]
    r10, r20, r30 = good.records
    assert isinstance(r10, DetectionRecord)
    assert (r10.height, r10.width) == (24, 32)
    assert r10.boxes.dtype == np.float32 and r10.classes.dtype == np.int32
    # xywh -> [ymin, xmin, ymax, xmax]; category 3 -> class 2, 7 -> class 3
    np.testing.assert_array_equal(r10.boxes, [[4, 2, 10, 12], [0, 0, 5, 5]])
    np.testing.assert_array_equal(r10.classes, [2, 3])
    np.testing.assert_array_equal(r20.boxes, [[1.5, 10.5, 9.5, 30.5]])
    np.testing.assert_array_equal(r20.classes, [1])
    assert r30.boxes.shape == (0, 4) and r30.boxes.dtype == np.float32
    assert r30.classes.shape == (0,) and r30.classes.dtype == np.int32
    assert r10.file_name == str(tmp_path / "images" / "a.png")
    assert r10.mask_file is None
    assert set(good.stats) == set(STAT_KEYS)
    assert good.stats["crowd_boxes_skipped"] == 1
    assert good.stats["images_without_boxes"] == 1
    assert sum(good.stats.values()) == 2


def test_good_dataset_images(good):
    for i, r in enumerate(good.records):
        image = good.load_image(i)
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, _pixels(r.height, r.width, r.image_id))


def test_grayscale_and_rgba_become_rgb(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, [(1, "g.png", 8, 6), (2, "a.png", 8, 6)], [], write=False)
    gray = np.arange(48, dtype=np.uint8).reshape(8, 6)
    Image.fromarray(gray, "L").save(image_dir / "g.png")
    rgba = np.dstack([_pixels(8, 6, 2), np.full((8, 6), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(image_dir / "a.png")
    src = CocoSource(ann_file, image_dir)
    g, a = src.load_image(0), src.load_image(1)
    assert g.shape == a.shape == (8, 6, 3)
    np.testing.assert_array_equal(g, np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(a, rgba[..., :3])


def test_coco_gt_keeps_original_annotations(good):
    gt = good.coco_gt()
    assert sorted(gt.getImgIds()) == [10, 20, 30]
    assert sorted(gt.getCatIds()) == [1, 3, 7]
    assert len(gt.getAnnIds()) == 4  # crowd kept
    assert gt.anns[4]["iscrowd"] == 1
    assert gt.anns[3]["bbox"] == [10.5, 1.5, 20.0, 8.0]


def test_perfect_predictions_score_ap_one(good):
    """Records -> xywh detections with original category ids round-trip through COCOeval."""
    detections = []
    for r in good.records:
        for (ymin, xmin, ymax, xmax), c in zip(r.boxes.tolist(), r.classes.tolist()):
            detections.append({"image_id": r.image_id, "category_id": good.categories[c - 1]["id"],
                               "bbox": [xmin, ymin, xmax - xmin, ymax - ymin], "score": 1.0})
    gt = good.coco_gt()
    ev = COCOeval(gt, gt.loadRes(detections), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_skip_crowd_false_keeps_crowd_boxes(tmp_path):
    src = CocoSource(*write_coco(tmp_path, GOOD_IMAGES, GOOD_ANNS), skip_crowd=False)
    assert len(src.records[1].boxes) == 2
    assert src.stats["crowd_boxes_skipped"] == 0


def test_missing_image_file(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, GOOD_IMAGES, GOOD_ANNS)
    (image_dir / "b.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 image files are missing .*" + re.escape(str(image_dir / "b.png"))):
        CocoSource(ann_file, image_dir)
    assert len(CocoSource(ann_file, image_dir, check_files=False).records) == 3


def test_many_missing_files_lists_five_and_count(tmp_path):
    images = [(i, f"{i}.png", 4, 4) for i in range(1, 8)]
    ann_file, image_dir = write_coco(tmp_path, images, [], write=False)
    with pytest.raises(DataError, match=r"7 of 7 image files are missing") as info:
        CocoSource(ann_file, image_dir)
    assert str(info.value).count(".png") == 5


def test_box_partly_outside_is_clipped(tmp_path):
    src = CocoSource(*write_coco(tmp_path, [(1, "a.png", 20, 30)], [(1, 1, 1, [25.0, -5.0, 10.0, 10.0])]))
    np.testing.assert_array_equal(src.records[0].boxes, [[0, 25, 5, 30]])
    assert src.stats["boxes_clipped"] == 1
    assert summarize(src) == "ann: 1 images, 1 boxes, 3 categories; boxes_clipped=1"


def test_box_entirely_outside_is_dropped(tmp_path):
    anns = [(1, 1, 1, [31.0, 0.0, 5.0, 5.0]), (2, 1, 1, [0.0, -9.0, 5.0, 9.0]), (3, 1, 3, [1.0, 1.0, 2.0, 2.0])]
    src = CocoSource(*write_coco(tmp_path, [(1, "a.png", 20, 30)], anns))
    np.testing.assert_array_equal(src.records[0].classes, [2])
    assert src.stats["boxes_dropped_outside"] == 2
    assert src.stats["boxes_clipped"] == 0


def test_zero_area_boxes_are_dropped(tmp_path):
    anns = [(1, 1, 1, [1.0, 1.0, 0.0, 5.0]), (2, 1, 1, [1.0, 1.0, 5.0, -2.0]), (3, 1, 3, [1.0, 1.0, 2.0, 2.0])]
    src = CocoSource(*write_coco(tmp_path, [(1, "a.png", 20, 30)], anns))
    np.testing.assert_array_equal(src.records[0].boxes, [[1, 1, 3, 3]])
    assert src.stats["boxes_dropped_zero_area"] == 2


def test_unknown_category_id_is_named(tmp_path):
    anns = [(1, 1, 1, [1.0, 1.0, 2.0, 2.0]), (5, 1, 99, [1.0, 1.0, 2.0, 2.0])]
    ann_file, image_dir = write_coco(tmp_path, [(1, "a.png", 20, 30)], anns)
    with pytest.raises(DataError, match=r"ann\.json: annotation id 5 \(image id 1\) has category_id 99, which is not in 'categories'"):
        CocoSource(ann_file, image_dir)


def test_unknown_image_id_is_named(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, [(1, "a.png", 20, 30)], [(8, 4, 1, [1.0, 1.0, 2.0, 2.0])])
    with pytest.raises(DataError, match=r"annotation id 8 refers to image_id 4, which is not in 'images'"):
        CocoSource(ann_file, image_dir)


@pytest.mark.parametrize("bbox", [[1.0, 2.0, 3.0], [1.0, float("nan"), 3.0, 4.0], ["1", 2, 3, 4], None, [1, 2, 3, True]])
def test_malformed_bbox_is_named(tmp_path, bbox):
    ann_file, image_dir = write_coco(tmp_path, [(1, "a.png", 20, 30)], [(6, 1, 1, bbox)])
    with pytest.raises(DataError, match=r"annotation id 6 \(image id 1\) has a malformed bbox"):
        CocoSource(ann_file, image_dir)


def test_image_without_boxes_is_kept(tmp_path):
    images = [(1, "a.png", 20, 30), (2, "b.png", 20, 30), (3, "c.png", 20, 30)]
    anns = [(1, 1, 1, [1.0, 1.0, 2.0, 2.0]), (2, 3, 1, [1.0, 1.0, 0.0, 2.0])]  # image 3's only box is dropped
    src = CocoSource(*write_coco(tmp_path, images, anns))
    assert [len(r.boxes) for r in src.records] == [1, 0, 0]
    assert src.stats["images_without_boxes"] == 2


def test_corrupt_image(tmp_path):
    images = [(1, "a.png", 20, 30), (2, "bad.jpg", 20, 30), (3, "trunc.png", 20, 30)]
    ann_file, image_dir = write_coco(tmp_path, images, [], write=False)
    Image.fromarray(_pixels(20, 30, 1)).save(image_dir / "a.png")
    (image_dir / "bad.jpg").write_bytes(b"this is not a jpeg")
    Image.fromarray(_pixels(20, 30, 3)).save(image_dir / "trunc.png")
    (image_dir / "trunc.png").write_bytes((image_dir / "trunc.png").read_bytes()[:100])
    src = CocoSource(ann_file, image_dir)  # corruption is found when decoding, not at construction
    with pytest.raises(CorruptImageError, match=re.escape(str(image_dir / "bad.jpg"))) as info:
        src.load_image(1)
    assert info.value.path == str(image_dir / "bad.jpg")
    with pytest.raises(CorruptImageError, match=re.escape(str(image_dir / "trunc.png"))):
        src.load_image(2)
    assert src.load_image_or_none(1) is None
    assert src.stats["images_corrupt"] == 1
    cached = load_images_cached(src, workers=2)
    assert cached[0].shape == (20, 30, 3) and cached[1] is None and cached[2] is None
    assert src.stats["images_corrupt"] == 3
    assert [r.image_id for r, _ in src.iterate(shuffle_seed=0)] == [1]
    assert "images_corrupt=5" in summarize(src)


def test_image_size_differs_from_annotation(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, [(1, "a.png", 20, 30)], [], write=False)
    Image.fromarray(_pixels(30, 20, 1)).save(image_dir / "a.png")
    with pytest.raises(CorruptImageError, match=r"a\.png: decoded size 30x20 differs from the annotation's 20x30"):
        CocoSource(ann_file, image_dir).load_image(0)


def test_malformed_json(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, GOOD_IMAGES, GOOD_ANNS)
    ann_file.write_text('{"images": [')
    with pytest.raises(DataError, match=re.escape(str(ann_file)) + ": not valid JSON"):
        CocoSource(ann_file, image_dir)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match=r"annotation file not found: .*nope\.json"):
        CocoSource(tmp_path / "nope.json", tmp_path)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_required_key(tmp_path, key):
    ann_file, image_dir = write_coco(tmp_path, GOOD_IMAGES, GOOD_ANNS)
    data = json.loads(ann_file.read_text())
    del data[key]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=re.escape(str(ann_file)) + f": missing required key '{key}'"):
        CocoSource(ann_file, image_dir)


def test_bad_image_entry_is_named(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, GOOD_IMAGES, GOOD_ANNS)
    data = json.loads(ann_file.read_text())
    del data["images"][1]["height"]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[1\] \(id 10\) is missing 'height'"):
        CocoSource(ann_file, image_dir)


def test_subset(good):
    sub = good.subset([20, 30])
    assert [r.image_id for r in sub.records] == [20, 30]
    assert sorted(sub.coco_gt().getImgIds()) == [20, 30]
    assert sorted(sub.coco_gt().getAnnIds()) == [3, 4]
    assert sub.categories == good.categories
    assert sub.stats["crowd_boxes_skipped"] == 1 and sub.stats["images_without_boxes"] == 1
    only10 = good.subset(np.array([10]))
    assert only10.stats["crowd_boxes_skipped"] == 0 and only10.stats["images_without_boxes"] == 0
    np.testing.assert_array_equal(only10.load_image(0), good.load_image(0))
    assert sorted(good.coco_gt().getImgIds()) == [10, 20, 30]  # the parent is untouched
    with pytest.raises(DataError, match=r"2 image id\(s\) not in the source, e.g. \[11, 12\]"):
        good.subset([10, 11, 12])


def test_mask_file_found_beside_images(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, [(1, "a.png", 8, 8), (2, "b.png", 8, 8)], [])
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "a.png")
    src = CocoSource(ann_file, image_dir)
    assert src.records[0].mask_file == str(tmp_path / "masks" / "a.png")
    assert src.records[1].mask_file is None


def test_clip_boxes_float32_collapse_counts_as_zero_area():
    from collections import Counter

    counts = Counter()
    boxes = np.array([[100.0, 1.0, 100.000001, 5.0]])
    _, keep = clip_boxes(boxes, 200, 200, counts)
    assert not keep[0] and counts["boxes_dropped_zero_area"] == 1
