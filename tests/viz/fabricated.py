"""A pseudo-label store fabricated from the smoke world's hidden ground truth (jittered boxes with
random scores, a few false boxes, one skipped image), for the explorer notebook's tests."""
import json
from pathlib import Path

import numpy as np

from stlib.data.world import ensure_world
from stlib.pseudo.labels import ImageLabels
from stlib.pseudo.store import PseudoLabelStore


def fabricated_store(store_dir) -> Path:
    """Writes a complete 16-image store of source world:scenes (smoke world, seed 0) at `store_dir`."""
    root = ensure_world("smoke", 0, progress=False)
    gt = json.loads((root / "hidden" / "scenes.json").read_text())
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    rank = {c["id"]: k + 1 for k, c in enumerate(cats)}
    rng = np.random.default_rng(0)
    by_image = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]].append(a)
    labels = []
    for i, im in enumerate(sorted(gt["images"], key=lambda im: im["id"])):
        boxes, classes, scores = [], [], []
        for a in by_image[im["id"]]:
            x, y, w, h = a["bbox"]
            boxes.append(np.array([y, x, y + h, x + w]) + rng.normal(0, 1.0, 4))
            classes.append(rank[a["category_id"]])
            scores.append(rng.uniform(0.2, 1.0))
        for _ in range(int(rng.integers(0, 3))):  # false boxes
            y, x = rng.uniform(0, 40, 2)
            boxes.append([y, x, y + 16, x + 16])
            classes.append(int(rng.integers(1, len(cats) + 1)))
            scores.append(rng.uniform(0.1, 0.8))
        skipped = "corrupt: fabricated" if i == 5 else ""
        if skipped:
            boxes, classes, scores = [], [], []
        labels.append(ImageLabels(i, im["file_name"], im["height"], im["width"], np.asarray(boxes).reshape(-1, 4),
                                  classes, scores, skipped))
    assert len(labels) == 16
    store_dir = Path(store_dir)
    store = PseudoLabelStore.create(store_dir, meta={"categories": [{"id": c["id"], "name": c["name"]} for c in cats],
                                                     "source": "world:scenes", "teacher": "fabricated",
                                                     "min_score": 0.1}, num_images=16, shard_size=8)
    store.write_shard(0, labels[:8])
    store.write_shard(1, labels[8:])
    store.mark_complete()
    return store_dir
