"""COCO box AP (AP, AP50, AP75, APs, APm, APl) through pycocotools."""
from __future__ import annotations

import contextlib
import io

import numpy as np

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections_to_coco(det: dict, category_ids: list[int]) -> list[dict]:
    """Batched postprocess output (numpy) -> COCO result dicts in original image pixels.

    Args:
      det: boxes [B,D,4] yxyx canvas pixels, scores [B,D], classes [B,D] (1..K), valid [B,D],
        image_id [B], scale [B] (canvas / original), example_valid [B].
      category_ids: dataset category id for contiguous class k at index k-1.
    """
    out = []
    for b in np.nonzero(det["example_valid"])[0]:
        s = float(det["scale"][b])
        for box, score, cls, ok in zip(det["boxes"][b], det["scores"][b], det["classes"][b], det["valid"][b]):
            if not ok:
                continue
            y0, x0, y1, x1 = (float(v) / s for v in box)
            out.append({"image_id": int(det["image_id"][b]), "category_id": int(category_ids[int(cls) - 1]),
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    return out


def evaluate_coco(coco_gt, results: list[dict], image_ids=None) -> dict:
    """Runs COCOeval (bbox) and returns {AP, AP50, AP75, APs, APm, APl} in [0, 1].

    Metrics COCOeval reports as -1 (no ground truth of that size) are returned as NaN.
    With no detections at all every metric is 0.
    """
    from pycocotools.cocoeval import COCOeval
    if not results:
        return {k: 0.0 for k in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(METRIC_NAMES, ev.stats[:6])}
