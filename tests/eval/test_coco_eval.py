"""COCO AP through our conversion path: ground truth fed back as predictions scores 1.0."""
import numpy as np
import pytest

from stlib.data.coco import CocoSource
from stlib.data.pipeline import DetectionData
from stlib.data.world import ensure_world
from stlib.eval.coco_eval import detections_to_coco, evaluate_coco


@pytest.fixture(scope="module")
def val_source():
    root = ensure_world("smoke", 0)
    return CocoSource(root / "detection/annotations/val.json", root / "detection/val/images")


def gt_as_detections(data: DetectionData, batch_size=4):
    """Ground-truth boxes of every example, in the batched postprocess output format."""
    for batch in data.eval_batches(batch_size):
        yield {"boxes": batch["boxes"], "scores": batch["valid"].astype(np.float32), "classes": batch["classes"],
               "valid": batch["valid"], "image_id": batch["image_id"], "scale": batch["scale"],
               "example_valid": batch["example_valid"]}


@pytest.mark.parametrize("size", [64, 32])  # 32: a resize on the way in and back out
def test_ground_truth_as_predictions_gives_ap_one(val_source, size):
    data = DetectionData(val_source, size, max_boxes=16)
    cat_ids = [c["id"] for c in val_source.categories]
    results = [r for det in gt_as_detections(data) for r in detections_to_coco(det, cat_ids)]
    m = evaluate_coco(val_source.coco_gt(), results, image_ids=[r.image_id for r in val_source.records])
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)


def test_no_detections_is_zero_and_wrong_class_is_zero(val_source):
    data = DetectionData(val_source, 64, max_boxes=16)
    assert evaluate_coco(val_source.coco_gt(), [])["AP"] == 0.0
    cat_ids = [c["id"] for c in val_source.categories]
    shifted = cat_ids[1:] + cat_ids[:1]  # every prediction labelled with another class
    results = [r for det in gt_as_detections(data) for r in detections_to_coco(det, shifted)]
    assert evaluate_coco(val_source.coco_gt(), results)["AP"] == pytest.approx(0.0)
