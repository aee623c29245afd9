"""Noisy Student's pseudo labels (Xie et al. 2020): a classifier teacher labels an unlabeled pool.

The teacher (`pretrain.teacher`: the supervised pre-training run, `imagenet`) labels the
unlabeled object pool without noise; its class probabilities are kept in the student's run
folder (`pseudo_labels.npz`, written once, reused on resume). Pool images below
`pretrain.confidence_threshold` are dropped and classes balanced (`select_pseudo_labels`),
and `PseudoLabeledData` is the stream the student (`stlib.tasks.noisy_student`) trains on.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import jax
import numpy as np

from stlib import config as cfg
from stlib.augment.classification import prepare_classification_eval
from stlib.data.classification import ClassificationData, ClassificationSource
from stlib.io import write_bytes_atomic
from stlib.models.registry import create_model
from stlib.models.weight_import import read_checkpoint
from stlib.train import sharding


class ClassifierTeacher:
    """A finished classification run used as Noisy Student's teacher: folder, params, variables.

    `folder` is `pretrain.teacher` resolved (`stlib.experiments.inits`); errors name it.
    """

    def __init__(self, folder, teacher: str, params: cfg.Params):
        path = Path(folder)
        run_dir = next((c for c in (path, path.parent, path.parent.parent) if (c / "params.yaml").is_file()), None)
        if run_dir is None:
            raise cfg.ParamsError(f"pretrain.teacher {teacher!r}: {path} is not a pre-training run folder "
                                  "(no params.yaml); Noisy Student needs a classifier run to label the pool")
        tp = cfg.load_params(run_dir / "params.yaml")
        if tp.model.head != "classification":
            raise cfg.ParamsError(f"pretrain.teacher {teacher!r}: {run_dir} trained a {tp.model.head} model, "
                                  "not a classifier")
        if (tp.data.world_scale, tp.data.world_seed) != (params.data.world_scale, params.data.world_seed):
            raise cfg.ParamsError(
                f"pretrain.teacher {teacher!r}: {run_dir} classified the {tp.data.world_scale} world (seed "
                f"{tp.data.world_seed}), this run's classes come from the {params.data.world_scale} world (seed "
                f"{params.data.world_seed})")
        self.dir, self.params = run_dir, tp
        self.variables, _ = read_checkpoint(run_dir)

    def pool_probabilities(self, pool: ClassificationSource, num_classes: int, mesh, batch_size: int,
                           cache: Path | None = None) -> np.ndarray:
        """The teacher's softmax over every pool image [N, num_classes] (corrupt images all-zero),
        cached in `cache` (an .npz, reused when it is this teacher's and the pool's size)."""
        teacher_id = Path(self.dir).name
        if cache is not None and cache.is_file():
            with np.load(cache) as z:
                if str(z["teacher"]) == teacher_id and len(z["probs"]) == len(pool):
                    return z["probs"]
        tp = self.params
        model = create_model(tp.model, num_classes=num_classes)
        fn = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, prepare_classification_eval(x), train=False)),
                     in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                     out_shardings=sharding.replicated(mesh))
        variables = jax.device_put(self.variables, sharding.replicated(mesh))
        data = ClassificationData(pool, tp.pretrain.image_size)
        probs = np.zeros((len(pool), num_classes), np.float32)
        for batch in data.eval_batches(batch_size, jax.process_index(), jax.process_count()):
            out = np.asarray(fn(variables, sharding.shard_batch({"image": batch["image"]}, mesh)["image"]))
            valid = np.asarray(batch["example_valid"])
            probs[np.asarray(batch["index"])[valid]] = out[valid]
        if cache is not None and jax.process_index() == 0:
            buf = io.BytesIO()
            np.savez(buf, probs=probs, teacher=np.asarray(teacher_id))
            write_bytes_atomic(cache, buf.getvalue())
        return probs


def pseudo_targets(probs: np.ndarray, kind: str) -> np.ndarray:
    """The student's targets: the teacher's distributions (`soft`), or one-hot argmax (`hard`)."""
    if kind == "hard":
        return np.eye(probs.shape[1], dtype=np.float32)[probs.argmax(1)] * (probs.max(1, keepdims=True) > 0)
    return probs


def select_pseudo_labels(probs: np.ndarray, threshold: float, balance: bool) -> np.ndarray:
    """Pool positions the student trains on (with repeats when balancing), Noisy Student Sec. 4.1.

    Images whose teacher confidence (max probability) is below `threshold` are dropped. With
    `balance`, each class (by the teacher's argmax) gets the same number of images, the kept
    count over the classes: a class with more keeps its most confident ones, a class with
    fewer has its images repeated (a class with none stays empty). Returns sorted int64 positions.
    """
    probs = np.asarray(probs)
    conf, cls = probs.max(1), probs.argmax(1)
    keep = np.flatnonzero(conf >= threshold)
    if not balance or len(keep) == 0:
        return keep.astype(np.int64)
    k = probs.shape[1]
    per_class = max(1, int(round(len(keep) / k)))
    out = []
    for c in range(k):
        idx = keep[cls[keep] == c]
        if len(idx) == 0:
            continue
        idx = idx[np.argsort(-conf[idx], kind="stable")]
        out.append(idx[:per_class] if len(idx) >= per_class else np.resize(idx, per_class))
    return np.sort(np.concatenate(out)).astype(np.int64)


class PseudoLabeledData(ClassificationData):
    """`ClassificationData` over an unlabeled pool whose examples carry the teacher's target
    distribution (`target` float32 [K]); `positions` (with repeats) are what training walks."""

    def __init__(self, source: ClassificationSource, image_size: int, targets: np.ndarray, positions: np.ndarray,
                 **kw):
        super().__init__(source, image_size, **kw)
        if len(targets) != len(source):
            raise ValueError(f"{source.name}: {len(targets)} pseudo-label rows for {len(source)} images")
        self.targets = np.asarray(targets, np.float32)
        usable = set(self.indices.tolist())
        positions = np.asarray([i for i in positions if i in usable], np.int64)
        if len(positions) == 0:
            raise ValueError(f"{source.name}: no pool image passed the pseudo-label selection "
                             "(lower pretrain.confidence_threshold?)")
        self.indices = positions

    def example(self, i: int) -> dict | None:
        ex = super().example(i)
        if ex is not None:
            ex["target"] = self.targets[i]
        return ex


def pseudo_stats(teacher_dir, probs: np.ndarray, positions: np.ndarray, threshold: float,
                 pool: ClassificationSource) -> dict:
    """What the student trains on, and (for the embedded world, whose pool labels are hidden
    from training) how right the teacher's labels are."""
    conf, cls = probs.max(1), probs.argmax(1)
    kept = np.unique(positions)
    counts = np.bincount(cls[positions], minlength=probs.shape[1])
    out = {"teacher": str(teacher_dir), "pool_images": int(len(probs)),
           "confidence_threshold": threshold,
           "kept_images": int(len(kept)), "training_positions": int(len(positions)),
           "per_class_min": int(counts.min()), "per_class_max": int(counts.max()),
           "mean_confidence_kept": float(conf[kept].mean()) if len(kept) else None}
    hidden = hidden_pool_labels(pool)
    if hidden is not None:
        ok = hidden >= 0
        out["teacher_accuracy_pool"] = float(np.mean(cls[ok] == hidden[ok]))
        sel = kept[hidden[kept] >= 0]
        out["teacher_accuracy_kept"] = float(np.mean(cls[sel] == hidden[sel])) if len(sel) else None
    return out


def hidden_pool_labels(pool: ClassificationSource) -> np.ndarray | None:
    """The embedded world's hidden labels of its object pool (`hidden/objects.json`), aligned
    with `pool.files` (-1 where unknown); None outside the embedded world. For reporting only."""
    root = Path(pool.images_dir).parent.parent.parent
    path = root / "hidden" / "objects.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    by_name = {im["file_name"]: im["label"] for im in data.get("images", [])}
    return np.asarray([by_name.get(os.path.basename(f), -1) for f in pool.files], np.int64)
