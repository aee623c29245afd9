"""Object-centric classification data (the ImageNet analogue): labelled sets and unlabeled pools.

Layout read (see `stlib.data.world`)::

    classification/{train,val}.json   {"categories": [{"index", "name"}], "images": [{"file_name", "label"}]}
    classification/{train,val}/images/*.png
    pools/objects/images/*.png        unlabeled (label -1)

`ClassificationSource` is the checked list of (file, label); `ClassificationData` turns it into
fixed-shape numpy batches with the habits of `stlib.data.pipeline.DetectionData`: every training
batch is a pure function of (seed, step) (a seeded permutation per epoch), each process builds its
slice of the global batch, evaluation visits every example once with padding flagged by
`example_valid`, decoded images are cached when they fit, and corrupt images are skipped and
counted in `source.stats["images_corrupt"]`.
"""
from __future__ import annotations

import copy
import os
import pathlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import numpy as np
from PIL import Image

from stlib.data.coco import DataError, SkipsCorruptImages, decode_image, read_json_object
from stlib.data.pipeline import CACHE_BYTES, IndexedBatches
from stlib.data.world import ensure_world


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
UNLABELED = -1


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _read_labels_json(path: str) -> dict:
    data = read_json_object(path, "classification label file")
    for key in ("categories", "images"):
        if key not in data:
            raise DataError(f"{path}: missing required key {key!r} (a classification file has "
                            "'categories' and 'images')")
        if not isinstance(data[key], list):
            raise DataError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data


def _check_fields(path: str, key: str, i: int, entry, fields: dict) -> None:
    """`entry` (the i-th of `key`) is an object with `fields` {name: "int" | "str"}."""
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {key}[{i}] is not an object: {entry!r}")
    for field, kind in fields.items():
        if field not in entry:
            raise DataError(f"{path}: {key}[{i}] is missing {field!r}: {entry!r}")
        ok = isinstance(entry[field], str) if kind == "str" else _is_int(entry[field])
        if not ok:
            want = "a string" if kind == "str" else "an integer"
            raise DataError(f"{path}: {key}[{i}] has {field}={entry[field]!r}, not {want}")


