"""Unlabeled image sources for pseudo labelling: an image folder, a world pool, or a tfds split.

Self-training (Sec. 3.2) labels a pool of *unlabeled* images with a teacher. The
pool can be any folder of images (ImageNet's train folder, a user's photos), one
of the embedded world's pools, or a prepared tensorflow-datasets split
(``imagenet2012``, ``open_images_v4``). Every source gives the same things:

* ``len(source)`` images, addressed by a 0-based index that is stable across runs
  (folders are sorted by relative path, tfds splits are read unshuffled), so a
  pseudo-label store can be written shard by shard, killed and resumed;
* ``key(i)``: a stable name for image ``i`` (the relative file path, or
  ``"<split>/<index>"`` for tfds), kept with the labels as provenance and used as
  ``file_name`` when labels are exported to COCO format;
* ``load_image(i)``: uint8 ``[H, W, 3]`` RGB, raising `CorruptImageError` naming the
  file; ``load_image_or_none`` and ``images`` turn a corrupt image into None, a
  warning and ``stats["images_corrupt"] += 1``, so one bad file among 1.2M cannot
  kill a labelling run;
* ``images(start, stop)``: the images of one shard, in index order, decoded in a
  small thread pool (tfds reads only the slice ``split[start:stop]``).

`parse_unlabeled` turns a params/CLI string (``"world:scenes"``,
``"tfds:imagenet2012:train"``, ``"folder:/data/x"`` or a plain path) into a source.
TensorFlow is imported only when a tfds source is built.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import pathlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from stlib.data.coco import CorruptImageError, DataError, decode_image
from stlib.data.identity import listing_digest, sha256_bytes
from stlib.data.world import ensure_world
from stlib.registry import Registry

__all__ = [
    "IMAGE_EXTENSIONS",
    "WORLD_POOLS",
    "FolderSource",
    "TfdsImageSource",
    "UnlabeledSource",
    "WorldPoolSource",
    "UNLABELED",
    "parse_unlabeled",
    "unlabeled_kind",
]

_log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
WORLD_POOLS = ("scenes", "objects")
_NON_IMAGE_EXAMPLES = 5  # how many non-image file names a FolderSource keeps for messages


def _ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` in order, run by ``workers`` threads with a bounded look-ahead.

    At most ``2 * workers`` results are pending, so a slow consumer never makes a
    whole shard of decoded images pile up in memory.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class UnlabeledSource:
    """Base class: a fixed, ordered list of unlabeled images (see the module docstring).

    Subclasses set the attributes in ``__init__`` and implement ``__len__``, ``key``,
    ``load_image`` and ``_encoded_or_paths`` (what ``images`` decodes).

    * ``name``: readable identity, e.g. ``"world-mini/pools/scenes"``,
      ``"folder:/abs/path"``, ``"tfds:imagenet2012:train"``;
    * ``spec``: the string the source was parsed from (provenance for a store);
    * ``stats``: ``{"images", "non_image_files", "images_corrupt"}``, the last one
      growing as corrupt images are met;
    * ``hidden_gt``: COCO ground truth keyed by ``file_name == key(i)`` (world scenes
      only, for checking pseudo-label quality), else None;
    * ``hidden_labels``: ``{"categories", "images": [{"file_name", "label"}]}`` (world
      objects only), else None.
    """

    name: str
    spec: str
    stats: dict
    hidden_gt: pathlib.Path | None = None
    hidden_labels: pathlib.Path | None = None

    def __init__(self, name: str, spec: str, num_images: int, non_image_files: int = 0):
        self.name = name
        self.spec = spec
        self.stats = {"images": num_images, "non_image_files": non_image_files, "images_corrupt": 0}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.stats["images"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, images={len(self)})"

    def key(self, i: int) -> str:
        """Stable name of image ``i``."""
        raise NotImplementedError

    def identity(self) -> str:
        """A digest of which images the source holds (names and sizes, or a dataset's info), the
        same on every machine: a pseudo-label store and its students are addressed by it."""
        raise NotImplementedError

    def load_image(self, i: int) -> np.ndarray:
        """Decode image ``i``: uint8 ``[H, W, 3]`` RGB; raises `CorruptImageError` naming it."""
        raise NotImplementedError

    def _check_index(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < len(self):
            raise IndexError(f"{self.name}: image index {i!r} outside 0..{len(self) - 1}")
        return int(i)

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"{self.name}: image range [{start}, {stop}) is not within [0, {len(self)})")

    def _corrupt(self, error: CorruptImageError) -> None:
        with self._lock:
            self.stats["images_corrupt"] += 1
        _log.warning("%s: skipping corrupt image: %s", self.name, error)

    def load_image_or_none(self, i: int) -> np.ndarray | None:
        """``load_image``, but a corrupt image gives None, a warning and ``stats["images_corrupt"] += 1``."""
        try:
            return self.load_image(i)
        except CorruptImageError as e:
            self._corrupt(e)
            return None

    def images(self, start: int, stop: int, workers: int = 4) -> Iterator[tuple[int, np.ndarray | None]]:
        """Yield ``(i, image or None when corrupt)`` for ``i`` in ``range(start, stop)``, in order."""
        self._check_range(start, stop)
        yield from zip(range(start, stop), _ordered_map(self.load_image_or_none, range(start, stop), workers))

    def images_at(self, indices: list[int], workers: int = 4) -> Iterator[tuple[int, np.ndarray | None]]:
        """Yield ``(i, image or None when corrupt)`` for the ascending ``indices``, in order (a process
        of a multi-process labelling decodes only its rows)."""
        for i in indices:
            self._check_index(i)
        yield from zip(indices, _ordered_map(self.load_image_or_none, indices, workers))


class FolderSource(UnlabeledSource):
    """Every image file under a folder, recursively, sorted by relative (posix) path.

    ``FolderSource(root, *, name=None, spec=None)``

    Image files are those with an extension in `IMAGE_EXTENSIONS` (any case); files
    and folders whose name starts with ``"."`` are ignored. Any other file is not an
    image: it is counted in ``stats["non_image_files"]`` (the first few relative names
    are kept in ``non_image_examples``) and is not part of ``len()``. Symlinked files
    are listed; symlinked sub-folders are not followed (a link cycle cannot hang it).

    Raises `DataError` naming the folder when it does not exist or holds no image.
    """

    def __init__(self, root: str | os.PathLike, *, name: str | None = None, spec: str | None = None):
        self.root = pathlib.Path(root).expanduser().absolute()
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise DataError(f"unlabeled image folder {self.root} {what}")
        files, others = [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = pathlib.PurePath(dirpath).relative_to(self.root)
            for f in filenames:
                if f.startswith("."):
                    continue
                rel = (rel_dir / f).as_posix()
                (files if f.lower().endswith(IMAGE_EXTENSIONS) else others).append(rel)
        others.sort()
        self.non_image_examples = others[:_NON_IMAGE_EXAMPLES]
        if not files:
            seen = f"; it holds {len(others)} non-image file(s), e.g. {self.non_image_examples}" if others else ""
            raise DataError(
                f"unlabeled image folder {self.root} holds no image file "
                f"(extensions {' '.join(IMAGE_EXTENSIONS)}, any case){seen}"
            )
        self._keys = sorted(files)
        name = name or f"folder:{self.root.as_posix()}"
        super().__init__(name, spec or name, len(self._keys), non_image_files=len(others))

    def key(self, i: int) -> str:
        """The image's path relative to ``root`` (posix separators)."""
        return self._keys[self._check_index(i)]

    def identity(self) -> str:
        """`stlib.data.identity.listing_digest` of the images' relative paths and sizes, in order:
        a renamed, added, removed or resized image is another source."""
        if getattr(self, "_identity", None) is None:
            self._identity = listing_digest((k, (self.root / k).stat().st_size) for k in self._keys)[:16]
        return self._identity

    def path(self, i: int) -> pathlib.Path:
        """Absolute path of image ``i``."""
        return self.root / self.key(i)

    def load_image(self, i: int) -> np.ndarray:
        path = str(self.path(i))
        return decode_image(path, path)


class WorldPoolSource(FolderSource):
    """One of the embedded world's unlabeled pools: ``"scenes"`` (in-domain, COCO-like) or
    ``"objects"`` (object-centric, ImageNet-like), images under ``<world>/pools/<pool>/images``.

    ``WorldPoolSource(world_root, pool, *, scale="mini", seed=0, spec=None)``; `parse_unlabeled`
    builds the world with ``stlib.data.world.ensure_world``. ``name`` is
    ``"world-<scale>/pools/<pool>"`` (``"world-<scale>-s<seed>/..."`` for a seed other than 0).
    ``hidden_gt`` (scenes) is ``<world>/hidden/scenes.json``, COCO ground truth whose
    ``file_name`` equals ``key(i)`` and whose image id is ``i + 1``; ``hidden_labels``
    (objects) is ``<world>/hidden/objects.json``, and a second-version world's object pool also has
    ``hidden_gt``: ``<world>/hidden/objects_boxes.json``, the boxes of its detection-class objects. They exist to measure pseudo-label
    quality and must never feed training.
    """

    def __init__(self, world_root: str | os.PathLike, pool: str, *, scale: str = "mini", seed: int = 0,
                 spec: str | None = None):
        if pool not in WORLD_POOLS:
            raise DataError(f"unknown world pool {pool!r}; expected one of {list(WORLD_POOLS)}")
        self.world_root = pathlib.Path(world_root)
        self.pool = pool
        hidden = self.world_root / "hidden" / f"{pool}.json"
        if not hidden.is_file():
            raise DataError(f"world {self.world_root}: hidden labels of pool {pool!r} missing: {hidden}")
        world = f"world-{scale}" + (f"-s{seed}" if seed else "")
        super().__init__(self.world_root / "pools" / pool / "images", name=f"{world}/pools/{pool}",
                         spec=spec or f"world:{pool}")
        boxes = self.world_root / "hidden" / "objects_boxes.json"   # second-version worlds box their objects
        self.hidden_gt = hidden if pool == "scenes" else boxes if boxes.is_file() else None
        self.hidden_labels = hidden if pool == "objects" else None


class TfdsImageSource(UnlabeledSource):
    """The images of a prepared tensorflow-datasets split, labels discarded.

    ``TfdsImageSource(name, split, data_dir=None, *, image_key="image", spec=None)``

    * ``name`` is a tfds name (``"imagenet2012"``, ``"open_images_v4"``,
      ``"coco/2017"``, with an optional ``":<version>"``); ``split`` a plain split name
      (no ``[...]`` slicing: indices must be positions in the whole split);
    * ``len`` is ``builder.info.splits[split].num_examples``; image ``i`` is the
      ``i``-th example of the unshuffled split, ``key(i) = "<split>/<i>"``;
    * images are read encoded (``SkipDecoding``) and decoded with PIL, like the other
      sources; ``images(start, stop)`` reads only ``split[start:stop]``;
    * ``random_access`` (None: where the prepared format has it, i.e. array_record):
      ``load_image(i)`` reads example ``i`` from disk (``builder.as_data_source``), which
      the pseudo-labelled training stream does for every image of every batch; without it
      each ``load_image`` reads a one-example slice through its own tf.data pipeline.

    Raises `DataError` when the dataset is unknown, not prepared (saying how to
    prepare it), has no image feature ``image_key``, or has no split ``split``.
    """

    def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                 image_key: str = "image", spec: str | None = None, random_access: bool | None = None):
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core import file_adapters

        self._tfds = tfds
        self.dataset = name
        self.split = split
        self.data_dir = os.fspath(data_dir) if data_dir else None
        self.image_key = image_key
        root = self.data_dir or tfds.core.constants.DATA_DIR
        where = f"tfds dataset {name!r} split {split!r} (data_dir {root})"
        if not split or "[" in split or "]" in split:
            raise DataError(
                f"{where}: give a plain split name; slicing is not supported because image "
                "indices must be positions in the whole split"
            )
        try:
            self._builder = tfds.builder(name, data_dir=self.data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DataError(f"{where}: not a known tfds dataset: {str(e).splitlines()[0]}") from e
        splits = dict(self._builder.info.splits)
        if not splits:
            raise DataError(
                f"{where} is not prepared (no data under {self._builder.data_dir}). Prepare it with "
                f"`tfds build {name} --data_dir {root}` or "
                f"`tfds.builder({name!r}, data_dir={root!r}).download_and_prepare()` "
                "(ImageNet and Open Images need their archives downloaded by hand first, see the tfds "
                "catalog), or point folder:<path> at a folder of the images."
            )
        if split not in splits:
            raise DataError(f"{where}: no such split; the prepared splits are {sorted(splits)}")
        features = self._builder.info.features
        if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
            images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
            raise DataError(f"{where}: no image feature {image_key!r}; its image features are {images}")
        source_name = f"tfds:{name}:{split}"
        super().__init__(source_name, spec or source_name, int(splits[split].num_examples))
        if random_access is None:
            random_access = self._builder.info.file_format in file_adapters.FileFormat.with_random_access()
        self.random_access = bool(random_access)
        self._on_disk = None
        if random_access:
            try:
                self._on_disk = self._builder.as_data_source(
                    split=split, decoders={image_key: tfds.decode.SkipDecoding()})
            except NotImplementedError as e:
                raise DataError(
                    f"{where} is prepared without random access ({self._builder.info.file_format.value} files): "
                    f"rebuild it with `tfds build {name} --data_dir {root} --file_format=array_record`") from e

    def key(self, i: int) -> str:
        return f"{self.split}/{self._check_index(i)}"

    def identity(self) -> str:
        """The prepared dataset's name, version and split size, and its checksums where tfds has them."""
        info = self._builder.info
        split = info.splits[self.split]
        files = getattr(split, "filenames", None) or []
        return sha256_bytes(f"{info.full_name}:{self.split}:{split.num_examples}:{sorted(files)}".encode())[:16]

    def _read(self, start: int, stop: int) -> Iterator[bytes]:
        """Encoded images of ``split[start:stop]``, in order."""
        tfds = self._tfds
        ds = self._builder.as_dataset(
            split=f"{self.split}[{start}:{stop}]",
            shuffle_files=False,
            decoders={self.image_key: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(try_autocache=False),
        )
        ds = ds.map(lambda ex: ex[self.image_key])
        count = 0
        for data in tfds.as_numpy(ds):
            count += 1
            yield bytes(data)
        if count != stop - start:
            raise DataError(f"{self.name}: slice [{start}:{stop}] gave {count} images, expected {stop - start}")

    def _decode(self, item: tuple[int, bytes]) -> np.ndarray:
        i, data = item
        return decode_image(data, f"{self.name} image {self.key(i)}")

    def _decode_or_none(self, item: tuple[int, bytes]) -> np.ndarray | None:
        try:
            return self._decode(item)
        except CorruptImageError as e:
            self._corrupt(e)
            return None

    def load_image(self, i: int) -> np.ndarray:
        """Reads example ``i`` from disk (random access), else the one-example slice ``split[i:i+1]``
        (use ``images`` for many)."""
        i = self._check_index(i)
        if self._on_disk is not None:
            return self._decode((i, bytes(self._on_disk[i][self.image_key])))
        (data,) = list(self._read(i, i + 1))
        return self._decode((i, data))

    def images(self, start: int, stop: int, workers: int = 4) -> Iterator[tuple[int, np.ndarray | None]]:
        self._check_range(start, stop)
        if start == stop:
            return
        items = zip(range(start, stop), self._read(start, stop))
        yield from zip(range(start, stop), _ordered_map(self._decode_or_none, items, workers))

    def images_at(self, indices: list[int], workers: int = 4) -> Iterator[tuple[int, np.ndarray | None]]:
        if self._on_disk is not None or not indices:
            yield from super().images_at(indices, workers)
            return
        # no random access: read the covering slice once, decode only the wanted images
        for i in indices:
            self._check_index(i)
        wanted = set(indices)
        start, stop = indices[0], indices[-1] + 1
        items = ((i, data) for i, data in zip(range(start, stop), self._read(start, stop)) if i in wanted)
        yield from zip(indices, _ordered_map(self._decode_or_none, items, workers))


_FORMS = ("world:scenes", "world:objects", "tfds:<name>:<split>", "folder:<path>", "<path>")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_+.-]+):")


