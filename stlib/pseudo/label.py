"""`make_pseudo_labels`: a teacher detection run labels an unlabeled source into a store.

Sec. 3.2: the teacher, trained on the human labels, predicts boxes on the unlabeled
images; boxes scoring at least 0.5 become the student's pseudo labels. Here the teacher's
best checkpoint runs batched inference on the device mesh with exactly the
post-processing of evaluation (`stlib.eval.postprocess`, NMS or Soft-NMS), boxes are
mapped back to the original image pixels, and every box down to `min_score` is kept in a
`PseudoLabelStore` (the training threshold is applied when the student reads it, so
quality can be measured at any threshold without labelling again).

Labelling goes shard by shard; a shard is written atomically when it is complete, so a
killed run resumes at the first missing shard and the finished store holds every image
of the source exactly once. Unreadable images are recorded as skipped, with the reason,
and counted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from stlib import config as cfg
from stlib.data.pipeline import prefetch, resize_long_side
from stlib.eval.postprocess import NMS_METHODS
from stlib.progress import Reporter
from stlib.pseudo.labels import ImageLabels, pixel_digest
from stlib.pseudo.sources import parse_unlabeled
from stlib.pseudo.store import PseudoLabelStore
from stlib.pseudo.teacher import TeacherRun
from stlib.tasks.detection import Detector
from stlib.train import sharding

_DEFAULTS = cfg.SelfTrainParams()   # store_min_score and nms: written once, in stlib.config
DEFAULT_SHARD_SIZE = 500  # our choice: ~1 s of mini inference per shard, 2,400 shards for ImageNet


def store_key(teacher: TeacherRun, unlabeled: str, min_score: float, nms: str, max_images: int,
              source_identity: str) -> dict:
    """What a store's content depends on (hashed into its folder name): the teacher's weights (its
    checkpoint digest, not its name: a teacher re-made on another machine labels into a new store),
    the unlabeled images (names and sizes) and the labelling settings."""
    key = {"teacher": teacher.run_id, "teacher_digest": teacher.digest, "unlabeled": unlabeled,
           "source_identity": source_identity, "min_score": float(min_score), "nms": nms,
           "max_images": int(max_images)}
    if nms == "soft_nms":
        key["soft_nms_sigma"] = float(teacher.params.postprocess.soft_nms_sigma)
    return key


def default_store_dir(teacher: TeacherRun, unlabeled: str, min_score: float, nms: str, max_images: int,
                      source_identity: str | None = None) -> Path:
    """<outputs>/pseudo_labels/<teacher run id>-<hash>: beside the teacher's runs folder (in the
    run cache), addressed by everything the labels depend on (`store_key`)."""
    if source_identity is None:
        tp = teacher.params
        source_identity = parse_unlabeled(unlabeled, tp.data.world_scale, tp.data.world_seed,
                                          tp.data.tfds_data_dir).identity()
    key = store_key(teacher, unlabeled, min_score, nms, max_images, source_identity)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return teacher.dir.parent.parent / "pseudo_labels" / f"{teacher.run_id}-{digest}"


def store_dir_for(params: cfg.Params) -> Path:
    """The store a self-training run's params read (`self_train.*`)."""
    st = params.self_train
    return default_store_dir(TeacherRun(st.teacher), st.unlabeled, st.store_min_score, st.nms, st.max_images)


def _fault_point(written: int, shards_dir: Path) -> None:
    """Test hook: with STLIB_KILL_AFTER_SHARDS=N the process leaves a half-written temp file
    and kills itself with SIGKILL after writing N shards (a real, uncatchable interruption)."""
    n = os.environ.get("STLIB_KILL_AFTER_SHARDS")
    if n is not None and written >= int(n):
        (shards_dir / ".shard-partial.tmp").write_bytes(b"PK\x03\x04 half a shard")
        os.kill(os.getpid(), signal.SIGKILL)


def _canvas_batch(items: list, image_size: int, batch_size: int) -> dict:
    """[(index, image or None)] -> a padded predict batch (unreadable / padding rows invalid)."""
    s = image_size
    batch = {"image": np.zeros((batch_size, s, s, 3), np.uint8), "image_hw": np.zeros((batch_size, 2), np.int32),
             "image_id": np.zeros((batch_size,), np.int64), "scale": np.ones((batch_size,), np.float32),
             "example_valid": np.zeros((batch_size,), bool)}
    for row, (i, img) in enumerate(items):
        batch["image_id"][row] = i + 1
        if img is None:
            continue
        small, scale = resize_long_side(img, s)
        batch["image"][row, : small.shape[0], : small.shape[1]] = small
        batch["image_hw"][row] = small.shape[:2]
        batch["scale"][row] = scale
        batch["example_valid"][row] = True
    return batch


def _chunks(seq, n: int):
    seq = list(seq)
    return [seq[b: b + n] for b in range(0, len(seq), n)]


def _row_facts(items: list, batch: dict, rows: int) -> dict:
    """What the shard keeps of this process's images, one row each (padding rows unreadable):
    original height and width, readable, the canvas scale, and the content digest's 8 bytes."""
    facts = {"hw": np.zeros((rows, 2), np.int32), "readable": np.zeros((rows,), bool),
             "scale": batch["scale"].copy(), "digest": np.zeros((rows, 8), np.uint8)}
    for row, (_, img) in enumerate(items):
        if img is not None:
            facts["hw"][row] = img.shape[:2]
            facts["readable"][row] = True
            facts["digest"][row] = np.frombuffer(bytes.fromhex(pixel_digest(img)), np.uint8)
    return facts


