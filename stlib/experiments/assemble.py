"""Assembling a run: params -> the task that trains them, with everything it is handed.

This is the one place that resolves what a run takes from other runs, before any training:
- the named init (`model.init`, `pretrain.teacher`) to its checkpoint folder (`inits`);
- a self-training student's teacher (`self_train.teacher`): checked, its classes compared,
  its pseudo-label store made or reopened (`stlib.pseudo.label`), the thresholded
  pseudo-labelled stream built, and its weights read when the student starts from them;
  the student's metrics.json then records where its pseudo labels came from;
- Noisy Student's teacher (`pretrain.teacher`): the pool labelled (`stlib.pseudo.classification`).

`train(params, run_dir)` is `build_task` then the engine (`stlib.train.loop.train_and_evaluate`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax

from stlib import config as cfg
from stlib import paths
from stlib.data.pipeline import DetectionData
from stlib.data.segmentation import (PseudoMaskSource, SegmentationData, segmentation_source_identity,
                                     segmentation_unlabeled)
from stlib.data.sources import build_detection_sources
from stlib.experiments import inits
from stlib.io import write_json_atomic
from stlib.pseudo import classification as pseudo_cls
from stlib.pseudo.data import PseudoLabeledSource
from stlib.pseudo.label import make_pseudo_labels
from stlib.pseudo.masks import SCALES as MASK_SCALES
from stlib.pseudo.masks import MaskTeacher, apply_threshold, label_masks
from stlib.pseudo.store import PseudoLabelStore
from stlib.pseudo.sources import parse_unlabeled
from stlib.pseudo.teacher import TeacherRun, check_same_classes
from stlib.registry import check_choices
from stlib.tasks import TaskInputs, task_for
from stlib.tasks.pretrain import world_sources
from stlib.tasks.segmentation import SegmentationTask
from stlib.train import sharding
from stlib.train.loop import train_and_evaluate
from stlib.train.state import restore_variables

DETECTION_HEAD = "retinanet"
SEGMENTATION_HEAD = "segmentation"


def build_task(params: cfg.Params, run_dir=None, progress: bool = True, outputs=None):
    """The task of `params` (`stlib.tasks.task_for`) with its inputs resolved and built.

    `run_dir` is where a Noisy Student run keeps its teacher's pool labels (`pseudo_labels.npz`,
    `pseudo_labels.json`). Errors about a teacher or an init come before any data is read.
    """
    check_choices(params)
    cls = task_for(params)
    params = inits.resolve_init(params, outputs)
    p = params
    teacher = TeacherRun(p.self_train.teacher) if p.self_train.teacher and p.model.head == DETECTION_HEAD else None
    init = inits.checkpoint_path(p.model.init, p, outputs) if p.model.init != "rand" else None
    inputs = TaskInputs(mesh=sharding.setup_mesh(p.train.batch_size, p.train.eval_batch_size), init=init)
    if teacher is not None:
        inputs = student_inputs(p, teacher, inputs, progress)
    if p.self_train.teacher and p.model.head == SEGMENTATION_HEAD:
        inputs = segmentation_student_inputs(p, inputs, progress)
    if p.model.head == "classification" and p.pretrain.method == "noisy_student":
        inputs = noisy_student_inputs(p, inputs, run_dir, outputs)
    return cls(p, inputs, progress)


def train(params: cfg.Params, run_dir, progress: bool = True, outputs=None) -> dict:
    """Builds the task of `params` and trains it into `run_dir`; returns its final metrics."""
    return train_and_evaluate(build_task(params, run_dir, progress, outputs), run_dir, progress=progress)


def student_inputs(p: cfg.Params, teacher: TeacherRun, inputs: TaskInputs, progress: bool) -> TaskInputs:
    """A self-training student's inputs (Sec. 3.2): its sources (checked against the teacher's
    classes), the pseudo-labelled stream above `self_train.score_threshold` from the teacher's
    store (made now if missing), and the teacher's weights when `self_train.student_init` is
    teacher. `self_train.unlabeled: ""` is the teacher continued on human labels alone."""
    st, tp = p.self_train, teacher.params
    sources = build_detection_sources(p.data)
    check_same_classes(teacher.categories(), sources[0].categories, teacher.dir)
    if st.student_init == "teacher" and (tp.model.backbone, tp.model.neck, tp.model.fpn_channels) != (
            p.model.backbone, p.model.neck, p.model.fpn_channels):
        raise cfg.ParamsError(
            f"self_train.student_init teacher: the teacher {teacher.dir} is a {tp.model.backbone} + "
            f"{tp.model.neck} detector, the student a {p.model.backbone} + {p.model.neck}; use "
            "self_train.student_init=scratch for a student of another architecture")
    streams, shares, summary = {}, {}, None
    if st.unlabeled:
        store = make_pseudo_labels(teacher.dir, st.unlabeled, min_score=st.store_min_score, nms=st.nms,
                                   max_images=st.max_images, progress=progress)
        source = parse_unlabeled(st.unlabeled, tp.data.world_scale, tp.data.world_seed, tp.data.tfds_data_dir)
        pseudo = PseudoLabeledSource(store, source, st.score_threshold, st.ignore_threshold,
                                     soft=st.targets == "soft", oracle=st.oracle)
        streams["pseudo"] = DetectionData(pseudo, p.data.image_size, p.data.max_boxes)
        shares["pseudo"] = st.pseudo_ratio
        summary = lambda: {"pseudo_labels": pseudo_provenance(store, st, pseudo)}  # noqa: E731
    start_from = teacher.variables() if st.student_init == "teacher" else None
    return dataclasses.replace(inputs, sources=sources, streams=streams, shares=shares, summary=summary,
                               start_from=start_from, start_from_name=f"the teacher {teacher.dir}")


def segmentation_store_dir(teacher: TeacherRun, meta: dict) -> Path:
    """<outputs>/pseudo_labels/<teacher run id>-<hash of what the masks depend on>."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:8]
    return teacher.dir.parent.parent / "pseudo_labels" / f"{teacher.run_id}-{digest}"


