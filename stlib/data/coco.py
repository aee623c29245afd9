"""Detection data sources and the COCO-format folder source.

Every detection source yields the same `DetectionRecord`s, so the training
pipeline does not care where the data came from:

* boxes are float32 ``[N, 4]`` ``[ymin, xmin, ymax, xmax]`` in absolute pixels,
  clipped to the image and with positive height and width;
* classes are int32 ``[N]`` in ``1..K``, where class ``i + 1`` is
  ``source.categories[i]`` and the categories are sorted by their original id.

`CocoSource` reads a COCO-format annotation JSON plus an image folder (the
embedded world, real COCO 2017, or a user's own dataset) and validates it all
at construction, before any training work: structural problems raise
`DataError` naming the file and the offending entry; fixable box problems are
fixed and counted in ``source.stats``. Images are decoded lazily; a corrupt
image raises `CorruptImageError` from ``load_image`` and is skipped-and-counted
by ``load_image_or_none`` so one bad file cannot kill a long run.

Stats keys (always present, zero when nothing happened):

* ``boxes_clipped`` -- boxes partly outside the image, clipped to it;
* ``boxes_dropped_zero_area`` -- boxes with zero/negative height or width;
* ``boxes_dropped_outside`` -- boxes entirely outside the image;
* ``crowd_boxes_skipped`` -- ``iscrowd`` boxes left out of the training records
  (REFERENCE.md §3.1: skip_crowd_during_training True); ``coco_gt`` keeps them
  (COCOeval's ignore regions);
* ``images_without_boxes`` -- images kept with no (remaining) boxes, as negatives;
* ``images_corrupt`` -- images that could not be decoded (counted when met).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import io
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

__all__ = [
    "STAT_KEYS",
    "CocoSource",
    "CorruptImageError",
    "DataError",
    "DetectionRecord",
    "DetectionSource",
    "clean_gt_annotations",
    "clip_boxes",
    "decode_image",
    "load_images_cached",
    "summarize",
]

_log = logging.getLogger(__name__)

STAT_KEYS = (
    "boxes_clipped",
    "boxes_dropped_zero_area",
    "boxes_dropped_outside",
    "crowd_boxes_skipped",
    "images_without_boxes",
    "images_corrupt",
)


class DataError(ValueError):
    """A dataset problem found while reading or validating a source."""


class CorruptImageError(DataError):
    """An image file (or stored image) that cannot be decoded; ``.path`` names it."""

    def __init__(self, path: str, reason: str = ""):
        self.path = path
        super().__init__(f"cannot decode image {path}" + (f": {reason}" if reason else ""))


@dataclasses.dataclass
class DetectionRecord:
    """One image's training annotations (see the module docstring for conventions)."""

    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    file_name: str | None = None
    mask_file: str | None = None
    scores: np.ndarray | None = None   # soft pseudo labels: each box's target value (None = 1, human labels)


def decode_image(data: str | bytes, where: str) -> np.ndarray:
    """Decode an image file path or encoded bytes to uint8 ``[H, W, 3]`` RGB.

    Grayscale, palette, RGBA and CMYK images are converted to RGB (alpha is
    dropped). EXIF orientation is ignored, as in COCO's annotations. Raises
    `CorruptImageError` naming ``where`` when the data cannot be decoded.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(where, str(e)) from e


def clip_boxes(
    boxes: np.ndarray, height: int, width: int, counts: collections.Counter
) -> tuple[np.ndarray, np.ndarray]:
    """Clip absolute ``[ymin, xmin, ymax, xmax]`` boxes to an image and flag the usable ones.

    Returns ``(clipped float32 [N, 4], keep bool [N])``. Boxes with zero or
    negative height/width (before or after clipping) are not kept and counted
    as ``boxes_dropped_zero_area``; boxes entirely outside the image as
    ``boxes_dropped_outside``; kept boxes that clipping changed as
    ``boxes_clipped``.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ymin, xmin, ymax, xmax = boxes.T
    degenerate = (ymax <= ymin) | (xmax <= xmin)
    outside = ~degenerate & ((ymin >= height) | (xmin >= width) | (ymax <= 0) | (xmax <= 0))
    limits = np.array([height, width, height, width], np.float64)
    clipped64 = np.clip(boxes, 0.0, limits)
    clipped = clipped64.astype(np.float32)
    # A tiny box can collapse when rounded to float32.
    degenerate |= ~outside & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    keep = ~degenerate & ~outside
    counts["boxes_dropped_zero_area"] += int(degenerate.sum())
    counts["boxes_dropped_outside"] += int(outside.sum())
    counts["boxes_clipped"] += int((keep & np.any(clipped64 != boxes, axis=1)).sum())
    return clipped, keep