class ClassificationSource(SkipsCorruptImages):
    """Image files with integer labels, checked when built.

    Args:
      json_path: ``{"categories": [{"index", "name"}], "images": [{"file_name", "label"}]}``;
        category indices must be exactly 0..K-1 and labels one of them. None: an unlabeled pool.
      images_dir: folder of the images (``file_name`` is relative to it). Defaults, with a json, to
        ``<json folder>/<json stem>/images`` (the world's layout). For a pool (no json) every
        ``*.png`` / ``*.jpg`` / ``*.jpeg`` file in it, sorted by name, with label -1; other files
        are ignored and counted in ``stats["files_ignored"]``.
      name: for messages; defaults to the json stem or the folder name.

    Attributes: ``name``, ``categories`` (empty for a pool), ``files`` (paths), ``labels`` (int32,
    -1 when unlabeled), ``stats`` (``images_corrupt`` counted when met, ``files_ignored``).
    A json that is missing, not JSON, lacks a field, has a label outside the categories or lists a
    file that does not exist raises `DataError` naming the file and the entry.
    """

    def __init__(self, json_path=None, images_dir=None, name: str | None = None):
        self._lock = threading.Lock()
        self.stats = {"images_corrupt": 0, "files_ignored": 0}
        self.json_path = None if json_path is None else str(json_path)
        if json_path is None:
            if images_dir is None:
                raise DataError("ClassificationSource: give a json_path, an images_dir, or both")
            self.images_dir = str(images_dir)
            if not os.path.isdir(self.images_dir):
                raise DataError(f"image folder not found: {self.images_dir}")
            names = sorted(os.listdir(self.images_dir))
            keep = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)
                    and os.path.isfile(os.path.join(self.images_dir, n))]
            self.stats["files_ignored"] = len(names) - len(keep)
            self.categories: list[dict] = []
            self.files = [os.path.join(self.images_dir, n) for n in keep]
            self.labels = np.full(len(self.files), UNLABELED, np.int32)
            self.name = name or pathlib.Path(self.images_dir).name
            if self.name == "images":  # pools/objects/images -> "objects"
                self.name = pathlib.Path(self.images_dir).parent.name
            return
        p = pathlib.Path(json_path)
        self.images_dir = str(images_dir if images_dir is not None else p.parent / p.stem / "images")
        self.name = name or p.stem
        data = _read_labels_json(self.json_path)
        for i, c in enumerate(data["categories"]):
            _check_fields(self.json_path, "categories", i, c, {"index": "int", "name": "str"})
        indices = sorted(c["index"] for c in data["categories"])
        if indices != list(range(len(indices))):
            raise DataError(f"{self.json_path}: category indices must be 0..{len(indices) - 1} with no "
                            f"gaps or repeats, got {indices[:10]}{'...' if len(indices) > 10 else ''}")
        self.categories = sorted(({"index": c["index"], "name": c["name"]} for c in data["categories"]),
                                 key=lambda c: c["index"])
        k = len(self.categories)
        files, labels = [], []
        for i, im in enumerate(data["images"]):
            _check_fields(self.json_path, "images", i, im, {"file_name": "str", "label": "int"})
            if not 0 <= im["label"] < k:
                raise DataError(f"{self.json_path}: images[{i}] ({im['file_name']}) has label={im['label']}, "
                                f"outside the {k} categories (0..{k - 1})")
            f = os.path.join(self.images_dir, im["file_name"])
            if not os.path.isfile(f):
                raise DataError(f"{self.json_path}: images[{i}] file_name={im['file_name']!r}: "
                                f"image file not found: {f}")
            files.append(f)
            labels.append(im["label"])
        self.files = files
        self.labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def load_image(self, i: int) -> np.ndarray:
        """Decodes ``files[i]``: uint8 ``[H, W, 3]`` RGB; raises `CorruptImageError`."""
        return decode_image(self.files[i], self.files[i])

    def subset(self, indices: Iterable[int]) -> ClassificationSource:
        """The source restricted to ``indices`` (in the order given; ``images_corrupt`` restarts at 0).

        Positions (the ``index`` of a batch) then refer to the subset. Out-of-range indices raise `DataError`.
        """
        idx = np.asarray(list(indices), np.int64)
        bad = idx[(idx < 0) | (idx >= len(self))]
        if len(bad):
            raise DataError(f"{self.name}: subset asks for {len(bad)} index(es) outside 0..{len(self) - 1}, "
                            f"e.g. {bad[:5].tolist()}")
        new = copy.copy(self)
        new._lock = threading.Lock()
        new.files = [self.files[i] for i in idx]
        new.labels = self.labels[idx]
        new.stats = {"images_corrupt": 0, "files_ignored": self.stats.get("files_ignored", 0)}
        return new


