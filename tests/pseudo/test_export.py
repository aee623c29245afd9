"""Pseudo-label export (issue 14): no zero-area box is stored or exported, and the counts say
what the store holds (`--min-score` above `--threshold` is an error)."""
import json
import types

import jax
import numpy as np
import pytest

from stlib import config as cfg
from stlib.pseudo.labels import ImageLabels
from stlib.pseudo.store import PseudoLabelStore, check_export_thresholds
from tests.conftest import SMOKE

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}, {"id": 5, "name": "star"}]


def _store(tmp_path, labels, min_score=0.05):
    store = PseudoLabelStore.create(tmp_path / "store", {"categories": CATEGORIES, "min_score": min_score},
                                    len(labels), len(labels))
    store.write_shard(0, labels)
    store.mark_complete()
    return store


def test_zero_area_boxes_are_not_exported_and_are_counted(tmp_path):
    labels = [
        ImageLabels(0, "a.png", 40, 64, [[2, 2, 20, 20], [40, 5, 40, 30], [5, 9, 25, 9]], [2, 1, 3], [0.8, 0.9, 0.9]),
        ImageLabels(1, "b.png", 40, 64, [[30, 10, 20, 30], [0, 0, 40, 64]], [1, 1], [0.95, 0.6]),
    ]
    data = _store(tmp_path, labels).export_coco(tmp_path / "pseudo.json", min_score=0.5)
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in data["annotations"]] == \
        [(1, 3, [2.0, 2.0, 18.0, 18.0]), (2, 1, [0.0, 0.0, 64.0, 40.0])]
    assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 and a["area"] > 0 for a in data["annotations"])
    assert data["info"]["zero_area_boxes_dropped"] == 3    # zero height, zero width, negative height
    assert data["info"]["min_score"] == 0.5 and data["info"]["store_min_score"] == 0.05
    assert json.loads((tmp_path / "pseudo.json").read_text())["info"]["zero_area_boxes_dropped"] == 3
    assert [im["id"] for im in data["images"]] == [1, 2]   # an image keeps its place without boxes


def test_an_export_below_the_store_floor_is_an_error(tmp_path):
    store = _store(tmp_path, [ImageLabels(0, "a.png", 40, 64, [[2, 2, 20, 20]], [1], [0.95])], min_score=0.9)
    with pytest.raises(ValueError, match=r"kept boxes scoring >= 0.9 only.*min_score 0.5") as info:
        store.export_coco(tmp_path / "pseudo.json", min_score=0.5)
    assert "\n" not in str(info.value) and not (tmp_path / "pseudo.json").exists()
    assert len(store.export_coco(tmp_path / "pseudo.json", min_score=0.9)["annotations"]) == 1


def test_min_score_above_threshold_is_a_one_line_params_error():
    with pytest.raises(cfg.ParamsError, match=r"--min-score 0.9 is above --threshold 0.5") as info:
        check_export_thresholds(0.9, 0.5)
    assert "\n" not in str(info.value)
    check_export_thresholds(0.5, 0.5)
    check_export_thresholds(0.1, 0.5)


def test_labelling_stores_no_box_that_clipping_collapsed(tmp_path, monkeypatch):
    """`_label_shards` with a stand-in detector: a box below the image clips to zero height and is not stored."""
    import stlib.pseudo.label as label_mod
    from stlib.pseudo.label import _label_shards

    bs = 2 * jax.device_count()
    # canvas pixels (the 40x64 images fit the 64 px smoke canvas at scale 1): a box, one below the
    # image (clipped to zero height), one of zero height, one not valid
    boxes = np.array([[2, 2, 20, 20], [45, 5, 60, 30], [10, 10, 10, 30], [5, 5, 15, 15]], np.float32)

    class FakeDetector:
        def __init__(self, *args):
            pass

        def predict_step(self, variables, batch):
            return {"boxes": np.broadcast_to(boxes, (bs, 4, 4)), "scores": np.full((bs, 4), 0.9, np.float32),
                    "classes": np.broadcast_to(np.array([2, 1, 3, 1], np.int32), (bs, 4)),
                    "valid": np.broadcast_to(np.array([True, True, True, False]), (bs, 4))}

    monkeypatch.setattr(label_mod, "Detector", FakeDetector)
    image = np.zeros((40, 64, 3), np.uint8)
    source = types.SimpleNamespace(images_at=lambda indices: iter([(i, image) for i in indices]),
                                   key=lambda i: f"{i}.png")
    teacher = types.SimpleNamespace(params=cfg.load_params(SMOKE),
                                    load_state=lambda d: types.SimpleNamespace(params={}, batch_stats={}))
    store = PseudoLabelStore.create(tmp_path / "store", {"categories": CATEGORIES}, 3, 3)
    _label_shards(teacher, source, store, [0], 0.5, "nms", bs, False)
    for label in store.read_shard(0):
        np.testing.assert_array_equal(label.boxes, [[2, 2, 20, 20]])
        np.testing.assert_array_equal(label.classes, [2])
