"""Pseudo-labeled images as a detection source: what the student's pseudo stream trains on."""
from __future__ import annotations

from stlib.data.coco import CorruptImageError, DetectionRecord, DetectionSource


class PseudoLabeledSource(DetectionSource):
    """The images of an unlabeled source with a store's boxes scoring >= `threshold` as labels.

    Sec. 3.2's hard threshold (0.5) is applied here, when the student reads the store.
    Images the labeller skipped are left out (counted as `images_skipped`); images with no
    box above the threshold stay in as all-background examples (counted by
    `images_without_boxes`). `records[i].image_id` is the source index + 1.
    """

    def __init__(self, store, source, threshold: float):
        labels = store.load(min_score=threshold)
        kept = [l for l in labels if not l.skipped]
        self.unlabeled = source
        self.threshold = float(threshold)
        self._source_index = [l.index for l in kept]
        records = [DetectionRecord(image_id=l.index + 1, height=l.height, width=l.width, boxes=l.boxes,
                                   classes=l.classes, file_name=l.key) for l in kept]
        cats = [dict(c) for c in store.categories]
        super().__init__(name=f"pseudo:{store.meta.get('source')}", categories=cats, records=records,
                         image_stats={}, gt_dataset={"images": [], "annotations": [], "categories": cats},
                         source_stats={"images_skipped": len(labels) - len(kept),
                                       "pseudo_boxes": int(sum(len(l.boxes) for l in kept))})

    def load_image(self, index: int):
        r = self.records[index]
        image = self.unlabeled.load_image(self._source_index[index])
        if image.shape[:2] != (r.height, r.width):
            raise CorruptImageError(r.file_name, f"size {image.shape[0]}x{image.shape[1]} differs from the "
                                                 f"{r.height}x{r.width} it was labelled at")
        return image
