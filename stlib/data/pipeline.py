"""Host-side input pipeline: records -> decoded, resized, padded fixed-shape numpy batches.

Every training batch is a pure function of (seed, step): the example order is a seeded
permutation per epoch, so a resumed run sees exactly the batches an uninterrupted run
would have seen. On several hosts each process builds its own slice of the global batch
(`process_index`, `process_count`); `stlib.train.sharding` assembles the global array.

Images are resized so their long side equals the output size (aspect kept) and padded
bottom/right; the on-device augmentation (`stlib.augment`) does the rest.

A run's input is `TrainBatches`: batches built by several threads side by side (decoding a
JPEG and resizing it release Python's lock, so threads use the host's cores) and handed over
in step order. Its position is the step: `input_state` is what a checkpoint keeps with it, so
a resumed run can check that it will see the batches an uninterrupted one would have seen.
Nothing holds a split's images unless they fit `CACHE_BYTES` decoded (the mini world does).
"""
from __future__ import annotations

import collections
import hashlib
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
from PIL import Image

from stlib.config import ParamsError
from stlib.data.coco import DataError

CACHE_BYTES = 4 * 2 ** 30  # decoded-image cache limit for cache_images=None
WORKERS_ENV = "STLIB_INPUT_WORKERS"  # threads building training batches; unset = `input_workers()`'s choice


def resize_long_side(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resizes uint8 [H,W,3] so max(H,W) == size (bilinear); returns (image, scale)."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale == 1.0:
        return image, 1.0
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR)), scale


class IndexedBatches:
    """Training and evaluation batches over `self.indices` (positions in a source) from
    `self.example(i)` (a dict of fixed-shape arrays, None for a corrupt image).

    The habits every stlib data class shares: a training batch is a pure function of
    (seed, step) (a seeded permutation per epoch), each process builds its slice of the global
    batch, a corrupt image is replaced by the next example in the order, and evaluation visits
    every example once in fixed-size batches whose padding has `example_valid` False.
    """

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        # dict.setdefault is atomic, so threads building batches side by side share one lock
        lock = self.__dict__.setdefault("_perm_lock", threading.Lock())
        with lock:
            cache = self.__dict__.setdefault("_perm_cache", {})
            if key not in cache:  # two epochs' orders cached: threads may straddle an epoch's end
                if len(cache) >= 2:
                    del cache[next(iter(cache))]
                cache[key] = np.random.default_rng([seed, epoch]).permutation(self.indices)
            return cache[key]

    def example_ids(self) -> np.ndarray:
        """What each position in `self.indices` is (image ids where the source has records), for
        `input_state`: the same ids in the same order give the same batches."""
        records = getattr(getattr(self, "source", None), "records", None)
        if records is not None:
            return np.asarray([records[int(i)].image_id for i in self.indices], np.int64)
        return np.asarray(self.indices, np.int64)

    def train_batch(self, step: int, batch_size: int, seed: int,
                    process_index: int = 0, process_count: int = 1) -> dict:
        """The batch for `step` (this process's slice, ``batch_size // process_count`` examples),
        a pure function of (seed, step)."""
        per_host = batch_size // process_count
        n = len(self.indices)
        pos = step * batch_size + process_index * per_host
        out = []
        while len(out) < per_host:
            epoch, j = divmod(pos, n)
            ex = self.example(int(self._permutation(seed, epoch)[j]))
            pos += 1
            if ex is not None:
                out.append(ex)
        return stack(out)

    def _blank_example(self) -> dict:
        """An all-zero example (example_valid False) shaped like the first readable one."""
        for i in self.indices:
            ex = self.example(int(i))
            if ex is not None:
                return {k: np.zeros_like(v) for k, v in ex.items()}
        raise ValueError(f"{getattr(self.source, 'name', 'data')}: no readable example to pad with")

    def eval_batches(self, batch_size: int, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
        """Every example once, in order, in fixed-size batches; padding has example_valid False
        (and zeros elsewhere)."""
        per_host = batch_size // process_count
        idx = list(self.indices)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start + process_index * per_host: start + (process_index + 1) * per_host]
            exs = [e for e in (self.example(int(i)) for i in chunk) if e is not None]
            pad = {k: np.zeros_like(v) for k, v in exs[0].items()} if exs else self._blank_example()
            exs += [pad] * (per_host - len(exs))
            yield stack(exs)