def pseudo_mask_store(st: cfg.SelfTrainParams, mesh=None, progress: bool = True, make: bool = True):
    """(store folder, store, teacher, images) of a segmentation student's pseudo masks (Sec. 3.2):
    its teacher segmenter (`st.teacher`), the unlabeled images (`st.unlabeled`) and the store of
    their masks from multi-scale inference, at <outputs>/pseudo_labels/<teacher>-<hash>. The store
    is made, or a killed one resumed, unless `make` is False (then it may be None or incomplete)."""
    teacher = TeacherRun(st.teacher, head=SEGMENTATION_HEAD)
    images = segmentation_unlabeled(st.unlabeled, teacher.params.data)
    meta = {"teacher": teacher.relative(), "teacher_digest": teacher.digest, "source": st.unlabeled,
            "source_identity": segmentation_source_identity(images), "scales": list(MASK_SCALES)}
    store_root = segmentation_store_dir(teacher, {k: v for k, v in meta.items() if k != "teacher"})
    store = PseudoLabelStore.open(store_root) if (store_root / "store.json").is_file() else None
    if make and (store is None or not store.complete):
        tp = teacher.params   # its weights come from its checkpoint, not from the init it started from
        tp = dataclasses.replace(tp, model=dataclasses.replace(tp.model, init="rand"))
        teacher_task = SegmentationTask(tp, TaskInputs(mesh=mesh), progress=False)
        state = restore_variables(teacher_task.init_state(), teacher.variables(), teacher_task.tx, teacher_task.mesh)
        store = label_masks(MaskTeacher(teacher_task, state), images, store_root, meta=meta, progress=progress)
    return store_root, store, teacher, images