def clean_gt_annotations(annotations: Sequence[dict], images: Sequence[dict]) -> list[dict]:
    """COCO ground-truth annotations cleaned exactly as `clip_boxes` cleans the training boxes.

    Evaluation then scores what the model was asked to learn: a box the loader drops (zero
    area, entirely outside the image) is left out, so it cannot count as a miss; a box it
    clips is evaluated clipped, its ``area`` scaled by the share of the box that is left
    (COCOeval's size ranges use ``area``). Crowd boxes go through the same cleaning and stay
    ``iscrowd`` (COCO's ignore regions). Untouched boxes keep their annotation as it is.

    Args:
      annotations: COCO annotation dicts (``bbox`` xywh in absolute pixels).
      images: COCO image dicts with ``height`` and ``width`` for every annotated image.
    Returns:
      New annotation dicts (the inputs are not modified; COCOeval writes into its GT).
    """
    size = {im["id"]: (im["height"], im["width"]) for im in images}
    by_image = collections.defaultdict(list)
    for i, a in enumerate(annotations):
        by_image[a["image_id"]].append(i)
    cleaned: list[dict | None] = [None] * len(annotations)
    for image_id, index in by_image.items():
        xywh = np.array([annotations[i]["bbox"] for i in index], np.float64).reshape(-1, 4)
        boxes = np.stack([xywh[:, 1], xywh[:, 0], xywh[:, 1] + xywh[:, 3], xywh[:, 0] + xywh[:, 2]], axis=1)
        height, width = size[image_id]
        _, keep = clip_boxes(boxes, height, width, collections.Counter())  # the loader's decisions
        clipped = np.clip(boxes, 0.0, np.array([height, width, height, width], np.float64))
        for i, box, new, k in zip(index, boxes, clipped, keep):
            if not k:
                continue
            a = dict(annotations[i])
            if np.any(new != box):
                w, h = float(new[3] - new[1]), float(new[2] - new[0])
                a["bbox"] = [float(new[1]), float(new[0]), w, h]
                if "area" in a:
                    a["area"] = float(a["area"]) * (w * h) / float((box[3] - box[1]) * (box[2] - box[0]))
            a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
            a.setdefault("iscrowd", 0)
            cleaned[i] = a
    return [a for a in cleaned if a is not None]


