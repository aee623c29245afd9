"""Segmentation pseudo masks (Sec. 3.2): a teacher segmenter's class probabilities from
multi-scale inference, averaged at the image's original size, and the ignore rule.

Sec. 3.2: the teacher labels each unlabeled image at scales (0.5, 0.75, 1, 1.25, 1.5, 1.75);
the per-pixel class probabilities are averaged; a pixel whose best probability is below 0.5
gets the ignore label (255), so the student learns only where the teacher is confident.

`MaskTeacher.probabilities` runs one image at each scale: the image resized by the scale
(bilinear), padded at the bottom / right to a square whose side is a multiple of 32 (the
backbone's stride; the evaluation input is square), the
logits upsampled to that input (TPU's evaluation resize, `segmentation_upsample_logits`),
softmaxed, cropped to the content, resized back to the original size and averaged. One jitted
program per padded input size, so a fixed-size pool compiles once per scale. `pseudo_mask`
applies the threshold.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from stlib.augment import prepare_eval_batch
from stlib.data.segmentation import IGNORE_LABEL
from stlib.models.segmentation import legacy_resize_bilinear, segmentation_upsample_logits

SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)   # Sec. 3.2: multi-scale inference for pseudo masks
THRESHOLD = 0.5                              # Sec. 3.2: below it a pixel is ignored
SIZE_MULTIPLE = 32                           # the backbone's stride (data.image_size's rule)


class MaskTeacher:
    """A trained segmenter (`stlib.tasks.segmentation.SegmentationTask` and its state) as a labeller."""

    def __init__(self, task, state, scales=SCALES):
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"MaskTeacher: scales must be positive, got {scales!r}")
        self.model = task.model
        self.num_classes = task.num_classes
        self.variables = {"params": state.params, "batch_stats": state.batch_stats}
        self.scales = tuple(scales)
        self._fns: dict = {}

    def _probs_fn(self, padded_hw: tuple):
        if padded_hw not in self._fns:
            def probs(variables, batch):
                logits = self.model.apply(variables, prepare_eval_batch(batch)["image"], train=False)
                logits = segmentation_upsample_logits(logits.astype(jnp.float32), padded_hw)
                return jax.nn.softmax(logits, axis=-1)
            self._fns[padded_hw] = jax.jit(probs)
        return self._fns[padded_hw]

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """float32 [H, W, K+1]: the class probabilities of uint8 `image` [H, W, 3], averaged over
        the scales at its own size."""
        h, w = image.shape[:2]
        total = np.zeros((h, w, self.num_classes), np.float32)
        for s in self.scales:
            sh, sw = max(1, round(h * s)), max(1, round(w * s))
            scaled = image if (sh, sw) == (h, w) else np.asarray(Image.fromarray(image).resize((sw, sh),
                                                                                                Image.BILINEAR))
            side = SIZE_MULTIPLE * math.ceil(max(sh, sw) / SIZE_MULTIPLE)   # square, as the eval input
            ph = pw = side
            padded = np.zeros((1, ph, pw, 3), np.uint8)
            padded[0, :sh, :sw] = scaled
            probs = self._probs_fn((ph, pw))(self.variables, {"image": padded,
                                                               "image_hw": np.asarray([[sh, sw]], np.int32)})
            probs = probs[:, :sh, :sw]
            if (sh, sw) != (h, w):
                probs = legacy_resize_bilinear(probs, (h, w))
            total += np.asarray(probs[0], np.float32)
        return total / len(self.scales)


def pseudo_mask(probs: np.ndarray, threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(mask uint8 [H, W]: the most probable class, `IGNORE_LABEL` where its probability is below
    `threshold`; score float32 [H, W]: that probability)."""
    score = probs.max(axis=-1).astype(np.float32)
    mask = probs.argmax(axis=-1).astype(np.uint8)
    mask[score < threshold] = IGNORE_LABEL
    return mask, score