def segmentation_student_inputs(p: cfg.Params, inputs: TaskInputs, progress: bool) -> TaskInputs:
    """A segmentation student's inputs (Sec. 3.2): the teacher segmenter labels the unlabeled images
    (`self_train.unlabeled`) by multi-scale inference into a store (made now, or resumed); the
    pseudo stream takes its masks at `self_train.score_threshold` (0.5: less sure pixels are
    ignored); the student starts from the teacher's weights (`self_train.student_init`)."""
    st = p.self_train
    _, store, teacher, images = pseudo_mask_store(st, inputs.mesh, progress)
    labels = {x.index: x for x in store.load()}
    threshold = st.score_threshold
    pseudo = PseudoMaskSource(images, labels.__getitem__, lambda x: apply_threshold(x, threshold),
                              name=f"pseudo masks of {st.unlabeled}")
    streams = {"pseudo": SegmentationData(pseudo, p.data.image_size)}
    summary = lambda: {"pseudo_labels": {"store": paths.relative(store.root), "teacher": teacher.relative(),  # noqa: E731
                                         "source": st.unlabeled, "threshold": threshold,
                                         "images": len(images), "skipped": pseudo.stats["images_corrupt"]}}
    start_from = teacher.variables() if st.student_init == "teacher" else None
    return dataclasses.replace(inputs, streams=streams, shares={"pseudo": st.pseudo_ratio}, summary=summary,
                               start_from=start_from, start_from_name=f"the teacher {teacher.dir}")


def pseudo_provenance(store, st: cfg.SelfTrainParams, pseudo: PseudoLabeledSource) -> dict:
    """Where a student's pseudo labels came from, and what reading them skipped (its metrics.json)."""
    return {"store": paths.relative(store.root), "teacher": store.meta.get("teacher"),
            "teacher_digest": store.meta.get("teacher_digest"), "teacher_AP": store.meta.get("teacher_AP"),
            "source": store.meta.get("source"), "threshold": st.score_threshold, "targets": st.targets,
            **({"oracle": True} if st.oracle else {}),
            **{k: v for k, v in pseudo.stats.items() if v}}


def noisy_student_inputs(p: cfg.Params, inputs: TaskInputs, run_dir=None, outputs=None) -> TaskInputs:
    """Noisy Student's inputs: the teacher (`pretrain.teacher`) labels the world's object pool
    (cached in `run_dir`), the kept and balanced images become the "pseudo" stream, and with
    `pretrain.student_init: teacher` the student starts from the teacher's weights."""
    pt = p.pretrain
    folder = inits.checkpoint_path(pt.teacher, p, outputs, what="pretrain.teacher")
    teacher = pseudo_cls.ClassifierTeacher(folder, pt.teacher, p)
    sources = world_sources(p, "classification set")
    pool, num_classes = sources["pool"], len(sources["train"].categories)
    cache = Path(run_dir) / "pseudo_labels.npz" if run_dir is not None else None
    probs = teacher.pool_probabilities(pool, num_classes, inputs.mesh, p.train.eval_batch_size, cache)
    probs = pseudo_cls.pseudo_targets(probs, pt.pseudo_label)
    positions = pseudo_cls.select_pseudo_labels(probs, pt.confidence_threshold, pt.balance)
    if run_dir is not None and jax.process_index() == 0:
        write_json_atomic(Path(run_dir) / "pseudo_labels.json",
                          pseudo_cls.pseudo_stats(teacher.dir, probs, positions, pt.confidence_threshold, pool))
    pseudo = pseudo_cls.PseudoLabeledData(pool, pt.image_size, probs, positions)
    start_from = teacher.variables if pt.student_init == "teacher" else None
    return dataclasses.replace(inputs, streams={"pseudo": pseudo}, start_from=start_from,
                               start_from_name=f"the teacher ({teacher.params.model.backbone}, {teacher.dir})")