class DetectionData(IndexedBatches):
    """Fixed-shape examples and batches from a `DetectionSource`.

    Args:
      source: a `stlib.data.coco.DetectionSource` (folder, embedded world, or tfds).
      image_size: square output size S.
      max_boxes: boxes per example after padding (extra boxes are dropped and counted).
      cache_images: decode every image once and keep it in memory; None (default) decides by size:
        cached when the decoded canvases fit in `CACHE_BYTES` (the mini world does, COCO does not).
      workers: decoding threads.
      with_masks: add the semantic `mask` (255 = ignore) where the source has mask files; the
        segmentation track needs it, detection training does not pay for it.
    """

    def __init__(self, source, image_size: int, max_boxes: int, cache_images: bool | None = None, workers: int = 4,
                 with_masks: bool = False):
        self.source = source
        self.with_masks = with_masks
        self.image_size = image_size
        self.max_boxes = max_boxes
        self.stats = {"boxes_truncated": 0}  # corrupt images are counted by the source
        self._stats_lock = threading.Lock()  # batches are built by several threads
        self._cache: dict[int, np.ndarray] = {}
        indices = list(range(len(source.records)))
        if cache_images is None:
            cache_images = len(indices) * image_size * image_size * 3 <= CACHE_BYTES
        if cache_images:
            with ThreadPoolExecutor(workers) as pool:
                decoded = list(pool.map(self._decode_or_none, indices))
            for i, img in zip(indices, decoded):
                if img is not None:
                    self._cache[i] = img
            indices = [i for i in indices if i in self._cache]
        self.indices = np.asarray(indices, np.int64)
        if len(self.indices) == 0:
            raise ValueError(f"{source.name}: no usable images ({source.stats.get('images_corrupt', 0)} corrupt)")

    def __len__(self):
        return len(self.indices)

    def _decode_or_none(self, i: int):
        img = self.source.load_image_or_none(i)  # counts a corrupt image in source.stats
        if img is None:
            return None
        return resize_long_side(img, self.image_size)[0]

    def _image(self, i: int):
        if i in self._cache:
            return self._cache[i]
        return self._decode_or_none(i)

    def example(self, i: int) -> dict | None:
        """One fixed-shape example for record index `i`, or None if its image is corrupt."""
        rec = self.source.records[i]
        img = self._image(i)
        if img is None:
            return None
        s, m = self.image_size, self.max_boxes
        scale = img.shape[0] / rec.height
        canvas = np.zeros((s, s, 3), np.uint8)
        canvas[: img.shape[0], : img.shape[1]] = img
        n = len(rec.boxes)
        if n > m:
            with self._stats_lock:
                self.stats["boxes_truncated"] += n - m
            n = m
        boxes = np.zeros((m, 4), np.float32)
        classes = np.zeros((m,), np.int32)
        valid = np.zeros((m,), bool)
        boxes[:n] = rec.boxes[:n] * scale
        classes[:n] = rec.classes[:n]
        valid[:n] = True
        ex = {"image": canvas, "image_hw": np.array(img.shape[:2], np.int32), "boxes": boxes,
              "classes": classes, "valid": valid, "image_id": np.int64(rec.image_id),
              "scale": np.float32(scale), "example_valid": np.bool_(True)}
        if rec.scores is not None:   # soft pseudo labels (stlib.pseudo.data): each box's target value
            scores = np.zeros((m,), np.float32)
            scores[:n] = rec.scores[:n]
            ex["scores"] = scores
        if self.with_masks and rec.mask_file:
            mask = np.full((s, s), 255, np.uint8)
            sem = np.asarray(Image.open(rec.mask_file).resize(img.shape[1::-1], Image.NEAREST))
            mask[: img.shape[0], : img.shape[1]] = sem
            ex["mask"] = mask
        return ex