def unlabeled_kind(spec) -> str | None:
    """The kind a spec names, its ``"<kind>:"`` prefix (``"folder"`` for a plain path, which
    has none or is an existing path); None for an empty spec."""
    if not isinstance(spec, str) or not spec.strip():
        return None
    spec = spec.strip()
    m = _SCHEME.match(spec)
    if m is None or (m.group(1) not in UNLABELED and os.path.exists(spec)):
        return "folder"
    return m.group(1)


# kind -> parser(spec, rest, world_scale, world_seed, tfds_data_dir, forms) (`self_train.unlabeled`)
UNLABELED = Registry("unlabeled source kind", field="self_train.unlabeled", key=unlabeled_kind)


@UNLABELED.register("world")
def _parse_world(spec, rest, world_scale, world_seed, tfds_data_dir, forms):
    if rest not in WORLD_POOLS:
        raise DataError(f"unlabeled source spec {spec!r}: unknown world pool {rest!r}; accepted forms: {forms}")

    root = ensure_world(world_scale, world_seed)
    return WorldPoolSource(root, rest, scale=world_scale, seed=world_seed, spec=spec)


@UNLABELED.register("tfds")
def _parse_tfds(spec, rest, world_scale, world_seed, tfds_data_dir, forms):
    name, _, split = rest.rpartition(":")
    if not name or not split:
        raise DataError(f"unlabeled source spec {spec!r}: need 'tfds:<name>:<split>'; accepted forms: {forms}")
    return TfdsImageSource(name, split, tfds_data_dir or None, spec=spec)


