"""Tests for stlib.data.tfds_source, offline, with tfds.testing.mock_data.

tfds' default random mock is not usable for coco/2017: it draws each
``objects`` field with its own random length (and, with ``SkipDecoding``, tfds
itself rejects such examples), and its boxes have ymin > ymax. So the tests
mock ``as_dataset`` with known examples serialized through coco/2017's real
feature spec, which exercises the same encode/decode path as a prepared dataset.
"""

import dataclasses
import json

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

from stlib.data.coco import STAT_KEYS, CocoSource, CorruptImageError, DataError, DetectionRecord  # noqa: E402
from stlib.data.tfds_source import COCO_2017_CATEGORIES, TfdsCocoSource  # noqa: E402


from tests.conftest import png_bytes as _png, random_pixels as _pixels  # noqa: E402


def _objects(rows):
    """rows: (label, [ymin, xmin, ymax, xmax] normalized, is_crowd, area)."""
    return {
        "id": np.arange(len(rows), dtype=np.int64),
        "area": np.array([r[3] for r in rows], np.int64),
        "bbox": np.array([r[1] for r in rows], np.float32).reshape(-1, 4),
        "label": np.array([r[0] for r in rows], np.int64),
        "is_crowd": np.array([r[2] for r in rows], bool),
    }


# (image id, height, width, objects); labels 0 -> person (1), 2 -> car (3), 79 -> toothbrush (90)
EXAMPLES = [
    (139, 20, 40, [(2, [0.1, 0.25, 0.5, 0.75], False, 50), (0, [0.0, 0.0, 1.0, 1.0], True, 700)]),
    (42, 32, 16, [(79, [0.25, 0.5, 0.5, 1.0], False, 20), (0, [0.5, 0.5, 0.5, 0.75], False, 0)]),  # zero height
    (7, 10, 10, []),
]


def _example(image_id, h, w, rows, image=None):
    return {
        "image": _png(_pixels(h, w, image_id)) if image is None else image,
        "image/filename": f"{image_id:012d}.jpg",
        "image/id": image_id,
        "objects": _objects(rows),
    }


def _mock(examples):
    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        features = self.info.features
        serialized = [features.serialize_example(ex) for ex in examples]
        return tf.data.Dataset.from_tensor_slices(serialized).map(
            lambda s: features.deserialize_example(s, decoders=decoders)
        )

    return tfds.testing.mock_data(num_examples=len(examples), as_dataset_fn=as_dataset)


@pytest.fixture(scope="module")
def source():
    with _mock([_example(*e) for e in EXAMPLES]):
        return TfdsCocoSource("coco/2017", split="validation")


def test_records(source):
    assert source.name == "tfds:coco/2017:validation"
    assert [r.image_id for r in source.records] == [139, 42, 7]
    r139, r42, r7 = source.records
    assert (r139.height, r139.width) == (20, 40)
    assert r139.boxes.dtype == np.float32 and r139.classes.dtype == np.int32
    np.testing.assert_allclose(r139.boxes, [[2, 10, 10, 30]], atol=1e-5)  # crowd box skipped
    np.testing.assert_array_equal(r139.classes, [3])
    np.testing.assert_allclose(r42.boxes, [[8, 8, 16, 16]], atol=1e-5)
    np.testing.assert_array_equal(r42.classes, [80])
    assert r7.boxes.shape == (0, 4) and r7.classes.shape == (0,)
    assert r139.file_name is None and r139.mask_file is None
    assert set(source.stats) == set(STAT_KEYS)
    assert source.stats["crowd_boxes_skipped"] == 1
    assert source.stats["boxes_dropped_zero_area"] == 1
    assert source.stats["images_without_boxes"] == 1


def test_categories_are_the_coco_2017_table(source):
    assert len(source.categories) == 80
    assert source.categories[0] == {"id": 1, "name": "person"}
    assert source.categories[79] == {"id": 90, "name": "toothbrush"}
    assert [c["id"] for c in source.categories] == sorted(c["id"] for c in source.categories)