def _quiet_coco(dataset: dict) -> COCO:
    """A pycocotools COCO built from an in-memory dict, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class SkipsCorruptImages:
    """``load_image_or_none`` for a source with ``load_image``, ``name``, ``stats`` and ``_lock``:
    an unreadable image is a counted skip, never a crash."""

    def load_image_or_none(self, index: int) -> np.ndarray | None:
        """``load_image``, but a corrupt image gives None, a warning and ``stats["images_corrupt"] += 1``."""
        try:
            return self.load_image(index)
        except CorruptImageError as e:
            with self._lock:
                self.stats["images_corrupt"] += 1
            _log.warning("%s: skipping corrupt image: %s", self.name, e)
            return None


class DetectionSource(SkipsCorruptImages):
    """Base class of the detection sources: records, categories, stats, images, ground truth.

    Subclasses fill the attributes through ``__init__`` and implement
    ``load_image``. ``_image_stats`` holds each image's box fixes, so that a
    ``subset`` reports the stats of its own images.
    """

    name: str
    categories: list[dict]
    records: list[DetectionRecord]
    stats: dict[str, int]

    def __init__(
        self,
        name: str,
        categories: list[dict],
        records: list[DetectionRecord],
        image_stats: Mapping[int, collections.Counter],
        gt_dataset: dict,
        source_stats: Mapping[str, int] | None = None,
    ):
        """Store the parts; ``gt_dataset`` is a COCO-format dict covering at least the records'
        images, ``source_stats`` counts that belong to no record (e.g. images skipped)."""
        self.name = name
        self.categories = categories
        self.records = records
        self._image_stats = image_stats
        self._gt_dataset = gt_dataset
        self._lock = threading.Lock()
        self._gt: COCO | None = None
        self.stats = self._count_stats(source_stats or {})

    def _count_stats(self, extra: Mapping[str, int]) -> dict[str, int]:
        total = collections.Counter({k: 0 for k in STAT_KEYS})
        total.update(extra)
        for r in self.records:
            total.update(self._image_stats.get(r.image_id, {}))
            total["images_without_boxes"] += int(len(r.boxes) == 0)
        return dict(total)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        """K, the number of contiguous classes (class ids run 1..K)."""
        return len(self.categories)

    def load_image(self, index: int) -> np.ndarray:
        """Decode ``records[index]``'s image: uint8 ``[H, W, 3]`` RGB; raises `CorruptImageError`."""
        raise NotImplementedError

    def iterate(self, shuffle_seed: int | None = None) -> Iterator[tuple[DetectionRecord, np.ndarray]]:
        """Yield ``(record, image)`` for every decodable image, in record order or shuffled by seed.

        Corrupt images are skipped and counted as in ``load_image_or_none``.
        """
        order = np.arange(len(self.records))
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(order)
        for i in order:
            image = self.load_image_or_none(int(i))
            if image is not None:
                yield self.records[i], image

    def coco_gt(self) -> COCO:
        """Ground truth for COCOeval: the source's annotations (crowd included, original
        category ids) restricted to the records' images and cleaned as the records were
        (`clean_gt_annotations`): a box the loader drops is no ground truth, a box it clips
        is evaluated clipped. Built once and cached."""
        if self._gt is None:
            ids = {r.image_id for r in self.records}
            full = self._gt_dataset
            dataset = {k: v for k, v in full.items() if k not in ("images", "annotations")}
            dataset["images"] = [im for im in full["images"] if im["id"] in ids]
            dataset["annotations"] = clean_gt_annotations(
                [a for a in full["annotations"] if a["image_id"] in ids], dataset["images"])
            self._gt = _quiet_coco(dataset)
        return self._gt

    def subset(self, image_ids: Iterable[int]) -> DetectionSource:
        """The same source restricted to ``image_ids`` (record order kept; stats and coco_gt
        restricted too, ``images_corrupt`` restarts at 0). Unknown ids raise `DataError`."""
        wanted = {int(i) for i in image_ids}
        unknown = wanted - {r.image_id for r in self.records}
        if unknown:
            raise DataError(
                f"{self.name}: subset asks for {len(unknown)} image id(s) not in the source, "
                f"e.g. {sorted(unknown)[:5]}"
            )
        new = copy.copy(self)
        new.records = [r for r in self.records if r.image_id in wanted]
        new._lock = threading.Lock()
        new._gt = None
        new.stats = new._count_stats({})
        return new


