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
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from stlib.augment import prepare_eval_batch
from stlib.data.coco import DataError
from stlib.data.segmentation import IGNORE_LABEL
from stlib.models.segmentation import legacy_resize_bilinear, segmentation_upsample_logits
from stlib.pseudo.labels import ImageLabels, pixel_digest
from stlib.pseudo.store import PseudoLabelStore

SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)   # Sec. 3.2: multi-scale inference for pseudo masks
THRESHOLD = 0.5                              # Sec. 3.2: below it a pixel is ignored
SIZE_MULTIPLE = 32                           # the backbone's stride (data.image_size's rule)
SCORE_LEVELS = 256                           # a store keeps a pixel's probability as round(p * 255)
# Thresholds the quality table reports: 0 keeps every pixel (the teacher's own mIoU); 0.5 is Sec. 3.2's.
QUALITY_THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


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


def quantize(score: np.ndarray) -> np.ndarray:
    """Probabilities [0, 1] -> uint8 round(p * 255), as a store keeps them."""
    return np.round(np.clip(score, 0.0, 1.0) * 255).astype(np.uint8)


def score_level(threshold: float) -> int:
    """The lowest stored probability level (0..255) that reaches `threshold`."""
    return int(np.ceil(threshold * 255 - 1e-6))


def apply_threshold(labels: ImageLabels, threshold: float = THRESHOLD) -> np.ndarray:
    """A stored pseudo mask at `threshold`: its class where the stored probability reaches it
    (compared in the store's 1/255 steps), `IGNORE_LABEL` elsewhere."""
    mask = np.asarray(labels.mask).copy()
    if labels.mask_score is not None:
        mask[labels.mask_score < score_level(threshold)] = IGNORE_LABEL
    return mask


def label_masks(teacher: MaskTeacher, source, store_root, *, meta: dict, shard_size: int = 64,
                after_shard=None, progress: bool = True) -> PseudoLabelStore:
    """Labels every image of `source` (a `stlib.data.segmentation.SegmentationSource`: its images,
    not its masks) into a pseudo-label store at `store_root`: each image's most probable class
    (`mask`, nothing ignored) and that class's probability (`mask_score`), so any threshold can be
    applied later (`apply_threshold`; training uses Sec. 3.2's 0.5). Shards are written
    atomically; a store left part-way (a kill) resumes with the shards it lacks, every image
    exactly once. `meta` is the provenance the store is keyed by (teacher, source, scales...);
    reopening with other provenance is refused. An unreadable image is a counted skip.
    `after_shard(k)` runs after each shard (tests use it to stop part-way)."""
    from tqdm.auto import tqdm
    categories = [{"id": k, "name": n} for k, n in enumerate(source.class_names, 1)]
    full = {**meta, "kind": "segmentation", "categories": categories, "scales": list(teacher.scales)}
    store = PseudoLabelStore.create(store_root, full, len(source), shard_size)
    todo = store.missing_shards()
    bar = tqdm(total=len(source), initial=len(source) - sum(len(store.shard_range(k)) for k in todo),
               desc="pseudo masks", unit="img", disable=not progress)
    for k in todo:
        labels = []
        for i in store.shard_range(k):
            key = pathlib.Path(source.files[i]).name
            image = source.load_image_or_none(i)
            if image is None:
                labels.append(ImageLabels(i, key, 0, 0, np.zeros((0, 4)), [], [], skipped="corrupt image"))
                continue
            mask, score = pseudo_mask(teacher.probabilities(image), threshold=0.0)
            labels.append(ImageLabels(i, key, image.shape[0], image.shape[1], np.zeros((0, 4)), [], [], mask=mask,
                                      mask_score=quantize(score), content=pixel_digest(image)))
            bar.update(1)
        store.write_shard(k, labels)
        if after_shard is not None:
            after_shard(k)
    bar.close()
    if not store.complete:
        store.mark_complete({"images_corrupt": source.stats.get("images_corrupt", 0)})
    return store


# ----------------------------------------------------------------------------- how right they are

def mask_counts(labels, truth) -> dict:
    """Every pixel of the pseudo masks `labels` (a store's `ImageLabels`) that `truth` labels (a
    `SegmentationSource` over the same images in the same order, e.g.
    `stlib.data.segmentation.segmentation_truth`), counted by (true class, pseudo class, stored
    probability level): `counts` int64 [K+1, K+1, 256], from which the confusion matrix at any
    threshold is a sum over levels (`mask_quality`). Truth pixels labelled 255 are left out.
    Images the labelling skipped are counted in `skipped`; a label whose key is not the truth's
    file name is a `DataError` naming both (the store was made from other images)."""
    k = truth.num_classes
    counts = np.zeros(k * k * SCORE_LEVELS, np.int64)
    images = skipped = 0
    for lab in labels:
        if lab.skipped or lab.mask is None:
            skipped += 1
            continue
        i = int(lab.index)
        name = pathlib.Path(truth.files[i]).name if i < len(truth) else None
        if name != lab.key:
            raise DataError(f"pseudo mask {i} is of {lab.key!r} but the truth's image {i} is {name!r} "
                            f"({truth.name}): the store was labelled from other images")
        pred = np.asarray(lab.mask)
        t = truth.load_mask(i, pred.shape).ravel()
        p = pred.ravel().astype(np.int64)
        s = (np.full(p.shape, SCORE_LEVELS - 1, np.int64) if lab.mask_score is None
             else np.asarray(lab.mask_score).ravel().astype(np.int64))
        s = np.where(p == IGNORE_LABEL, 0, s)          # a mask stored already thresholded
        p = np.minimum(np.where(p == IGNORE_LABEL, 0, p), k - 1)
        ok = t != IGNORE_LABEL
        counts += np.bincount((t[ok].astype(np.int64) * k + p[ok]) * SCORE_LEVELS + s[ok],
                              minlength=counts.size)
        images += 1
    return {"counts": counts.reshape(k, k, SCORE_LEVELS), "images": images, "skipped": skipped}


def confusion_at(counts: np.ndarray, threshold: float) -> np.ndarray:
    """[K+1, K+1] pixels (rows truth, columns pseudo class) whose stored probability reaches `threshold`."""
    return counts[:, :, score_level(threshold):].sum(-1)


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU of a confusion matrix; NaN for a class neither in the truth nor predicted."""
    tp = np.diag(confusion).astype(np.float64)
    denom = confusion.sum(0) + confusion.sum(1) - tp
    return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)


def mask_quality(counts: np.ndarray, thresholds=QUALITY_THRESHOLDS) -> list[dict]:
    """At each threshold, what Sec. 3.2's ignore rule trades: `covered` (the share of the truth's
    labelled pixels the pseudo mask keeps), `accuracy` (the share of kept pixels whose class is
    right) and `mIoU` (over the kept pixels, classes present in truth or pseudo mask, as
    `stlib.eval.miou`). At threshold 0 every pixel is kept: the teacher's own mIoU on these
    images. Ratios with nothing to count are None."""
    total = int(counts.sum())
    rows = []
    for t in thresholds:
        cm = confusion_at(counts, t)
        kept, right = int(cm.sum()), int(np.trace(cm))
        iou = class_iou(cm)
        rows.append({"threshold": float(t), "pixels": kept,
                     "covered": kept / total if total else None,
                     "accuracy": right / kept if kept else None,
                     "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else None})
    return rows