def test_coco_table():
    ids = [i for i, _ in COCO_2017_CATEGORIES]
    names = [n for _, n in COCO_2017_CATEGORIES]
    assert len(ids) == 80 and ids == sorted(set(ids)) and len(set(names)) == 80
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert dict(COCO_2017_CATEGORIES)[10] == "traffic light" and dict(COCO_2017_CATEGORIES)[67] == "dining table"


def test_images_decode_exactly(source):
    for i, (image_id, h, w, _) in enumerate(EXAMPLES):
        np.testing.assert_array_equal(source.load_image(i), _pixels(h, w, image_id))


def test_coco_gt_from_tfds_objects(source):
    gt = source.coco_gt()
    assert sorted(gt.getImgIds()) == [7, 42, 139]
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[139]))
    assert [a["category_id"] for a in anns] == [3, 1]
    np.testing.assert_allclose(anns[0]["bbox"], [10, 2, 20, 8], atol=1e-5)  # xywh, absolute
    assert [a["iscrowd"] for a in anns] == [0, 1]
    assert [a["area"] for a in anns] == [50.0, 700.0]


def test_coco_gt_leaves_out_the_boxes_the_loader_drops(source):
    """Issue 14: image 42's zero-height box is dropped by the loader, so it is no ground truth."""
    gt = source.coco_gt()
    assert [a["category_id"] for a in gt.loadAnns(gt.getAnnIds(imgIds=[42]))] == [90]


def test_perfect_predictions_score_ap_one(source):
    detections = []
    for r in source.records:
        for (ymin, xmin, ymax, xmax), c in zip(r.boxes.tolist(), r.classes.tolist()):
            detections.append({"image_id": r.image_id, "category_id": source.categories[c - 1]["id"],
                               "bbox": [xmin, ymin, xmax - xmin, ymax - ymin], "score": 1.0})
    gt = source.coco_gt()
    ev = COCOeval(gt, gt.loadRes(detections), "bbox")
    ev.params.areaRng = [[0, 1e10]]  # the tiny boxes have areas below every COCO size range
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()
    assert ev.eval["precision"][0, :, [2, 79], 0, -1].min() == pytest.approx(1.0)


def test_same_records_as_coco_source(source, tmp_path):
    """A COCO folder holding the same images and annotations gives the same records."""
    images, annotations = [], []
    for image_id, h, w, rows in EXAMPLES:
        (tmp_path / f"{image_id}.png").write_bytes(_png(_pixels(h, w, image_id)))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        for label, (y0, x0, y1, x1), crowd, area in rows:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": COCO_2017_CATEGORIES[label][0],
                                "bbox": [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h], "iscrowd": int(crowd),
                                "area": area})
    categories = [{"id": i, "name": n} for i, n in COCO_2017_CATEGORIES]
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    folder = CocoSource(tmp_path / "ann.json", tmp_path)

    assert [f.name for f in dataclasses.fields(DetectionRecord)] == list(vars(source.records[0]))
    assert folder.categories == source.categories
    index_of = {r.image_id: i for i, r in enumerate(folder.records)}
    for i, r in enumerate(source.records):
        f = folder.records[index_of[r.image_id]]
        assert (f.height, f.width) == (r.height, r.width)
        assert f.boxes.dtype == r.boxes.dtype and f.classes.dtype == r.classes.dtype
        np.testing.assert_allclose(f.boxes, r.boxes, atol=1e-4)
        np.testing.assert_array_equal(f.classes, r.classes)
        np.testing.assert_array_equal(folder.load_image(index_of[r.image_id]), source.load_image(i))
    assert folder.stats == source.stats


def test_subset(source):
    sub = source.subset([42, 7])
    assert [r.image_id for r in sub.records] == [42, 7]
    assert sorted(sub.coco_gt().getImgIds()) == [7, 42]
    assert sub.stats["crowd_boxes_skipped"] == 0 and sub.stats["boxes_dropped_zero_area"] == 1
    np.testing.assert_array_equal(sub.load_image(0), _pixels(32, 16, 42))


