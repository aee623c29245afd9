"""Detection source over a prepared tensorflow-datasets COCO (``coco/2017`` and friends).

`TfdsCocoSource` reads a split once and gives the same `DetectionRecord`s as
`stlib.data.coco.CocoSource`: absolute-pixel ``[ymin, xmin, ymax, xmax]`` boxes
(tfds stores them normalized), classes ``1..K`` sorted by original COCO
category id, crowd boxes skipped and counted, box fixes counted in ``stats``.

tfds keeps only the label names, not COCO's category ids, so names are mapped
to the standard COCO 2017 ids (`COCO_2017_CATEGORIES`); predictions can then be
evaluated against COCO-format ground truth. Label features whose names are not
COCO names get ids ``1..K`` in label order.

Images are read *encoded* (the dataset's own JPEG bytes, ``SkipDecoding``) and
decoded with PIL in ``load_image`` -- the same decoder as `CocoSource`, so both
sources give identical pixels for the same COCO files, and a corrupt image is
skipped-and-counted by ``load_image_or_none`` instead of stopping an iterator.
Image sizes come from the encoded headers.

Where the dataset is prepared in a random-access format (``tfds build coco/2017
--file_format=array_record``), the split is read once for its boxes and each image is
read from disk when a batch needs it (`builder.as_data_source`): nothing holds the
split's images, and the training pipeline's threads read side by side. A split
prepared as TFRecord (tfds' default) has no random access, so its encoded images
are held in memory (about 19 GB for COCO train, with a warning past
`IN_MEMORY_WARN` images); that suits the small splits of tests and notebooks
(``max_examples`` or a slice such as ``"train[:1%]"``).

TensorFlow and tensorflow-datasets are imported inside the constructor, so
importing ``stlib.data`` does not import TF.
"""

from __future__ import annotations

import collections
import io
import logging
import os

import numpy as np
from PIL import Image

from stlib.data.coco import DataError, DetectionRecord, DetectionSource, clip_boxes, decode_image

__all__ = ["COCO_2017_CATEGORIES", "TfdsCocoSource"]

_log = logging.getLogger(__name__)
IN_MEMORY_WARN = 20_000  # a TFRecord split with more images than this warns that it is held in memory