def load_images_cached(
    source: DetectionSource, indices: Sequence[int] | None = None, workers: int | None = None
) -> list[np.ndarray | None]:
    """Decode many images in a thread pool (for small datasets kept in memory).

    Returns one entry per index (all records by default): the image, or None
    for a corrupt one (counted in ``source.stats["images_corrupt"]``).
    ``workers`` defaults to ``min(8, os.cpu_count())``.
    """
    if indices is None:
        indices = range(len(source.records))
    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(source.load_image_or_none, indices))


def summarize(source: DetectionSource) -> str:
    """One line: name, images, boxes, categories, and the non-zero stats."""
    boxes = sum(len(r.boxes) for r in source.records)
    line = f"{source.name}: {len(source.records)} images, {boxes} boxes, {len(source.categories)} categories"
    fixes = ", ".join(f"{k}={v}" for k, v in source.stats.items() if v)
    return f"{line}; {fixes}" if fixes else line


# ----------------------------------------------------------------------------- COCO folder


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_json_object(path: str, what: str) -> dict:
    """The JSON object in `path`; a missing file, invalid JSON or another top level is a
    `DataError` naming the file (`what`: "annotation file", "classification label file")."""
    if not os.path.isfile(path):
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: the top level must be a JSON object, got {type(data).__name__}")
    return data


