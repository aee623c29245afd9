"""Content identities of what a run reads: annotation files, image lists, datasets.

A run id hashes the params *and* these digests (`stlib.experiments.identity`), so a changed
annotation file, a shrunk or renamed image folder, or another tfds version is a new run,
never the old result under the old name. Digests are of bytes and names, never of floats
computed on this machine, so they are the same on every CPU.

Digests of large files are memoized per process by (path, size, mtime), so planning a
study of many runs over one COCO folder hashes its annotation file once.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from stlib.data.coco import DataError
from stlib.data.world import ensure_world

_FILE_MEMO: dict = {}
_LIST_MEMO: dict = {}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path) -> str:
    """sha256 of a file's bytes (memoized by path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _FILE_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_MEMO[memo_key] = h.hexdigest()
    return _FILE_MEMO[memo_key]


def listing_digest(entries) -> str:
    """sha256 of `(name, size)` pairs in the given order (an image list)."""
    h = hashlib.sha256()
    for name, size in entries:
        h.update(f"{name}\t{size}\n".encode())
    return h.hexdigest()


def folder_listing(root) -> list[tuple[str, int]]:
    """`(relative posix path, size)` of every file under `root`, sorted (hidden entries skipped)."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        for f in filenames:
            if not f.startswith("."):
                out.append(((rel / f).as_posix(), os.stat(os.path.join(dirpath, f)).st_size))
    return sorted(out)


def folder_digest(root) -> str:
    """`listing_digest` of a folder, memoized per process by its path and the mtimes of it and of
    its sub-folders (a file added to a class folder of ImageNet's layout changes only that one's)."""
    root = Path(root)
    subdirs = tuple(sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(root) if e.is_dir()))
    memo_key = (str(root.resolve()), root.stat().st_mtime_ns, subdirs)
    if memo_key not in _LIST_MEMO:
        _LIST_MEMO[memo_key] = listing_digest(folder_listing(root))
    return _LIST_MEMO[memo_key]


def _tfds_info_digest(name: str, data_dir: str) -> str:
    """The digest of a prepared tfds dataset's `dataset_info.json` files (version, splits and
    their example counts and checksums), or just its name when none is found on disk."""
    base = Path(data_dir).expanduser() if data_dir else Path(os.environ.get("TFDS_DATA_DIR",
                                                                          Path.home() / "tensorflow_datasets"))
    ds, _, version = name.partition(":")
    folder = base / ds
    infos = sorted(folder.glob(f"{version or '*'}/dataset_info.json")) if folder.is_dir() else []
    if not infos:
        return f"tfds:{name}"
    return sha256_bytes("".join(f"{p.relative_to(base)}:{file_digest(p)}\n" for p in infos).encode())


# What a run starts from that does not exist yet (a teacher's checkpoint, data not on disk): a run
# id holding it is provisional, so a plan can list the run before it can be made.
PENDING = "pending:"


def data_digest(dp) -> str:
    """The identity of what a detection run's `stlib.config.DataParams` read.

    - world: its generated annotation files (train and val), generating the world if needed;
    - coco: the annotation files' bytes and the image folders' listings (names and sizes);
    - tfds: the prepared dataset's `dataset_info.json` (version, splits, checksums);
    - voc: PASCAL VOC's two list files and the listings of its image and mask folders (`PENDING`
      while they are not on disk).
    The labelled fraction, its seed and `max_val_images` are params, hashed with them.
    """
    if dp.source == "world":
        det = ensure_world(dp.world_scale, dp.world_seed) / "detection" / "annotations"
        parts = [file_digest(det / "train.json"), file_digest(det / "val.json")]
    elif dp.source == "coco":
        parts = []
        for key in ("train_ann", "val_ann"):
            path = Path(getattr(dp, key)).expanduser()
            if not path.is_file():
                raise DataError(f"data.{key}: annotation file {path} does not exist")
            parts.append(file_digest(path))
        for key in ("train_images", "val_images"):
            path = Path(getattr(dp, key)).expanduser()
            if not path.is_dir():
                raise DataError(f"data.{key}: image folder {path} does not exist")
            parts.append(folder_digest(path))
    elif dp.source == "tfds":
        parts = [_tfds_info_digest(dp.tfds_name, dp.tfds_data_dir)]
    elif dp.source == "voc":   # PASCAL VOC: its two list files, the images' and the masks' listings
        root = Path(dp.voc_root).expanduser()
        lists = [root / "ImageSets" / "Segmentation" / f"{split}.txt" for split in (dp.train_split, dp.val_split)]
        if not all(f.is_file() for f in lists):   # not on this machine (yet): listed by a plan, made once it is
            return f"{PENDING}voc:{root}"
        parts = [file_digest(f) for f in lists]
        parts += [folder_digest(d) for d in (root / "JPEGImages", root / "SegmentationClass",
                                            root / "SegmentationClassAug") if d.is_dir()]
    else:
        raise ValueError(f"data.source: unknown source {dp.source!r}")
    return sha256_bytes("\n".join(parts).encode())[:16]