def test_max_examples():
    with _mock([_example(*e) for e in EXAMPLES]):
        src = TfdsCocoSource("coco/2017", split="train", max_examples=2)
    assert [r.image_id for r in src.records] == [139, 42]


def test_corrupt_images():
    garbage_body = _png(_pixels(12, 14, 5))[:60]  # valid header, truncated data
    examples = [_example(*EXAMPLES[0]), _example(5, 12, 14, [], image=garbage_body), _example(6, 9, 9, [], image=b"junk")]
    with _mock(examples):
        src = TfdsCocoSource("coco/2017", split="train")
    assert [r.image_id for r in src.records] == [139, 5]  # id 6's header is unreadable: left out, counted
    assert src.stats["images_corrupt"] == 1
    assert (src.records[1].height, src.records[1].width) == (12, 14)
    with pytest.raises(CorruptImageError, match=r"tfds:coco/2017:train image id 5"):
        src.load_image(1)
    assert src.load_image_or_none(1) is None
    assert src.stats["images_corrupt"] == 2
    assert [r.image_id for r, _ in src.iterate()] == [139]


def test_not_prepared(tmp_path):
    with pytest.raises(DataError, match=r"'coco/2017'.*is not prepared.*tfds build coco/2017 --data_dir " + str(tmp_path)):
        TfdsCocoSource("coco/2017", split="validation", data_dir=tmp_path)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match=r"'no_such_dataset_xyz'.*not a known tfds dataset"):
        TfdsCocoSource("no_such_dataset_xyz", data_dir=tmp_path)


class _OnDisk(list):
    """A random-access data source that counts its reads (tfds' array_record source, mocked)."""

    reads = 0

    def __getitem__(self, i):
        type(self).reads += 1
        return super().__getitem__(i)


def _mock_random_access(examples):
    def as_data_source(self, split, decoders=None, **kwargs):
        features = self.info.features
        rows = [tfds.as_numpy(features.deserialize_example(features.serialize_example(ex), decoders=decoders))
                for ex in examples]
        return _OnDisk(rows)

    def no_dataset(self, *a, **k):
        raise AssertionError("random access reads no tf.data pipeline")

    return tfds.testing.mock_data(num_examples=len(examples), as_dataset_fn=no_dataset,
                                  as_data_source_fn=as_data_source)


def test_random_access_reads_images_from_disk_when_a_batch_needs_them(source):
    """An array_record-prepared split: the same records and pixels as the in-memory source, with no
    image bytes held; every load_image is one read of the data source."""
    with _mock_random_access([_example(*e) for e in EXAMPLES]):
        disk = TfdsCocoSource("coco/2017", split="validation", random_access=True)
    assert disk.random_access and not source.random_access
    assert [vars(r).keys() for r in disk.records] == [vars(r).keys() for r in source.records]
    for a, b in zip(disk.records, source.records):
        assert (a.image_id, a.height, a.width) == (b.image_id, b.height, b.width)
        np.testing.assert_array_equal(a.boxes, b.boxes)
    assert all(isinstance(v, int) for v in disk._encoded.values())  # positions, not bytes
    before = _OnDisk.reads
    for i, (image_id, h, w, _) in enumerate(EXAMPLES):
        np.testing.assert_array_equal(disk.load_image(i), _pixels(h, w, image_id))
    assert _OnDisk.reads - before == len(EXAMPLES)
    assert disk.coco_gt().getImgIds() == source.coco_gt().getImgIds()
    np.testing.assert_array_equal(disk.subset([42]).load_image(0), _pixels(32, 16, 42))


def test_random_access_of_a_tfrecord_split_names_the_fix():
    def tfrecord_only(self, *a, **k):  # what tfds raises for a TFRecord-prepared dataset
        raise NotImplementedError("Random access data source for file format tfrecord is not supported.")

    with tfds.testing.mock_data(num_examples=1, as_data_source_fn=tfrecord_only):
        with pytest.raises(DataError, match=r"prepared as \w+, which has no random access: rebuild it with "
                                            r"`tfds build coco/2017 .*--file_format=array_record`"):
            TfdsCocoSource("coco/2017", split="validation", random_access=True)