def _read_annotation_json(ann_file: str) -> dict:
    data = read_json_object(ann_file, "annotation file")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(
                f"{ann_file}: missing required key {key!r} "
                "(a COCO annotation file has 'images', 'annotations' and 'categories')"
            )
        if not isinstance(data[key], list):
            raise DataError(f"{ann_file}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data


def _check_entries(ann_file: str, key: str, entries: list, fields: Sequence[str]) -> None:
    """Each entry is an object with integer ``fields`` (``file_name``/``name`` strings), ids unique."""
    seen = set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise DataError(f"{ann_file}: {key}[{i}] is not an object: {e!r}")
        for field in fields:
            if field not in e:
                raise DataError(f"{ann_file}: {key}[{i}] (id {e.get('id')!r}) is missing {field!r}")
            want_str = field in ("file_name", "name")
            if (want_str and not isinstance(e[field], str)) or (not want_str and not _is_int(e[field])):
                kind = "a string" if want_str else "an integer"
                raise DataError(f"{ann_file}: {key}[{i}] (id {e.get('id')!r}) has {field}={e[field]!r}, not {kind}")
        if e["id"] in seen:
            raise DataError(f"{ann_file}: {key} has duplicate id {e['id']}")
        seen.add(e["id"])


def _check_bbox(ann_file: str, ann: dict) -> None:
    bbox = ann["bbox"]
    ok = (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    )
    if not ok:
        raise DataError(
            f"{ann_file}: annotation id {ann['id']} (image id {ann['image_id']}) has a malformed bbox "
            f"{bbox!r}: need 4 finite numbers [x, y, width, height]"
        )


class CocoSource(DetectionSource):
    """A COCO-format dataset: annotation JSON + image folder, validated at construction.

    ``CocoSource(ann_file, image_dir, *, name=None, skip_crowd=True, check_files=True)``

    * ``name`` defaults to the annotation file's stem.
    * ``skip_crowd``: leave ``iscrowd`` boxes out of the training records
      (counted); ``coco_gt`` always keeps them.
    * ``check_files``: check every listed image file exists (DataError listing
      up to 5 missing paths and the count).

    Records are sorted by image id; ``file_name`` is the absolute image path and
    ``mask_file`` is ``<image_dir>/../masks/<stem>.png`` when that file exists.
    ``coco_gt`` is the file's own annotations (restricted to the source's images), cleaned
    as the records are (`clean_gt_annotations`).
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        name: str | None = None,
        skip_crowd: bool = True,
        check_files: bool = True,
    ):
        ann_file = os.fspath(ann_file)
        image_dir = os.path.abspath(os.fspath(image_dir))
        data = _read_annotation_json(ann_file)
        _check_entries(ann_file, "categories", data["categories"], ("id", "name"))
        _check_entries(ann_file, "images", data["images"], ("id", "file_name", "height", "width"))
        _check_entries(ann_file, "annotations", data["annotations"], ("id", "image_id", "category_id"))

        cats = sorted(data["categories"], key=lambda c: c["id"])
        class_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
        images = {im["id"]: im for im in data["images"]}
        for im in data["images"]:
            if im["height"] <= 0 or im["width"] <= 0:
                raise DataError(
                    f"{ann_file}: image id {im['id']} ({im['file_name']}) has non-positive size "
                    f"height={im['height']} width={im['width']}"
                )

        by_image = collections.defaultdict(list)
        for a in data["annotations"]:
            if a["image_id"] not in images:
                raise DataError(f"{ann_file}: annotation id {a['id']} refers to image_id {a['image_id']}, which is not in 'images'")
            if a["category_id"] not in class_of:
                raise DataError(
                    f"{ann_file}: annotation id {a['id']} (image id {a['image_id']}) has category_id "
                    f"{a['category_id']}, which is not in 'categories' (known ids: {sorted(class_of)[:20]})"
                )
            if "bbox" not in a:
                raise DataError(f"{ann_file}: annotation id {a['id']} (image id {a['image_id']}) has no 'bbox'")
            _check_bbox(ann_file, a)
            by_image[a["image_id"]].append(a)

        if check_files:
            missing = [p for p in (os.path.join(image_dir, im["file_name"]) for im in data["images"]) if not os.path.isfile(p)]
            if missing:
                raise DataError(
                    f"{ann_file}: {len(missing)} of {len(images)} image files are missing under {image_dir}: "
                    + ", ".join(missing[:5])
                    + (", ..." if len(missing) > 5 else "")
                )

        masks_dir = os.path.join(os.path.dirname(image_dir), "masks")
        has_masks = os.path.isdir(masks_dir)
        records, image_stats = [], {}
        for image_id in sorted(images):
            im = images[image_id]
            counts = collections.Counter()
            boxes, classes = [], []
            for a in by_image[image_id]:
                if a.get("iscrowd") and skip_crowd:
                    counts["crowd_boxes_skipped"] += 1
                    continue
                x, y, w, h = a["bbox"]
                boxes.append([y, x, y + h, x + w])
                classes.append(class_of[a["category_id"]])
            clipped, keep = clip_boxes(np.array(boxes, np.float64), im["height"], im["width"], counts)
            mask_file = None
            if has_masks:
                candidate = os.path.join(masks_dir, os.path.splitext(im["file_name"])[0] + ".png")
                mask_file = candidate if os.path.isfile(candidate) else None
            records.append(
                DetectionRecord(
                    image_id=image_id,
                    height=im["height"],
                    width=im["width"],
                    boxes=clipped[keep],
                    classes=np.array(classes, np.int32).reshape(-1)[keep],
                    file_name=os.path.join(image_dir, im["file_name"]),
                    mask_file=mask_file,
                )
            )
            image_stats[image_id] = counts

        super().__init__(
            name=name or os.path.splitext(os.path.basename(ann_file))[0],
            categories=[{"id": c["id"], "name": c["name"]} for c in cats],
            records=records,
            image_stats=image_stats,
            gt_dataset=data,
        )
        self.ann_file = ann_file
        self.image_dir = image_dir

    def load_image(self, index: int) -> np.ndarray:
        """Decode ``records[index]``'s file: uint8 ``[H, W, 3]`` RGB.

        Raises `CorruptImageError` naming the path when the file cannot be
        decoded or its size differs from the annotation's height/width (the
        boxes would not fit it).
        """
        r = self.records[index]
        image = decode_image(r.file_name, r.file_name)
        if image.shape[:2] != (r.height, r.width):
            raise CorruptImageError(
                r.file_name,
                f"decoded size {image.shape[0]}x{image.shape[1]} differs from the annotation's {r.height}x{r.width}",
            )
        return image
