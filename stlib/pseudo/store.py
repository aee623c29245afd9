"""The pseudo-label store: one teacher's labels for one unlabeled source, written shard by shard.

Labelling 1.2M images takes hours, so the store is built to be killed and resumed
with every image present exactly once::

    <store>/store.json               meta, written atomically at creation:
                                     {"version": 1, "num_images": N, "shard_size": S,
                                      "categories": [{"id", "name"}, ...], ...caller's provenance}
                                     plus "complete": true and "summary" once mark_complete() ran
    <store>/shards/shard-00000.npz   shard k = images [k*S, min((k+1)*S, N)), written atomically

A shard file exists only when all its images are labelled (written to a temp file in
the same folder, then ``os.replace``), so ``missing_shards()`` is exactly the work
left. Reopening a store with different provenance (another teacher, score threshold or
source) is refused, so a store is never silently mixed from two teachers.

Shard arrays (``np.load``-able without pickle): ``index`` [n] i64, ``key`` [n] unicode,
``height``/``width`` [n] i32, ``skipped`` [n] unicode, ``num_boxes`` [n] i32, and the
concatenated boxes of the shard: ``boxes`` [M, 4] f32 (yxyx, original pixels),
``classes`` [M] i32 (1..K), ``scores`` [M] f32, and ``content`` [n] unicode (each image's
pixel digest, `stlib.pseudo.labels.pixel_digest`: images are keyed by name and content). When any image of the shard has a
segmentation pseudo mask: ``has_mask`` [n] bool, ``mask_png`` [B] uint8 (the masks as
concatenated PNG files) and ``mask_offsets`` [n + 1] i64; with the masks' class probabilities,
``score_png`` and ``score_offsets`` alike (uint8 maps, round(p * 255)).
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pathlib
import re
import time
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from stlib.config import ParamsError, SelfTrainParams
from stlib.io import to_jsonable, write_bytes_atomic, write_json_atomic
from stlib.pseudo.labels import ImageLabels

__all__ = ["STORE_VERSION", "PseudoLabelStore", "StoreError", "check_export_thresholds"]


class StoreError(ValueError):
    """A store that cannot be opened, resumed or written as asked (the message names the folder)."""

STORE_VERSION = 1
META_FILE = "store.json"
SHARD_DIR = "shards"
# Keys mark_complete adds; ignored when a store is reopened with `create`.
_STATUS_KEYS = ("complete", "summary")
# Provenance shown to people but not part of what the labels are (a teacher's AP is a float of the
# machine that measured it, its folder a path): never compared when a store is reopened.
_INFO_KEYS = ("teacher", "teacher_AP", "source_name")
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.npz$")
# A temp file older than this is a leftover of a killed writer (a live write takes seconds);
# younger ones may belong to another process writing another shard of the same store.
STALE_TEMP_SECONDS = 600.0


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


def _show(values, limit: int = 10) -> str:
    values = sorted(values)
    more = f" ... ({len(values)} in all)" if len(values) > limit else ""
    return f"{values[:limit]}{more}"


def _normalize(obj):
    """JSON round trip, so tuples/numpy values compare equal to what store.json holds."""
    return json.loads(json.dumps(to_jsonable(obj), sort_keys=True, default=str))


def _check_categories(categories, where: str) -> list[dict]:
    if not isinstance(categories, list) or not categories:
        raise StoreError(f"{where}: 'categories' must be a non-empty list of {{'id', 'name'}}, got {categories!r}")
    for i, c in enumerate(categories):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise StoreError(f"{where}: categories[{i}] must be an object with 'id' and 'name', got {c!r}")
    return categories


def _encode_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _decode_png(data: np.ndarray, offsets: np.ndarray, j: int) -> np.ndarray:
    with Image.open(io.BytesIO(data[offsets[j]:offsets[j + 1]].tobytes())) as im:
        return np.asarray(im, dtype=np.uint8)


class PseudoLabelStore:
    """A folder of pseudo labels (see the module docstring). Build with `create` or `open`."""

    def __init__(self, root: pathlib.Path, meta: dict):
        """Use `create` or `open`; ``meta`` is store.json's content, already validated."""
        self.root = root
        self.meta = meta
        self.num_images = int(meta["num_images"])
        self.shard_size = int(meta["shard_size"])
        self.num_shards = math.ceil(self.num_images / self.shard_size)
        self.categories = meta["categories"]
        self._clean_temps()

    # ------------------------------------------------------------------ create / open
    @property
    def meta_path(self) -> pathlib.Path:
        return self.root / META_FILE

    @property
    def shard_dir(self) -> pathlib.Path:
        return self.root / SHARD_DIR

    @classmethod
    def create(cls, root, meta: dict, num_images: int, shard_size: int) -> PseudoLabelStore:
        """A new store at ``root``, or the existing one when its meta matches.

        ``meta`` must hold ``"categories"`` (``[{"id", "name"}, ...]``, class ``c`` is
        ``categories[c - 1]``) plus any provenance (teacher run, min score, nms, source
        spec). An existing store whose meta (ignoring ``"complete"``/``"summary"``)
        differs in any key raises ``ValueError`` naming each differing key with both
        values.
        """
        root = pathlib.Path(root)
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 0:
            raise StoreError(f"pseudo-label store {root}: num_images must be an integer >= 0, got {num_images!r}")
        if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
            raise StoreError(f"pseudo-label store {root}: shard_size must be an integer >= 1, got {shard_size!r}")
        reserved = sorted(set(meta) & set(_STATUS_KEYS))
        if reserved:
            raise StoreError(f"pseudo-label store {root}: meta may not set {reserved}; the store writes them")
        full = dict(meta)
        layout = {"version": STORE_VERSION, "num_images": int(num_images), "shard_size": int(shard_size)}
        for key, value in layout.items():
            if key in full and full[key] != value:
                raise StoreError(f"pseudo-label store {root}: meta[{key!r}]={full[key]!r} contradicts {key}={value!r}")
            full[key] = value
        _check_categories(full.get("categories"), f"pseudo-label store {root} meta")
        full = _normalize(full)

        if (root / META_FILE).exists():
            store = cls.open(root)
            old = {k: v for k, v in store.meta.items() if k not in _STATUS_KEYS}
            diffs = [f"{k!r}: store has {old.get(k, '<absent>')!r}, new {full.get(k, '<absent>')!r}"
                     for k in sorted((set(old) | set(full)) - set(_INFO_KEYS))
                     if old.get(k, "<absent>") != full.get(k, "<absent>")]
            if diffs:
                raise StoreError(
                    f"pseudo-label store {root} was made with different settings, refusing to mix them "
                    f"(use another folder or delete this one): " + "; ".join(diffs)
                )
            return store
        (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        write_json_atomic(root / META_FILE, full)
        return cls(root, full)

    @classmethod
    def open(cls, root) -> PseudoLabelStore:
        """The existing store at ``root``; ``FileNotFoundError`` / ``ValueError`` naming store.json."""
        root = pathlib.Path(root)
        return cls(root, cls._read_meta(root / META_FILE))

    @staticmethod
    def _read_meta(path: pathlib.Path) -> dict:
        if not path.is_file():
            raise FileNotFoundError(f"no pseudo-label store here: {path} does not exist")
        try:
            meta = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{path}: not valid JSON: {e}") from e
        if not isinstance(meta, dict):
            raise StoreError(f"{path}: must hold a JSON object, got {type(meta).__name__}")
        if meta.get("version") != STORE_VERSION:
            raise StoreError(f"{path}: store version {meta.get('version')!r}, this code reads version {STORE_VERSION}")
        for key, low in (("num_images", 0), ("shard_size", 1)):
            v = meta.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise StoreError(f"{path}: {key!r} must be an integer >= {low}, got {v!r}")
        _check_categories(meta.get("categories"), str(path))
        return meta

    def _clean_temps(self) -> None:
        """Delete temp files a killed writer left in shards/ (only stale ones: see STALE_TEMP_SECONDS)."""
        if not self.shard_dir.is_dir():
            return
        now = time.time()
        for p in self.shard_dir.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                try:
                    if now - p.stat().st_mtime > STALE_TEMP_SECONDS:
                        p.unlink()
                except FileNotFoundError:  # another process cleaned it or finished its write
                    pass

    def __repr__(self) -> str:
        return (f"PseudoLabelStore({str(self.root)!r}, images={self.num_images}, "
                f"shards={len(self.done_shards())}/{self.num_shards})")

    # ------------------------------------------------------------------ shards
    def _check_shard(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.num_shards:
            raise StoreError(f"pseudo-label store {self.root}: shard {k!r} outside 0..{self.num_shards - 1}")
        return int(k)

    def shard_range(self, k: int) -> range:
        """Image indices of shard ``k``."""
        k = self._check_shard(k)
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.num_images))

    def shard_path(self, k: int) -> pathlib.Path:
        return self.shard_dir / _shard_name(self._check_shard(k))

    def done_shards(self) -> set[int]:
        """Shards whose final file exists (temp files never count)."""
        if not self.shard_dir.is_dir():
            return set()
        done = set()
        for name in os.listdir(self.shard_dir):
            m = _SHARD_RE.match(name)
            if m and int(m.group(1)) < self.num_shards:
                done.add(int(m.group(1)))
        return done

    def missing_shards(self) -> list[int]:
        """Shards still to label, sorted."""
        done = self.done_shards()
        return [k for k in range(self.num_shards) if k not in done]

    def _validate(self, k: int, labels: Sequence[ImageLabels]) -> None:
        where = f"pseudo-label store {self.root} shard {k}"
        expected = list(self.shard_range(k))
        got = [int(label.index) for label in labels]
        if got != expected:
            counts = collections.Counter(got)
            missing = set(expected) - set(counts)
            duplicate = [i for i, c in counts.items() if c > 1]
            extra = set(counts) - set(expected)
            problems = [f"{what} indices {_show(v)}" for what, v in
                        (("missing", missing), ("duplicate", duplicate), ("extra", extra)) if v]
            if not problems:
                problems = ["indices out of order"]
            raise StoreError(f"{where} needs one ImageLabels per index {expected[0]}..{expected[-1]} in order: "
                             + ", ".join(problems))
        num_classes = len(self.categories)
        for label in labels:
            what = f"{where}: image {label.index} ({label.key!r})"
            if label.classes.size and (label.classes.min() < 1 or label.classes.max() > num_classes):
                bad = sorted({int(c) for c in label.classes if not 1 <= c <= num_classes})
                raise StoreError(f"{what} has classes {bad} outside 1..{num_classes}")
            if not (np.isfinite(label.boxes).all() and np.isfinite(label.scores).all()):
                raise StoreError(f"{what} has non-finite boxes or scores")
            if label.skipped and label.boxes.size:
                raise StoreError(f"{what} is skipped ({label.skipped!r}) but has {len(label.boxes)} boxes")
            if label.mask is not None:
                mask = np.asarray(label.mask)
                if mask.shape != (label.height, label.width):
                    raise StoreError(f"{what}: mask shape {mask.shape} is not (height, width) = "
                                     f"{(label.height, label.width)}")
                if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool) or (
                        mask.size and (mask.min() < 0 or mask.max() > 255)):
                    raise StoreError(f"{what}: mask must hold integers 0..255 (uint8), got dtype {mask.dtype}")
            if label.mask_score is not None and (label.mask is None or np.shape(label.mask_score) != np.shape(label.mask)
                                                 or np.asarray(label.mask_score).dtype != np.uint8):
                raise StoreError(f"{what}: mask_score must be uint8 shaped like its mask")

    def write_shard(self, k: int, labels: Sequence[ImageLabels]) -> None:
        """Write shard ``k`` atomically: exactly one `ImageLabels` per index of ``shard_range(k)``,
        in order, classes in ``1..len(categories)``. Rewriting a shard replaces it."""
        k = self._check_shard(k)
        labels = list(labels)
        self._validate(k, labels)
        arrays = {
            "index": np.array([label.index for label in labels], np.int64),
            "key": np.array([label.key for label in labels], dtype=str),
            "height": np.array([label.height for label in labels], np.int32),
            "width": np.array([label.width for label in labels], np.int32),
            "skipped": np.array([label.skipped for label in labels], dtype=str),
            "num_boxes": np.array([len(label.boxes) for label in labels], np.int32),
            "boxes": np.concatenate([label.boxes for label in labels]).reshape(-1, 4).astype(np.float32),
            "classes": np.concatenate([label.classes for label in labels]).astype(np.int32),
            "scores": np.concatenate([label.scores for label in labels]).astype(np.float32),
        }
        if any(label.content for label in labels):
            arrays["content"] = np.array([label.content for label in labels], dtype=str)
        if any(label.mask is not None for label in labels):
            pngs = [b"" if label.mask is None else _encode_png(np.asarray(label.mask).astype(np.uint8))
                    for label in labels]
            arrays["has_mask"] = np.array([label.mask is not None for label in labels], bool)
            arrays["mask_offsets"] = np.concatenate([[0], np.cumsum([len(p) for p in pngs])]).astype(np.int64)
            arrays["mask_png"] = np.frombuffer(b"".join(pngs), np.uint8)
        if any(label.mask_score is not None for label in labels):
            pngs = [b"" if label.mask_score is None else _encode_png(label.mask_score) for label in labels]
            arrays["score_offsets"] = np.concatenate([[0], np.cumsum([len(p) for p in pngs])]).astype(np.int64)
            arrays["score_png"] = np.frombuffer(b"".join(pngs), np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        write_bytes_atomic(self.shard_path(k), buf.getvalue())

    def _read_arrays(self, k: int) -> dict:
        path = self.shard_path(k)
        if not path.is_file():
            raise FileNotFoundError(f"pseudo-label store {self.root}: shard {k} not written yet ({path})")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise StoreError(f"{path}: cannot read shard: {e}") from e
        expected = np.arange(self.shard_range(k).start, self.shard_range(k).stop)
        if not np.array_equal(arrays.get("index"), expected):
            raise StoreError(f"{path}: holds indices {_show(np.asarray(arrays.get('index', [])).tolist())}, "
                             f"expected {expected[0]}..{expected[-1]}")
        return arrays

    def read_shard(self, k: int) -> list[ImageLabels]:
        """Shard ``k``'s labels, in index order (``FileNotFoundError`` when not written)."""
        a = self._read_arrays(k)
        ends = np.cumsum(a["num_boxes"])
        starts = ends - a["num_boxes"]
        out = []
        for j in range(len(a["index"])):
            s, e = int(starts[j]), int(ends[j])
            mask = score = None
            if "has_mask" in a and a["has_mask"][j]:
                mask = _decode_png(a["mask_png"], a["mask_offsets"], j)
                if "score_png" in a and a["score_offsets"][j + 1] > a["score_offsets"][j]:
                    score = _decode_png(a["score_png"], a["score_offsets"], j)
            out.append(ImageLabels(
                index=int(a["index"][j]), key=str(a["key"][j]), height=int(a["height"][j]),
                width=int(a["width"][j]), boxes=a["boxes"][s:e], classes=a["classes"][s:e],
                scores=a["scores"][s:e], skipped=str(a["skipped"][j]), mask=mask, mask_score=score,
                content=str(a["content"][j]) if "content" in a else "",
            ))
        return out

    # ------------------------------------------------------------------ completion
    @property
    def complete(self) -> bool:
        """All shards written and ``mark_complete`` has run (re-reads store.json)."""
        if not self._read_meta(self.meta_path).get("complete"):
            return False
        return not self.missing_shards()

    def _require_shards(self, action: str) -> None:
        missing = self.missing_shards()
        if missing:
            raise StoreError(f"pseudo-label store {self.root}: cannot {action}, {len(missing)} of "
                             f"{self.num_shards} shards missing: {_show(missing)}; rerun the labelling "
                             "to fill them (it resumes)")

    def mark_complete(self, extra: dict | None = None) -> dict:
        """Check every shard is present, write ``"complete": true`` and ``summary()`` (plus
        `extra`, e.g. the source's own counts) into store.json."""
        self._require_shards("mark it complete")
        summary = {**self.summary(), **(extra or {})}
        meta = {**self._read_meta(self.meta_path), "complete": True, "summary": summary}
        write_json_atomic(self.meta_path, meta)
        self.meta = _normalize(meta)
        return summary

    def iter_labels(self, min_score: float = 0.0, allow_partial: bool = False) -> Iterator[ImageLabels]:
        """Images in index order, shard by shard, keeping boxes with score >= ``min_score``.

        An incomplete store raises ``ValueError`` unless ``allow_partial`` (then the
        written shards only are read)."""
        if not allow_partial:
            if self.missing_shards():
                self._require_shards("load it")
            if not self.complete:
                raise StoreError(f"pseudo-label store {self.root}: all shards are written but the store is "
                                 "not marked complete; call mark_complete() (or pass allow_partial=True)")
        for k in sorted(self.done_shards()):
            for label in self.read_shard(k):
                yield label.above(min_score)

    def load(self, min_score: float = 0.0, allow_partial: bool = False) -> list[ImageLabels]:
        """``list(iter_labels(min_score, allow_partial))``."""
        return list(self.iter_labels(min_score, allow_partial))

    def summary(self, min_score: float = 0.0) -> dict:
        """Counts over the written shards, boxes with score >= ``min_score``.

        ``images`` (skipped included), ``skipped``, ``skipped_reasons`` (by the text before
        the first ``":"`` of ``skipped``), ``images_with_boxes``, ``boxes``,
        ``boxes_per_image`` (boxes / non-skipped images), ``per_class`` (category name ->
        boxes, every category listed), ``min_score``, ``shards_written``, ``num_shards``.
        """
        images = skipped = with_boxes = boxes = 0
        reasons: collections.Counter = collections.Counter()
        per_class = np.zeros(len(self.categories) + 1, np.int64)
        done = sorted(self.done_shards())
        for k in done:
            a = self._read_arrays(k)
            images += len(a["index"])
            for reason in a["skipped"]:
                if reason:
                    skipped += 1
                    reasons[str(reason).split(":", 1)[0].strip()] += 1
            keep = a["scores"] >= min_score
            owner = np.repeat(np.arange(len(a["index"])), a["num_boxes"])
            with_boxes += len(np.unique(owner[keep]))
            boxes += int(keep.sum())
            per_class += np.bincount(a["classes"][keep], minlength=len(per_class))
        labelled = images - skipped
        return {
            "images": images,
            "skipped": skipped,
            "skipped_reasons": dict(sorted(reasons.items())),
            "images_with_boxes": with_boxes,
            "boxes": boxes,
            "boxes_per_image": boxes / labelled if labelled else 0.0,
            "per_class": {c["name"]: int(per_class[i + 1]) for i, c in enumerate(self.categories)},
            "min_score": float(min_score),
            "shards_written": len(done),
            "num_shards": self.num_shards,
        }

    # ------------------------------------------------------------------ export
    def export_coco(self, path, min_score: float = SelfTrainParams().score_threshold,
                    allow_partial: bool = False) -> dict:
        """Write the labels scoring >= ``min_score`` as a COCO-format dataset (atomically) and return it.

        Images are ``{"id": index + 1, "file_name": key, "height", "width"}`` (skipped
        images left out; for a world scenes pool the ids equal the hidden ground truth's);
        annotations carry ``bbox`` ``[x, y, w, h]``, ``area`` = w * h, ``score``,
        ``iscrowd`` 0 and ``category_id`` = ``categories[c - 1]["id"]``, so the file loads
        with pycocotools ``COCO`` and its annotations with ``COCO.loadRes``. Boxes of zero
        or negative width or height (a teacher box clipped to the image can collapse) are
        left out. ``info`` is the store's provenance (its own ``min_score`` as
        ``store_min_score``) plus ``min_score`` and ``zero_area_boxes_dropped``.

        Raises ``ValueError`` when ``min_score`` is below the store's ``min_score``: the store
        holds no box under its own, so the export could not be what it says.
        """
        floor = self.meta.get("min_score")
        if isinstance(floor, (int, float)) and min_score < floor:
            raise StoreError(f"pseudo-label store {self.root} kept boxes scoring >= {floor:g} only; an export at "
                             f"min_score {min_score:g} would say it holds boxes it never kept: export at >= {floor:g}")
        cat_ids = [c["id"] for c in self.categories]
        images, annotations = [], []
        dropped = 0
        for label in self.iter_labels(min_score, allow_partial):
            if label.skipped:
                continue
            image_id = label.index + 1
            images.append({"id": image_id, "file_name": label.key, "height": label.height, "width": label.width})
            for (ymin, xmin, ymax, xmax), c, s in zip(label.boxes.tolist(), label.classes.tolist(),
                                                      label.scores.tolist()):
                w, h = xmax - xmin, ymax - ymin
                if not (w > 0 and h > 0):
                    dropped += 1
                    continue
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[c - 1],
                                    "bbox": [xmin, ymin, w, h], "area": w * h, "score": s, "iscrowd": 0})
        info = {k: v for k, v in self.meta.items() if k not in ("categories", "summary", "min_score")}
        if floor is not None:
            info["store_min_score"] = floor
        info.update(min_score=float(min_score), zero_area_boxes_dropped=dropped, store=str(self.root))
        dataset = {"info": info, "images": images, "annotations": annotations,
                   "categories": [dict(c) for c in self.categories]}
        write_json_atomic(path, dataset)
        return dataset


def check_export_thresholds(min_score: float, threshold: float) -> None:
    """`stlib pseudo-label`'s ``--min-score`` (the lowest score the store keeps) against its
    ``--threshold`` (the score its counts and COCO export are for).

    Raises `ParamsError` (one line) when ``min_score > threshold``: the store would hold no box
    in [threshold, min_score), so "N boxes >= threshold" would count the boxes >= min_score.
    """
    if min_score > threshold:
        raise ParamsError(f"--min-score {min_score:g} is above --threshold {threshold:g}: the store keeps no box "
                          f"below {min_score:g}, so its counts and COCO export at {threshold:g} would be the boxes "
                          f">= {min_score:g}; give --threshold >= {min_score:g} or --min-score <= {threshold:g}")