@UNLABELED.register("folder")
def _parse_folder(spec, rest, world_scale, world_seed, tfds_data_dir, forms):
    if not rest:
        raise DataError(f"unlabeled source spec {spec!r} names no folder; accepted forms: {forms}")
    return FolderSource(rest, spec=spec)


@UNLABELED.register("voc")
def _parse_voc(spec, rest, world_scale, world_seed, tfds_data_dir, forms):
    raise DataError(f"unlabeled source spec {spec!r}: voc:<split> is PASCAL VOC's images for a segmentation "
                    "student (model.head segmentation); a detector labels one of: " + forms)


def parse_unlabeled(spec: str, world_scale: str = "mini", world_seed: int = 0,
                    tfds_data_dir: str = "") -> UnlabeledSource:
    """The unlabeled source named by ``spec`` (``source.spec`` keeps the string).

    * ``"world:scenes"`` / ``"world:objects"``: a pool of the embedded world
      ``ensure_world(world_scale, world_seed)``;
    * ``"tfds:<name>:<split>"``: a prepared tfds split (the name may contain ``/`` and
      a ``:<version>``; the split is the text after the last ``:``), read from
      ``tfds_data_dir`` (empty: tfds' default);
    * ``"folder:<path>"`` or a plain path: an image folder.

    The kinds are the parsers of `UNLABELED` (`unlabeled_kind`). Anything else (an empty
    string, an unknown ``kind:`` prefix that is not an existing path) raises `DataError`
    listing the accepted forms.
    """
    forms = ", ".join(repr(f) for f in _FORMS)
    kind = unlabeled_kind(spec)
    if kind is None:
        raise DataError(f"unlabeled source spec {spec!r} is empty; accepted forms: {forms}")
    spec = spec.strip()
    if kind not in UNLABELED:
        raise DataError(f"unlabeled source spec {spec!r}: unknown kind {kind!r}; accepted forms: {forms}")
    m = _SCHEME.match(spec)
    rest = spec[len(kind) + 1:] if m and m.group(1) == kind else spec   # a plain path: all of it
    return UNLABELED[kind](spec, rest, world_scale, world_seed, tfds_data_dir, forms)
