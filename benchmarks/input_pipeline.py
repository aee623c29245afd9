#!/usr/bin/env python
"""The training input at paper size: decoded, resized and padded images/s per core (issue 20).

A COCO-format folder of synthetic photographs (JPEG, quality 90, 640x480 and 480x640: smooth
colour fields, shapes and sensor noise, so a file is about the size of a COCO one: 18 GB / 118k
images = 155 kB) is made in a temporary folder, then each pipeline turns it, `--epochs` times over,
into 640x640 batches of 8, with the host work
stlib does (decode, long side to 640, pad; the augmentation proper runs on the device):

- ``stlib``: `stlib.data.pipeline.TrainBatches` over `DetectionData` (boxes and all), W threads;
- ``tf.data``: read, ``tf.io.decode_jpeg``, ``tf.image.resize`` and pad, ``num_parallel_calls`` W
  on a private pool of W threads;
- ``grain threads`` / ``grain processes`` (when grain is installed): grain's ``MapDataset`` over the
  same `DetectionData.train_batch`, with W threads (``ReadOptions``) or W worker processes
  (``mp_prefetch``).

Each is timed over the whole folder after W warm-up batches; images/s per core is images/s / W
with W no more than the cores. ``GIL share`` is the share of time one stlib decoding thread
holds Python's lock: a pure-Python probe thread slows by that much while it runs, and it bounds
how many cores threads can use (about 1 / share).

    python benchmarks/input_pipeline.py                # 256 images, W = 1 and every core
    python benchmarks/input_pipeline.py --write        # ... and a section in benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.conv_grad import write_section  # noqa: E402
from stlib.data.coco import CocoSource  # noqa: E402
from stlib.data.pipeline import DetectionData, TrainBatches  # noqa: E402
from stlib.io import machine  # noqa: E402

RESULTS = REPO / "benchmarks/RESULTS.md"
HEADING = "## Training input at 640 px (`benchmarks/input_pipeline.py`)"
BATCH = 8


def make_folder(root: Path, n: int, long_side: int = 640, seed: int = 0) -> tuple[Path, float]:
    """A COCO-format folder of `n` synthetic photographs; returns (folder, mean JPEG kB)."""
    from PIL import Image, ImageDraw, ImageFilter
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns, sizes = [], [], []
    short = long_side * 3 // 4
    for i in range(n):
        h, w = (short, long_side) if i % 2 == 0 else (long_side, short)
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(field)
        for k in range(6):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if k % 2 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + k % 3,
                         "bbox": [x0, y0, min(x1, w - 1) - x0, min(y1, h - 1) - y0], "area": 1.0, "iscrowd": 0})
        field = field.filter(ImageFilter.GaussianBlur(1.0))
        noisy = np.clip(np.asarray(field, np.int16) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        path = root / "images" / f"{i:06d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        sizes.append(path.stat().st_size)
        images.append({"id": i + 1, "file_name": path.name, "height": h, "width": w})
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    (root / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root, float(np.mean(sizes)) / 1000


def _timed(batches, warm: int) -> float:
    """images/s over the batches after the first `warm` (pools, worker processes, first reads)."""
    it = iter(batches)
    for _ in range(warm):
        next(it)
    t0, seen = time.perf_counter(), 0
    for b in it:
        seen += len(b["image"]) if isinstance(b, dict) else len(b)
    return seen / (time.perf_counter() - t0)


def _data(folder: Path, size: int) -> DetectionData:
    return DetectionData(CocoSource(folder / "train.json", folder / "images"), size, max_boxes=100, cache_images=False)


def stlib_rate(folder: Path, n: int, size: int, workers: int) -> float:
    return _timed(TrainBatches(_data(folder, size), BATCH, 0, 0, n // BATCH, workers=workers), workers)


EPOCHS = 3


def tfdata_rate(folder: Path, n: int, size: int, workers: int) -> float:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    files = sorted(str(p) for p in (folder / "images").glob("*.jpg"))
    files = (files * (n // len(files) + 1))[:n]

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        new = tf.cast(tf.round(hw * (size / tf.reduce_max(hw))), tf.int32)
        image = tf.cond(tf.reduce_all(tf.cast(new, tf.float32) == hw), lambda: image,   # no resize at scale 1,
                        lambda: tf.cast(tf.image.resize(image, new, method="bilinear"), tf.uint8))  # as stlib
        return tf.image.pad_to_bounding_box(image, 0, 0, size, size)

    options = tf.data.Options()
    options.threading.private_threadpool_size = workers
    options.threading.max_intra_op_parallelism = 1
    ds = (tf.data.Dataset.from_tensor_slices(files).map(load, num_parallel_calls=workers, deterministic=True)
          .batch(BATCH).prefetch(2).with_options(options))
    return _timed(ds.as_numpy_iterator(), workers)


class _Batches:
    """`DetectionData.train_batch` by step, as a grain random-access source (picklable)."""

    def __init__(self, folder: Path, size: int, steps: int):
        self.folder, self.size, self.steps, self._data = folder, size, steps, None

    def __len__(self):
        return self.steps

    def __getitem__(self, step):
        if self._data is None:
            self._data = _data(self.folder, self.size)
        return self._data.train_batch(int(step), BATCH, 0)

    def __getstate__(self):
        return {"folder": self.folder, "size": self.size, "steps": self.steps, "_data": None}


def grain_rate(folder: Path, n: int, size: int, workers: int, processes: bool) -> float | None:
    try:
        import grain
    except ImportError:
        return None
    ds = grain.MapDataset.source(_Batches(folder, size, n // BATCH))
    if processes:
        from absl import flags  # grain's worker processes read absl flags, parsed only by absl's app.run
        if not flags.FLAGS.is_parsed():
            flags.FLAGS(sys.argv[:1], known_only=True)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers))
    else:
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers))
    return _timed(it, workers)


def gil_share(folder: Path, size: int, seconds: float = 2.0) -> tuple[float, float]:
    """How much a thread decoding with stlib and a pure-Python probe thread slow each other (each
    has a core): (probe's slowdown = the decoder's share of time holding the GIL, the decoder's
    slowdown = its waits for the GIL)."""
    data = _data(folder, size)

    def probe(done) -> float:
        count, t0 = 0, time.perf_counter()
        while not done.is_set():
            for _ in range(1000):
                count += 1
        return count / (time.perf_counter() - t0)

    def decode(done) -> float:
        step, t0 = 0, time.perf_counter()
        while not done.is_set():
            data.train_batch(step, 1, 0)
            step += 1
        return step / (time.perf_counter() - t0)

    def run(*fns) -> list[float]:
        done, out = threading.Event(), [None] * len(fns)
        threads = [threading.Thread(target=lambda i=i, f=f: out.__setitem__(i, f(done))) for i, f in enumerate(fns)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        done.set()
        for t in threads:
            t.join()
        return out

    held, waited = [], []
    for _ in range(3):   # the median of three
        (p_alone,), (d_alone,) = run(probe), run(decode)
        p_both, d_both = run(probe, decode)
        held.append(max(0.0, 1 - p_both / p_alone))
        waited.append(max(0.0, 1 - d_both / d_alone))
    return float(np.median(held)), float(np.median(waited))


def measure(n: int, size: int, workers: list[int], which: list[str], epochs: int = EPOCHS,
            gil_seconds: float = 2.0) -> tuple[list[tuple], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder, kb = make_folder(Path(tmp), n, size)
        made = time.perf_counter() - t0
        n *= epochs   # images read per measurement
        rows = []
        for w in workers:
            for name in which:
                if name == "stlib":
                    rate = stlib_rate(folder, n, size, w)
                elif name == "tf.data":
                    rate = tfdata_rate(folder, n, size, w)
                else:
                    rate = grain_rate(folder, n, size, w, processes=name == "grain processes")
                if rate is not None:
                    rows.append((name, w, rate))
                    print(f"  {name:16s} W={w}: {rate:7.1f} images/s, {rate / w:6.1f} per core", flush=True)
        share = gil_share(folder, size, gil_seconds) if (os.cpu_count() or 1) >= 2 and gil_seconds > 0 else None
    return rows, {"jpeg_kB": kb, "images": n // epochs, "epochs": epochs, "size": size, "gil": share,
                  "made_s": made}


def _versions() -> str:
    import importlib.metadata as md
    out = []
    for dist in ("pillow", "tensorflow", "tensorflow-cpu", "grain"):
        try:
            out.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(out)


def render(rows: list[tuple], info: dict, note: str = "") -> str:
    m = machine()
    out = [f"### {m['date']} · {m['cpu']} ({m['cores']} cores, {m.get('simd', '?')})", "",
           f"{info['images']} synthetic JPEGs of {info['jpeg_kB']:.0f} kB on average ({info['size']} px long side), "
           f"read {info['epochs']} times, to {info['size']}x{info['size']} batches of {BATCH} "
           f"({_versions()}). {note}".rstrip(), "",
           "| pipeline | W | images/s | images/s per core |", "|---|---|---|---|"]
    out += [f"| {name} | {w} | {rate:.1f} | {rate / w:.1f} |" for name, w, rate in rows]
    if info["gil"] is not None:
        held, waited = info["gil"]
        cap = f"a ceiling near {1 / held:.0f} cores" if held > 0.01 else "no ceiling visible here"
        out += ["", f"One stlib decoding thread beside a pure-Python thread (a core each; medians of 3): the Python "
                    f"thread slows by {held:.1%} (the decoder's share of time holding the GIL: {cap} for "
                    f"threads), the decoder by {waited:.1%} (its waits for the GIL)."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=640, help="long side of the images and the square output")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="times each pipeline reads the folder")
    ap.add_argument("--gil-seconds", type=float, default=2.0, help="each GIL probe's length (9 probes; 0 skips)")
    ap.add_argument("--workers", default="", help="comma-separated W values (default: 1 and every core)")
    ap.add_argument("--pipelines", default="stlib,tf.data,grain threads,grain processes")
    ap.add_argument("--note", default="", help="what else ran on the machine, for the section")
    ap.add_argument("--write", action="store_true", help="write a section into --results")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    workers = [int(w) for w in args.workers.split(",")] if args.workers else sorted({1, cores})
    which = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    print(f"input pipelines, {args.images} images at {args.size} px, W in {workers} "
          f"({datetime.datetime.now():%H:%M})", flush=True)
    rows, info = measure(args.images, args.size, workers, which, args.epochs, args.gil_seconds)
    text = render(rows, info, args.note)
    print(text)
    if args.write:
        write_section(text.rstrip("\n"), args.results, HEADING, "input_pipeline.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