def _gather_rows(facts: dict, process_count: int) -> dict:
    """Every process's rows in global batch order (process 0's first), from all processes."""
    if process_count == 1:
        return facts
    return {k: np.asarray(v) for k, v in multihost_utils.process_allgather(facts, tiled=True).items()}


def make_pseudo_labels(teacher: str | Path, unlabeled: str, *, min_score: float = _DEFAULTS.store_min_score,
                       nms: str = _DEFAULTS.nms,
                       max_images: int = 0, store_dir: str | Path | None = None,
                       shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int | None = None,
                       progress: bool = True) -> PseudoLabelStore:
    """Labels `unlabeled` (a `stlib.pseudo.sources.parse_unlabeled` spec) with the teacher run
    `teacher`; returns the complete store (made, resumed, or found complete).

    The teacher is checked (a finished detection run with a best checkpoint) and the source
    opened before any image is labelled. World pools (`world:scenes`, `world:objects`) are those
    of the teacher's world.
    """
    t = TeacherRun(teacher)
    tp = t.params
    NMS_METHODS.get(nms, what="nms")
    source = parse_unlabeled(unlabeled, tp.data.world_scale, tp.data.world_seed, tp.data.tfds_data_dir)
    n = len(source) if not max_images else min(max_images, len(source))
    source_identity = source.identity()
    root = Path(store_dir) if store_dir else default_store_dir(t, unlabeled, min_score, nms, max_images,
                                                                 source_identity)
    categories = t.categories()
    meta = {"teacher": t.relative(), "teacher_run_id": t.run_id, "teacher_digest": t.digest,
            "teacher_AP": t.metrics.get("AP"), "source_identity": source_identity,
            "source": unlabeled, "source_name": source.name, "min_score": float(min_score), "nms": nms,
            "soft_nms_sigma": float(tp.postprocess.soft_nms_sigma) if nms == "soft_nms" else None,
            "max_images": int(max_images), "image_size": tp.data.image_size, "categories": categories}
    store = PseudoLabelStore.create(root, meta, n, shard_size)
    if store.complete:
        return store
    todo = store.missing_shards()
    if todo:
        _label_shards(t, source, store, todo, min_score, nms, batch_size, progress)
    if jax.process_index() == 0:
        # the listing's counts (files that are not images); unreadable images are counted by the
        # shards themselves (skipped), also across a resume
        store.mark_complete({"source_non_image_files": int(source.stats.get("non_image_files", 0)),
                             "source_name": source.name})
    sharding.barrier(f"{root.name} complete")   # the others read the store process 0 completed
    return store


def _label_shards(t: TeacherRun, source, store: PseudoLabelStore, shards: list, min_score: float, nms: str,
                  batch_size: int | None, progress: bool) -> None:
    tp = t.params
    post = dataclasses.replace(tp.postprocess, score_threshold=float(min_score), method=nms)
    tp = dataclasses.replace(tp, postprocess=post)
    bs = batch_size or tp.train.eval_batch_size
    mesh = sharding.setup_mesh(bs, what="pseudo-label batch size")
    detector = Detector(tp, len(store.categories), mesh)
    state = t.load_state(detector)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    size = tp.data.image_size
    pidx, pcount = jax.process_index(), jax.process_count()
    per_host = bs // pcount
    written = 0
    total = sum(len(store.shard_range(k)) for k in shards)
    reporter = Reporter(f"pseudo labels {Path(store.root).name}", total, unit="img", enabled=pidx == 0)
    bar = tqdm(total=total, desc=f"pseudo labels {Path(store.root).name}", unit="img", disable=not progress,
               mininterval=0.5 if os.isatty(2) else 30.0)

    for k in shards:
        chunks = [list(c) for c in _chunks(store.shard_range(k), bs)]
        # this process decodes only its rows of each batch; process 0 gathers the others' sizes,
        # scales and content digests to write the shard
        rows = [c[pidx * per_host: (pidx + 1) * per_host] for c in chunks]
        decoded = source.images_at([i for r in rows for i in r])

        def batches():
            for chunk, mine in zip(chunks, rows):
                items = [next(decoded) for _ in mine]
                local = _canvas_batch(items, size, per_host)
                yield chunk, items, local, _row_facts(items, local, per_host), sharding.shard_batch(local, mesh)

        labels = []
        for chunk, items, local, facts, sharded in prefetch(batches()):
            det = jax.tree.map(np.asarray, detector.predict_step(variables, sharded))
            facts = _gather_rows(facts, pcount)
            for row, i in enumerate(chunk):
                key = source.key(i)
                h, w = (int(v) for v in facts["hw"][row])
                if not facts["readable"][row]:
                    labels.append(ImageLabels(i, key, 0, 0, np.zeros((0, 4)), [], [], skipped="unreadable image"))
                    continue
                ok = det["valid"][row] & (det["scores"][row] >= min_score)
                boxes = det["boxes"][row][ok] / facts["scale"][row]
                boxes = np.clip(boxes, 0, [h, w, h, w])
                area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # clipping can collapse a box
                labels.append(ImageLabels(i, key, h, w, boxes[area],
                                          det["classes"][row][ok][area], det["scores"][row][ok][area],
                                          content=bytes(facts["digest"][row]).hex()))
            bar.update(len(chunk))
            reporter.update(bar.n)
        if pidx == 0:
            store.write_shard(k, labels)
        written += 1
        _fault_point(written, Path(store.root) / "shards")
    bar.close()
    reporter.update(bar.n, force=True)
