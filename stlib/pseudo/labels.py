"""`ImageLabels`: one unlabeled image's pseudo labels, the unit of the pseudo-label store.

Conventions are those of `stlib.data.coco`: boxes are absolute ``[ymin, xmin, ymax, xmax]``
in the pixels of the *original* image (``height`` x ``width``), classes are contiguous
``1..K`` (column ``k - 1`` of the teacher's logits), scores are the teacher's post-processed
sigmoid scores. An image the labeller could not read has ``skipped`` set to the reason
and no boxes, so a finished store accounts for every image of its source exactly once.

``mask`` and ``mask_score`` are the segmentation track's (pseudo masks: uint8 ``[height, width]``
class map with 255 = ignore, and each pixel's class probability as uint8); detection stores
leave them None.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np


def pixel_digest(image: np.ndarray) -> str:
    """The identity of an image's content: a hash of its decoded pixels and shape. A store keys
    each image by name and content, so a file renamed or replaced under a name is not mistaken
    for the image that was labelled."""
    a = np.ascontiguousarray(image)
    return hashlib.sha1(f"{a.shape}|".encode() + a.tobytes()).hexdigest()[:16]


@dataclasses.dataclass
class ImageLabels:
    index: int                 # position of the image in its unlabeled source (0-based)
    key: str                   # stable name of the image in the source (relative file name, tfds id)
    height: int
    width: int
    boxes: np.ndarray          # float32 [n, 4], yxyx, original pixels
    classes: np.ndarray        # int32 [n], contiguous 1..K
    scores: np.ndarray         # float32 [n]
    skipped: str = ""          # non-empty: why the image has no labels (e.g. "corrupt: ...")
    mask: np.ndarray | None = None  # segmentation pseudo mask (uint8 [height, width], 255 = ignore)
    # the teacher's probability of each mask pixel's class, quantized to uint8 (round(p * 255)), so
    # a store keeps the ignore threshold open (`stlib.pseudo.masks`); None for detection stores
    mask_score: np.ndarray | None = None
    content: str = ""          # `pixel_digest` of the image the labels were made on ("" = not recorded)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.classes = np.asarray(self.classes, np.int32).reshape(-1)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        if not len(self.boxes) == len(self.classes) == len(self.scores):
            raise ValueError(f"ImageLabels {self.key!r}: {len(self.boxes)} boxes, {len(self.classes)} classes, "
                             f"{len(self.scores)} scores")

    def above(self, threshold: float) -> "ImageLabels":
        """The same image with only the boxes scoring >= `threshold` (the hard threshold, Sec. 3.2)."""
        keep = self.scores >= threshold
        return dataclasses.replace(self, boxes=self.boxes[keep], classes=self.classes[keep], scores=self.scores[keep])