# The 80 COCO 2017 detection categories (original id, name); tfds label i is row i.
COCO_2017_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"),
    (6, "bus"), (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"),
    (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"),
    (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"),
    (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"),
    (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"),
    (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"),
    (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"),
    (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"),
    (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)


def _label_categories(label_names: list[str]) -> list[tuple[int, str]]:
    """(original category id, name) of each tfds label."""
    by_name = {n: i for i, n in COCO_2017_CATEGORIES}
    if all(n in by_name for n in label_names):
        return [(by_name[n], n) for n in label_names]
    if label_names == [str(i) for i in range(len(COCO_2017_CATEGORIES))]:
        # An unnamed 80-class COCO label feature (the metadata was not restored, e.g. mocked):
        # tfds writes COCO's categories in file order, which is id order.
        return list(COCO_2017_CATEGORIES)
    return [(i + 1, n) for i, n in enumerate(label_names)]


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from an encoded image's header, or None when it cannot be read."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


class TfdsCocoSource(DetectionSource):
    """A prepared tfds COCO split as `DetectionRecord`s, its images read from disk when needed
    (random-access formats) or held encoded in memory (TFRecord).

    ``TfdsCocoSource(name="coco/2017", split="train", data_dir=None, *, max_examples=None, skip_crowd=True,
    random_access=None)``

    * ``random_access``: None reads images from disk when the prepared format allows it
      (array_record), else holds them; True requires it (`DataError` naming the fix otherwise).

    * ``split`` accepts tfds slicing (``"validation[:500]"``); ``max_examples``
      keeps the first N examples.
    * ``source.name`` is ``"tfds:<name>:<split>"``; ``file_name`` and
      ``mask_file`` are None.
    * Images whose encoded header cannot be read are left out and counted in
      ``stats["images_corrupt"]``.
    * ``coco_gt`` is built from the tfds objects, crowd boxes included:
      bbox xywh in absolute pixels, original category ids, tfds ``area``
      (COCO's segmentation area, which COCOeval uses for its size ranges) and
      ``iscrowd``; annotation ids are renumbered 1..N. Like every source's, it is
      cleaned as the records are (`stlib.data.coco.clean_gt_annotations`): boxes the
      loader drops are left out, clipped ones are evaluated clipped.

    Raises `DataError` when the dataset is unknown, not prepared in ``data_dir``,
    lacks the needed features, or the split does not exist.
    """

    def __init__(
        self,
        name: str = "coco/2017",
        split: str = "train",
        data_dir: str | os.PathLike | None = None,
        *,
        max_examples: int | None = None,
        skip_crowd: bool = True,
        random_access: bool | None = None,
    ):
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core import file_adapters

        data_dir = os.fspath(data_dir) if data_dir is not None else None
        where = f"tfds dataset {name!r} (data_dir {data_dir or tfds.core.constants.DATA_DIR})"
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DataError(f"{where} is not a known tfds dataset: {str(e).splitlines()[0]}") from e
        features = builder.info.features
        if "objects" not in features or not {"bbox", "label"} <= set(features["objects"].keys()) or "image/id" not in features:
            raise DataError(f"{where} has no 'image/id' and 'objects' with 'bbox' and 'label': not a COCO detection config")
        root = data_dir or tfds.core.constants.DATA_DIR
        if random_access is None:
            random_access = builder.info.file_format in file_adapters.FileFormat.with_random_access()
        decoders = {"image": tfds.decode.SkipDecoding()}
        try:
            if random_access:
                self._source = builder.as_data_source(split=split, decoders=decoders)
                count = len(self._source) if max_examples is None else min(len(self._source), max_examples)
                examples = (self._source[i] for i in range(count))
            else:
                self._source = None
                ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
                examples = tfds.as_numpy(ds if max_examples is None else ds.take(max_examples))
        except (AssertionError, FileNotFoundError) as e:  # tfds' "could not find data in ..."
            raise DataError(
                f"{where} is not prepared (no data under {builder.data_dir}). Prepare it with "
                f"`tfds build {name} --data_dir {root} --file_format=array_record` (COCO 2017 is a ~25 GB "
                "download), or use stlib.data.coco.CocoSource on a COCO folder (annotations JSON + image directory)."
            ) from e
        except NotImplementedError as e:  # random access asked of a TFRecord-prepared dataset
            raise DataError(
                f"{where} is prepared as {builder.info.file_format.value}, which has no random access: "
                f"rebuild it with `tfds build {name} --data_dir {root} --file_format=array_record`, or read it "
                "with random_access=False (its encoded images held in memory)") from e
        except ValueError as e:
            raise DataError(f"{where}: cannot read split {split!r}: {e}") from e

        label_categories = _label_categories(features["objects"]["label"].names)
        original = [i for i, _ in label_categories]
        order = np.argsort(original, kind="stable")
        label_to_class = np.empty(len(original), np.int32)
        label_to_class[order] = np.arange(1, len(original) + 1)
        categories = [{"id": label_categories[i][0], "name": label_categories[i][1]} for i in order]

        source_name = f"tfds:{name}:{split}"
        records, image_stats, encoded = [], {}, {}   # encoded: image id -> bytes, or its position on disk
        gt_images, gt_annotations = [], []
        skipped = collections.Counter()
        for position, ex in enumerate(examples):
            image_id = int(ex["image/id"])
            if image_id in encoded:
                raise DataError(f"{source_name}: duplicate image id {image_id}")
            size = _image_size(ex["image"])
            if size is None:
                skipped["images_corrupt"] += 1
                _log.warning("%s: skipping image id %d, its header cannot be decoded", source_name, image_id)
                continue
            height, width = size
            objects = ex["objects"]
            n = len(objects["label"])
            lengths = {k: len(v) for k, v in objects.items()}
            if any(v != n for v in lengths.values()):
                raise DataError(f"{source_name}: image id {image_id} has objects of different lengths {lengths}")
            labels = objects["label"].astype(np.int64)
            if n and (labels.min() < 0 or labels.max() >= len(original)):
                raise DataError(f"{source_name}: image id {image_id} has labels outside 0..{len(original) - 1}: {labels}")
            crowd = objects["is_crowd"].astype(bool) if "is_crowd" in objects else np.zeros(n, bool)
            boxes = objects["bbox"].astype(np.float64).reshape(-1, 4) * [height, width, height, width]

            for box, label, is_crowd, area in zip(boxes, labels, crowd, objects.get("area", [None] * n)):
                ymin, xmin, ymax, xmax = (float(v) for v in box)
                w, h = xmax - xmin, ymax - ymin
                gt_annotations.append({
                    "id": len(gt_annotations) + 1,
                    "image_id": image_id,
                    "category_id": original[label],
                    "bbox": [xmin, ymin, w, h],
                    "area": float(area) if area is not None else w * h,
                    "iscrowd": int(is_crowd),
                })
            filename = ex["image/filename"].decode() if "image/filename" in ex else str(image_id)
            gt_images.append({"id": image_id, "height": height, "width": width, "file_name": filename})

            counts = collections.Counter()
            train = ~crowd if skip_crowd else np.ones(n, bool)
            counts["crowd_boxes_skipped"] += int(n - train.sum())
            clipped, keep = clip_boxes(boxes[train], height, width, counts)
            records.append(
                DetectionRecord(
                    image_id=image_id,
                    height=height,
                    width=width,
                    boxes=clipped[keep],
                    classes=label_to_class[labels[train]][keep],
                )
            )
            image_stats[image_id] = counts
            encoded[image_id] = position if random_access else ex["image"]

        super().__init__(
            name=source_name,
            categories=categories,
            records=records,
            image_stats=image_stats,
            gt_dataset={"images": gt_images, "annotations": gt_annotations, "categories": categories},
            source_stats=skipped,
        )
        self._encoded = encoded
        self.random_access = bool(random_access)
        if not random_access and len(encoded) > IN_MEMORY_WARN:
            _log.warning("%s: %d encoded images held in memory (%.1f GB); prepare the dataset with "
                         "--file_format=array_record to read them from disk as batches need them", source_name,
                         len(encoded), sum(len(b) for b in encoded.values()) / 1e9)

    def load_image(self, index: int) -> np.ndarray:
        """Decode ``records[index]``'s image (read from disk in random-access mode): uint8 ``[H, W, 3]``
        RGB; raises `CorruptImageError`."""
        image_id = self.records[index].image_id
        data = self._encoded[image_id]
        if self._source is not None:
            data = self._source[data]["image"]
        return decode_image(data, f"{self.name} image id {image_id}")
