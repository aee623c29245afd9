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


def fabricated_mask_store(store_dir) -> Path:
    """Writes a complete store of pseudo masks for world:aug (smoke world, seed 0): each image's
    hidden truth, where a pixel's stored probability below 0.5 gets a random class (so the less
    sure pixels are the wrong ones, as a teacher's), one image skipped."""
    from stlib.data.segmentation import IGNORE_LABEL, segmentation_source_identity, world_segmentation_source
    images = world_segmentation_source("smoke", 0, "aug")
    truth = world_segmentation_source("smoke", 0, "aug_truth")
    rng = np.random.default_rng(0)
    labels = []
    for i in range(len(images)):
        key = Path(images.files[i]).name
        if i == 3:
            labels.append(ImageLabels(i, key, 0, 0, np.zeros((0, 4)), [], [], skipped="corrupt image"))
            continue
        image = images.load_image(i)
        mask = truth.load_mask(i, image.shape[:2]).copy()
        mask[mask == IGNORE_LABEL] = 0
        score = rng.integers(60, 256, mask.shape).astype(np.uint8)
        wrong = score < 128
        mask[wrong] = rng.integers(0, truth.num_classes, int(wrong.sum()))
        labels.append(ImageLabels(i, key, *mask.shape, np.zeros((0, 4)), [], [], mask=mask, mask_score=score))
    cats = [{"id": k, "name": n} for k, n in enumerate(images.class_names, 1)]
    store = PseudoLabelStore.create(Path(store_dir), meta={"kind": "segmentation", "categories": cats,
                                                           "source": "world:aug", "teacher": "fabricated",
                                                           "source_identity": segmentation_source_identity(images),
                                                           "scales": [1.0]},
                                    num_images=len(labels), shard_size=16)
    for k in range(len(store.missing_shards())):
        store.write_shard(k, [labels[i] for i in store.shard_range(k)])
    store.mark_complete()
    return Path(store_dir)
