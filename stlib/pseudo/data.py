"""Pseudo-labeled images as a detection source: what the student's pseudo stream trains on."""
from __future__ import annotations

import dataclasses

import numpy as np

from stlib.data.coco import CorruptImageError, DetectionRecord, DetectionSource
from stlib.pseudo import quality
from stlib.pseudo.labels import pixel_digest


def oracle_labels(labels, source) -> list:
    """`labels` with their boxes replaced by the pool's hidden ground truth at score 1
    (`self_train.oracle`, a diagnostic: what perfect pseudo labels would give)."""
    gt_path = getattr(source, "hidden_gt", None)
    if gt_path is None:
        raise ValueError(f"self_train.oracle: the unlabeled pool {getattr(source, 'name', source)!r} has no hidden "
                         "ground-truth boxes (world:scenes has them)")
    out = []
    for lab, g in zip(labels, quality.ground_truth_for(labels, quality.load_gt(gt_path))):
        boxes, classes = g if g is not None else (np.zeros((0, 4), np.float32), np.zeros((0,), np.int32))
        out.append(dataclasses.replace(lab, boxes=boxes, classes=classes, scores=np.ones(len(classes), np.float32)))
    return out


class PseudoLabeledSource(DetectionSource):
    """The images of an unlabeled source with a store's boxes scoring >= `threshold` as labels.

    Sec. 3.2's hard threshold (0.5) is applied here, when the student reads the store.
    Images the labeller skipped are left out (counted as `images_skipped`); images with no
    box above the threshold stay in as all-background examples (counted by
    `images_without_boxes`). `records[i].image_id` is the source index + 1.

    With `ignore_threshold` > 0, boxes scoring in [ignore_threshold, threshold) follow the
    positives as *ignore boxes* (class -1): the anchors they match are neither positive nor
    negative, so an object the teacher half-saw is not taught as background (the detection
    twin of the paper's segmentation rule, where pixels below 0.5 get the ignore label).

    With `soft`, every record also carries its boxes' scores (`DetectionRecord.scores`): the
    student's targets are the teacher's scores instead of 1 (`self_train.targets: soft`).
    Boxes are ordered by descending score, so a `max_boxes` truncation drops the least sure.
    """

    def __init__(self, store, source, threshold: float, ignore_threshold: float = 0.0, soft: bool = False,
                 oracle: bool = False):
        labels = store.load(min_score=min(threshold, ignore_threshold) if ignore_threshold > 0 else threshold)
        if oracle:
            labels = oracle_labels(labels, source)
        kept = [l for l in labels if not l.skipped]
        self.unlabeled = source
        self.threshold = float(threshold)
        self.ignore_threshold = float(ignore_threshold)
        self.soft = bool(soft)
        self._source_index = [l.index for l in kept]
        self._content = [l.content for l in kept]
        records = []
        for l in kept:
            sure = l.scores >= threshold
            # soft: by descending score (hard keeps the store's order, as recorded runs were made)
            by_score = np.argsort(-l.scores, kind="stable") if soft else np.arange(len(l.scores))
            order = np.concatenate([by_score[sure[by_score]], by_score[~sure[by_score]]])   # ignore boxes last
            classes = np.where(sure, l.classes, -1)[order].astype(np.int32)
            records.append(DetectionRecord(image_id=l.index + 1, height=l.height, width=l.width,
                                           boxes=l.boxes[order], classes=classes, file_name=l.key,
                                           scores=l.scores[order].astype(np.float32) if soft else None))
        cats = [dict(c) for c in store.categories]
        super().__init__(name=f"pseudo:{store.meta.get('source')}", categories=cats, records=records,
                         image_stats={}, gt_dataset={"images": [], "annotations": [], "categories": cats},
                         source_stats={"images_skipped": len(labels) - len(kept),
                                       "pseudo_boxes": int(sum(int((r.classes > 0).sum()) for r in records)),
                                       "ignore_boxes": int(sum(int((r.classes < 0).sum()) for r in records))})

    def load_image(self, index: int):
        """The unlabeled image of record `index`, checked to be the one the teacher labelled: same
        name and, where the store recorded it, same pixels. Anything else is a `CorruptImageError`
        (skipped and counted by the pipeline), never a label on the wrong image."""
        r = self.records[index]
        i = self._source_index[index]
        if self.unlabeled.key(i) != r.file_name:
            raise CorruptImageError(r.file_name, f"the source's image {i} is now {self.unlabeled.key(i)!r}, not the "
                                                 "one the teacher labelled")
        image = self.unlabeled.load_image(i)
        if image.shape[:2] != (r.height, r.width):
            raise CorruptImageError(r.file_name, f"size {image.shape[0]}x{image.shape[1]} differs from the "
                                                 f"{r.height}x{r.width} it was labelled at")
        if self._content[index] and pixel_digest(image) != self._content[index]:
            raise CorruptImageError(r.file_name, "its pixels differ from the image the teacher labelled")
        return image