def class_folders(root, name: str | None = None) -> ClassificationSource:
    """A labeled source from ImageNet's layout on disk: one sub-folder per class (its name the
    class, e.g. ``n01440764``), images inside. Classes are the sub-folders in name order; files that
    are not images are ignored and counted (``stats["files_ignored"]``). A missing folder, or one
    with no class sub-folder holding images, raises `DataError` naming it."""
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"class folders: {root} is not a folder")
    classes, files, labels, ignored = [], [], [], 0
    for d in sorted(c for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")):
        names = sorted(f.name for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
        keep = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        ignored += len(names) - len(keep)
        if keep:
            files += [str(d / n) for n in keep]
            labels += [len(classes)] * len(keep)
            classes.append(d.name)
    if not classes:
        raise DataError(f"class folders: {root} has no sub-folder with images (*.png, *.jpg, *.jpeg): "
                        "expected <root>/<class>/<image>, as ImageNet's train folder")
    src = ClassificationSource.__new__(ClassificationSource)
    src._lock = threading.Lock()
    src.stats = {"images_corrupt": 0, "files_ignored": ignored}
    src.json_path, src.images_dir, src.name = None, str(root), name or root.name
    src.categories = [{"index": i, "name": c} for i, c in enumerate(classes)]
    src.files, src.labels = files, np.asarray(labels, np.int32)
    return src


def build_classification_sources(world_scale: str, world_seed: int) -> dict:
    """{"train", "val", "pool"} sources of the embedded world (generated and cached on first use).

    The pool is ``pools/objects`` read as unlabeled; its hidden labels (``hidden/objects.json``)
    are deliberately not used.
    """

    root = pathlib.Path(ensure_world(world_scale, world_seed))
    return {
        "train": ClassificationSource(root / "classification/train.json", root / "classification/train/images"),
        "val": ClassificationSource(root / "classification/val.json", root / "classification/val/images"),
        "pool": ClassificationSource(None, root / "pools/objects/images", name="objects"),
    }


def unlabeled_union(name: str, *sources: ClassificationSource) -> ClassificationSource:
    """The images of several sources as one unlabeled source (labels -1; corrupt counted afresh)."""
    out = copy.copy(sources[0])
    out._lock = threading.Lock()
    out.name = name
    out.categories = []
    out.files = [f for s in sources for f in s.files]
    out.labels = np.full(len(out.files), UNLABELED, np.int32)
    out.stats = {"images_corrupt": 0, "files_ignored": sum(s.stats.get("files_ignored", 0) for s in sources)}
    return out


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H,W,3] -> [size,size,3] (bilinear; the aspect is not kept, object images are square)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


class ClassificationData(IndexedBatches):
    """Fixed-shape examples and batches from a `ClassificationSource`.

    Args:
      source: a `ClassificationSource`.
      image_size: square output size S (images are resized to S x S, bilinear, when not already).
      cache_images: decode every image once and keep it; None decides by size (`CACHE_BYTES`).
        When cached, corrupt images are dropped up front (so `len` excludes them); when not,
        one met in a training batch is replaced by the next example in the order.
      workers: decoding threads for the cache.

    Batches: ``image`` uint8 [b,S,S,3], ``label`` int32 [b] (-1 for a pool), ``index`` int32 [b]
    (position in the source, e.g. to look up pseudo labels), ``example_valid`` bool [b].
    """

    def __init__(self, source: ClassificationSource, image_size: int, cache_images: bool | None = None,
                 workers: int = 4):
        self.source = source
        self.image_size = image_size
        self._cache: dict[int, np.ndarray] = {}
        indices = list(range(len(source)))
        if cache_images is None:
            cache_images = len(indices) * image_size * image_size * 3 <= CACHE_BYTES
        if cache_images:
            with ThreadPoolExecutor(workers) as pool:
                decoded = list(pool.map(self._decode_or_none, indices))
            self._cache = {i: img for i, img in zip(indices, decoded) if img is not None}
            indices = [i for i in indices if i in self._cache]
        self.indices = np.asarray(indices, np.int64)
        if len(self.indices) == 0:
            raise ValueError(f"{source.name}: no usable images ({source.stats.get('images_corrupt', 0)} corrupt)")

    def __len__(self) -> int:
        return len(self.indices)

    def _decode_or_none(self, i: int):
        img = self.source.load_image_or_none(i)
        return None if img is None else resize_square(img, self.image_size)

    def example(self, i: int) -> dict | None:
        """The example at source position `i`, or None if its image is corrupt."""
        img = self._cache[i] if i in self._cache else self._decode_or_none(i)
        if img is None:
            return None
        return {"image": img, "label": np.int32(self.source.labels[i]), "index": np.int32(i),
                "example_valid": np.bool_(True)}