def input_workers(environ=os.environ) -> int:
    """Threads that build training batches: `STLIB_INPUT_WORKERS`, else half the host's cores
    (at least 1, at most 32). Our choice: on a CPU the other half runs the train step; on an
    accelerator host set it to the cores that are free (benchmarks/RESULTS.md: images/s per core)."""
    value = environ.get(WORKERS_ENV, "")
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ParamsError(f"{WORKERS_ENV}={value!r}: a positive number of threads")
        return n
    return max(1, min(32, (os.cpu_count() or 2) // 2))


def _ids_digest(data) -> dict:
    ids = data.example_ids() if hasattr(data, "example_ids") else np.arange(len(data), dtype=np.int64)
    return {"examples": int(len(ids)), "ids": hashlib.sha256(np.ascontiguousarray(ids, np.int64).tobytes()).hexdigest()[:16]}


def input_state(data, step: int, batch_size: int, seed: int) -> dict:
    """The training input's position (the next step) and what its batches are a function of:
    seed, global batch size and, per stream, the examples in order (count and a digest of their
    ids). Saved with each checkpoint (`stlib.train.checkpoints`); a resume whose input differs is
    refused by `check_input_state`. The process count is not in it: a global batch is the same
    however many processes build its slices."""
    streams = getattr(data, "streams", None)
    described = ({name: {"examples_per_batch": int(data.sizes[name]), **_ids_digest(d)} for name, d in streams.items()}
                 if streams is not None else {"data": _ids_digest(data)})
    return {"next_step": int(step), "seed": int(seed), "batch_size": int(batch_size), "streams": described}


def check_input_state(saved: dict, current: dict, where: str) -> None:
    """Raises `DataError` naming what changed when `current` (this run's input at the step it resumes
    from) would not give the batches of `saved` (the checkpoint's)."""
    changed = [f"{k} {saved.get(k)} -> {current.get(k)}" for k in ("next_step", "seed", "batch_size")
               if saved.get(k) != current.get(k)]
    s_streams, c_streams = saved.get("streams", {}), current.get("streams", {})
    if set(s_streams) != set(c_streams):
        changed.append(f"streams {sorted(s_streams)} -> {sorted(c_streams)}")
    else:
        for name in s_streams:
            for k, v in s_streams[name].items():
                if c_streams[name].get(k) != v:
                    changed.append(f"{name}.{k} {v} -> {c_streams[name].get(k)}")
    if changed:
        raise DataError(
            f"{where}: the training input differs from the one its checkpoint was trained on "
            f"({'; '.join(map(str, changed))}), so a resumed run would not see the batches an uninterrupted "
            "one sees. Restore the data, or start a new run (delete the run folder).")


class TrainBatches:
    """A run's training batches `start..stop-1` from `data` (anything with `train_batch(step,
    batch_size, seed, process_index, process_count)`), this process's slice of each.

    `workers` threads build batches side by side, up to `ahead` steps beyond the one handed over,
    and they are yielded in step order. Every batch is a pure function of (seed, step), so the
    stream equals a serial one and a stream started at step k continues one stopped before k.
    """

    def __init__(self, data, batch_size: int, seed: int, start: int, stop: int, process_index: int = 0,
                 process_count: int = 1, workers: int | None = None, ahead: int | None = None):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.start, self.stop = start, stop
        self.process_index, self.process_count = process_index, process_count
        self.workers = workers or input_workers()
        self.ahead = max(2, ahead or 2 * self.workers)

    def _batch(self, step: int) -> dict:
        return self.data.train_batch(step, self.batch_size, self.seed, self.process_index, self.process_count)

    def __iter__(self) -> Iterator[dict]:
        if self.workers == 1:  # no pool: the caller's thread (e.g. `prefetch`'s) builds them
            for step in range(self.start, self.stop):
                yield self._batch(step)
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="stlib-input")
        pending: collections.deque = collections.deque()
        nxt = self.start
        try:
            while pending or nxt < self.stop:
                while nxt < self.stop and len(pending) < self.ahead:
                    pending.append(pool.submit(self._batch, nxt))
                    nxt += 1
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)


def stack(examples: list[dict]) -> dict:
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def prefetch(iterator, size: int = 2):
    """Runs `iterator` in a background thread, `size` items ahead (overlaps host work with device work)."""
    q: queue.Queue = queue.Queue(maxsize=size)
    sentinel = object()

    def worker():
        try:
            for item in iterator:
                q.put(item)
        except BaseException as e:  # surfaced in the consumer
            q.put(e)
        q.put(sentinel)

    threading.Thread(target=worker, daemon=True).start()
    while True:
        item = q.get()
        if item is sentinel:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
