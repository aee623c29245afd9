"""`train_and_evaluate`: the training loop with validation AP, best checkpoint, early stopping and resume.

Sec. 3.2: "train until it converges" on a held-out validation set. We evaluate COCO AP
every `train.eval_every` steps, keep the best checkpoint, and stop early after
`train.early_stop_patience` evaluations without improvement (0 = run all steps).

Resume: the run directory is addressed by the params (`stlib.config.run_id`). Re-running
the same command restores the newest checkpoint, drops log lines written after it, and
continues; batches are a pure function of the step, so the result equals an
uninterrupted run. A non-finite loss stops the run before any checkpoint of the bad
state is written, so the last good checkpoint is kept.
"""
from __future__ import annotations

import functools
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from stlib import config as cfg
from stlib.data.anchors import AnchorConfig, generate_anchors
from stlib.data.mixture import Mixture, split_batch
from stlib.data.pipeline import DetectionData, prefetch
from stlib.data.sources import build_detection_sources
from stlib.eval.coco_eval import detections_to_coco, evaluate_coco
from stlib.eval.postprocess import PostprocessConfig
from stlib.io import machine, run_lock, to_jsonable, write_json_atomic, write_text_atomic
from stlib.models.registry import create_model
from stlib.train import sharding
from stlib.train.checkpoints import Checkpoints
from stlib.train.state import count_params, create_optimizer, create_train_state, learning_rate_schedule
from stlib.train.step import predict_step, train_step


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class MetricsLog:
    """metrics.jsonl: one JSON object per line ({"kind": "train"|"eval"|"session", "step": ..., ...}).

    A "session" line closes each stretch of training (steps and wall seconds, evaluation
    included), so a resumed run still reports its total time.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.entries = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    try:
                        self.entries.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut by a kill: drop it
                        pass

    def truncate_after(self, step: int) -> None:
        self.entries = [e for e in self.entries if e["step"] <= step]
        write_text_atomic(self.path, "".join(json.dumps(e) + "\n" for e in self.entries))

    def append(self, entry: dict) -> None:
        entry = to_jsonable(entry)
        self.entries.append(entry)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()

    def evals(self):
        return [e for e in self.entries if e["kind"] == "eval"]


def _score(entry: dict, metric: str = "AP") -> float:
    """An eval line's validation metric for ranking; NaN (logged as null) ranks below every real value."""
    return entry[metric] if entry.get(metric) is not None else -1.0


def early_stop_due(evals: list[dict], patience: int, metric: str = "AP") -> bool:
    if patience <= 0 or not evals:
        return False
    best_i = max(range(len(evals)), key=lambda i: _score(evals[i], metric))
    return len(evals) - 1 - best_i >= patience


class Detector:
    """The model, anchors, optimizer and jitted steps for `params` on `mesh` (no data needed).

    `train_step(state, batch)` and `predict_step(variables, batch)` are jitted with the state
    replicated and the batch sharded on `data`; `train_step` donates the state.
    """

    def __init__(self, params: cfg.Params, num_classes: int, mesh, classifier=None):
        p, mp, pp = params, params.model, params.postprocess
        self.params, self.mesh = p, mesh
        if mp.head != "retinanet":
            raise cfg.ParamsError(f"model.head {mp.head!r}: this loop trains detectors (model.head retinanet); "
                                  "segmenters and classifiers are built by the registry but trained elsewhere")
        self.model = create_model(mp, num_classes=num_classes)
        anchor_cfg = AnchorConfig(mp.min_level, mp.max_level, mp.num_scales, tuple(mp.aspect_ratios), mp.anchor_size)
        size = p.data.image_size
        rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
        self.anchors = jax.device_put(np.asarray(generate_anchors((size, size), anchor_cfg)), rep)
        self.tx = create_optimizer(p.train)
        self.post_cfg = PostprocessConfig(pp.pre_nms_top_k, pp.score_threshold, pp.nms_iou_threshold,
                                          pp.max_detections, pp.method, pp.soft_nms_sigma)
        self.train_step = jax.jit(
            functools.partial(train_step, model=self.model, tx=self.tx, anchors=self.anchors, params=p, mesh=mesh,
                              classifier=classifier),
            in_shardings=(rep, bat), out_shardings=(rep, rep), donate_argnums=0)
        self.predict_step = jax.jit(
            functools.partial(predict_step, model=self.model, anchors=self.anchors, post_cfg=self.post_cfg,
                              image_size=size),
            in_shardings=(rep, bat), out_shardings=rep)

    def init_state(self, load_init: bool = True):
        """Fresh state (Rand Init), with the backbone from `model.init`'s checkpoint when it names
        one (and `load_init`: a self-training student that starts from its teacher skips it)."""
        state = create_train_state(self.model, self.tx, self.params.data.image_size,
                                   jax.random.PRNGKey(self.params.train.seed), sharding.replicated(self.mesh))
        mp = self.params.model
        if mp.init != "rand" and load_init:
            from stlib.experiments.inits import checkpoint_path
            from stlib.models.weight_import import init_backbone
            params, batch_stats, _ = init_backbone(state.params, state.batch_stats,
                                                   checkpoint_path(mp.init, self.params), mp.backbone)
            state = state.replace(params=params, batch_stats=batch_stats)
        return state


class Experiment:
    """Everything a detection run needs, built from params (data, model, mesh, jitted steps).

    `train_and_evaluate` drives any object with this shape: `params`, `mesh`, `train_data`
    (`train_batch`, `__len__`), `val_data`, `train_source`/`val_source` (`stats`),
    `train_step`, `init_state()`, `evaluate(state) -> dict`, the validation `metric` that
    picks the best checkpoint and `metric_keys` reported with it (`stlib.train.pretrain`
    has the classification twin).
    """
    metric = "AP"
    metric_keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")

    def __init__(self, params: cfg.Params, progress: bool = True):
        self.params = p = params
        st = p.self_train
        teacher = None
        if st.teacher:   # checked before any data or model is built
            from stlib.pseudo.teacher import TeacherRun
            teacher = TeacherRun(st.teacher)
        sharding.maybe_initialize_distributed()
        self.mesh = sharding.create_mesh()
        sharding.check_batch_size(p.train.batch_size, self.mesh)
        sharding.check_batch_size(p.train.eval_batch_size, self.mesh, "train.eval_batch_size")
        train_src, val_src = build_detection_sources(p.data)
        self.train_source, self.val_source = train_src, val_src
        self.category_ids = [c["id"] for c in train_src.categories]
        self.val_data = DetectionData(val_src, p.data.image_size, p.data.max_boxes)
        self.coco_gt = val_src.coco_gt()
        self.progress = progress
        self.teacher, self.pseudo_store, self.classifier = teacher, None, None
        streams = {"human": DetectionData(train_src, p.data.image_size, p.data.max_boxes)}
        shares = {"human": 1.0}
        if teacher is not None:
            from stlib.pseudo.teacher import check_same_classes
            check_same_classes(teacher.categories(), train_src.categories, teacher.dir)
            tp = teacher.params
            if st.student_init == "teacher" and (tp.model.backbone, tp.model.neck, tp.model.fpn_channels) != (
                    p.model.backbone, p.model.neck, p.model.fpn_channels):
                raise cfg.ParamsError(
                    f"self_train.student_init teacher: the teacher {teacher.dir} is a {tp.model.backbone} + "
                    f"{tp.model.neck} detector, the student a {p.model.backbone} + {p.model.neck}; use "
                    "self_train.student_init=scratch for a student of another architecture")
        if teacher is not None and st.unlabeled:   # unlabeled "" = the teacher continued on human labels alone
            streams["pseudo"] = self._pseudo_stream(teacher, train_src)
            shares["pseudo"] = st.pseudo_ratio
        if st.joint:
            streams["classification"] = self._classification_stream()
            shares["classification"] = st.joint_ratio
        multiple = self.mesh.devices.size
        self.train_data = Mixture(streams, split_batch(p.train.batch_size, shares, multiple))
        self.detector = Detector(p, len(self.category_ids), self.mesh, classifier=self.classifier)
        self.model, self.anchors, self.tx = self.detector.model, self.detector.anchors, self.detector.tx
        self.train_step, self.predict_step = self.detector.train_step, self.detector.predict_step

    def _pseudo_stream(self, teacher, train_src) -> DetectionData:
        """Self-training's pseudo stream: the teacher's store (made now if missing) above the threshold."""
        from stlib.pseudo.data import PseudoLabeledSource
        from stlib.pseudo.label import make_pseudo_labels
        from stlib.pseudo.sources import parse_unlabeled
        p, st = self.params, self.params.self_train
        tp = teacher.params
        self.pseudo_store = make_pseudo_labels(teacher.dir, st.unlabeled, min_score=st.store_min_score, nms=st.nms,
                                               max_images=st.max_images, progress=self.progress)
        source = parse_unlabeled(st.unlabeled, tp.data.world_scale, tp.data.world_seed, tp.data.tfds_data_dir)
        return DetectionData(PseudoLabeledSource(self.pseudo_store, source, st.score_threshold, st.ignore_threshold,
                                                 soft=st.targets == "soft", oracle=st.oracle),
                             p.data.image_size, p.data.max_boxes)

    def _classification_stream(self):
        """Joint training's stream: the classification set with its labels (the world's at smoke/mini scale)."""
        from stlib.data.classification import ClassificationData, build_classification_sources
        from stlib.train.joint import JointClassifier
        p = self.params
        if p.data.source != "world":
            raise cfg.ParamsError("self_train.joint: joint training reads the embedded world's classification set; "
                                  f"data.source {p.data.source!r} has none wired yet")
        src = build_classification_sources(p.data.world_scale, p.data.world_seed)["train"]
        self.classifier = JointClassifier(p.model, src.num_classes)
        return ClassificationData(src, p.pretrain.image_size)

    def init_state(self):
        """The detector's initial state: Rand Init / `model.init`'s backbone, or for a
        self-training student with `self_train.student_init: teacher` the teacher's weights and
        BN statistics (Sec. 3.2) with a fresh optimizer; joint training adds a fresh
        classification head; with extra streams the state carries the loss moving averages."""
        p, st = self.params, self.params.self_train
        from_teacher = self.teacher is not None and st.student_init == "teacher"
        state = self.detector.init_state(load_init=not from_teacher)
        if from_teacher:
            from stlib.train.pretrain import restore_variables
            t = self.teacher.load_state(self.detector)
            state = restore_variables(state, {"params": t.params, "batch_stats": t.batch_stats}, self.tx, self.mesh)
        if len(self.train_data.streams) == 1:
            return state
        from stlib.train.state import SelfTrainState
        rep = sharding.replicated(self.mesh)
        params, stats = dict(state.params), dict(state.batch_stats)
        if self.classifier is not None:
            head = self.classifier.init(jax.random.PRNGKey(p.train.seed + 7), p.pretrain.image_size)
            params["cls_head"] = head["params"]
            if head.get("batch_stats"):
                stats["cls_head"] = head["batch_stats"]
        params, stats = jax.device_put((params, stats), rep)
        zero = np.zeros((), np.float32)
        averages = {"count": np.zeros((), np.int32), **{k: zero for k in self.train_data.streams}}
        return SelfTrainState(step=state.step, params=params, batch_stats=stats,
                              opt_state=jax.jit(self.tx.init, out_shardings=rep)(params), rng=state.rng,
                              loss_avg=jax.device_put(averages, rep))

    def predict(self, state, data: DetectionData = None, limit: int | None = None):
        """Detections (numpy, batched dicts) over `data` (default: validation)."""
        data = self.val_data if data is None else data
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        out, seen = [], 0
        for batch in data.eval_batches(self.params.train.eval_batch_size, jax.process_index(), jax.process_count()):
            det = self.predict_step(variables, sharding.shard_batch(batch, self.mesh))
            out.append(jax.tree.map(np.asarray, det))
            seen += len(batch["image_id"])
            if limit is not None and seen >= limit:
                break
        return out

    def evaluate(self, state) -> dict:
        """COCO AP of `state` on the validation set."""
        results = []
        for det in self.predict(state):
            results.extend(detections_to_coco(det, self.category_ids))
        ids = [r.image_id for r in self.val_source.records]
        return evaluate_coco(self.coco_gt, results, image_ids=ids)


def _tensorboard_writer(run_dir: Path):
    """A TensorBoard writer, or None with a warning where tensorflow is not installed (an
    accelerator image without it): the metrics still go to metrics.jsonl."""
    try:
        import tensorflow as tf  # imported lazily: only runs that write TensorBoard events pay for it
    except ImportError:
        import warnings
        warnings.warn("train.tensorboard: tensorflow is not installed, so no TensorBoard events are written "
                      "(metrics.jsonl has every logged value)")
        return None
    tf.config.set_visible_devices([], "GPU")
    return tf.summary.create_file_writer(str(run_dir / "tensorboard"))


def _write_scalars(writer, prefix: str, step: int, values: dict) -> None:
    """TensorBoard scalars (NaN values, e.g. APl with no large objects, are left out)."""
    if writer is None:
        return
    import tensorflow as tf
    with writer.as_default(step=step):
        for k, v in values.items():
            if v == v:
                tf.summary.scalar(f"{prefix}/{k}", v)


def train_and_evaluate(params: cfg.Params, run_dir, *, progress: bool = True, experiment: Experiment = None) -> dict:
    """Trains the detector described by `params`, recording into `run_dir`; returns final metrics.

    Writes params.yaml, metrics.jsonl (train and eval lines), metrics.json (final),
    checkpoints/ (latest and best) and tensorboard/ into `run_dir`. The main process holds
    `run_dir/run.lock` meanwhile (`stlib.io.run_lock`): a second process on the same run is refused.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() != 0:
        return _train_and_evaluate(params, run_dir, progress, experiment)
    with run_lock(run_dir):
        return _train_and_evaluate(params, run_dir, progress, experiment)


def _train_and_evaluate(params: cfg.Params, run_dir: Path, progress: bool, experiment) -> dict:
    p, tp = params, params.train
    is_main = jax.process_index() == 0
    if is_main:
        write_text_atomic(run_dir / "params.yaml", cfg.dump_params(p))
    exp = experiment or Experiment(p, progress)
    state = exp.init_state()
    ckpts = Checkpoints(run_dir / "checkpoints", keep=tp.keep_checkpoints)
    state, start = ckpts.restore_latest(state)
    log = MetricsLog(run_dir / "metrics.jsonl")
    log.truncate_after(start)
    ckpts.drop_best_after(start)
    evals = log.evals()
    metric = exp.metric
    best_score = max((_score(e, metric) for e in evals), default=-1.0)
    writer = _tensorboard_writer(run_dir) if (tp.tensorboard and is_main) else None
    lr_fn = learning_rate_schedule(tp)
    if start:
        print(f"resuming {run_dir.name} from step {start}")

    def batches():
        for s in range(start, tp.steps):
            yield sharding.shard_batch(
                exp.train_data.train_batch(s, tp.batch_size, tp.seed, jax.process_index(), jax.process_count()),
                exp.mesh)

    stopped_early = early_stop_due(evals, tp.early_stop_patience, metric)
    t0, step = time.time(), start
    trained = 0
    # Outside a terminal (papermill, logs) redraw every 30 s so the executed notebook stays small.
    bar = tqdm(total=tp.steps, initial=start, desc=p.name, disable=not (progress and is_main), unit="step",
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    try:
        for batch in ([] if stopped_early else prefetch(batches())):
            state, metrics = exp.train_step(state, batch)
            step += 1
            trained += 1
            bar.update(1)
            is_eval = step % tp.eval_every == 0 or step == tp.steps
            is_ckpt = step % tp.checkpoint_every == 0 or is_eval
            if step % tp.log_every == 0 or is_ckpt:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not all(math.isfinite(v) for v in m.values()):
                    good = ckpts.latest_step()
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step} ({m}); the run stopped. "
                        f"Last good checkpoint: step {good} in {ckpts.dir / 'latest'}.")
                m["lr"] = float(lr_fn(step - 1))
                bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.3g}", refresh=False)
                if is_main:
                    log.append({"kind": "train", "step": step, **m})
                    _write_scalars(writer, "train", step, m)
            if is_eval:
                ev = exp.evaluate(state)
                improved = _score(ev, metric) > best_score
                if improved:
                    best_score = _score(ev, metric)
                    ckpts.save_best(step, state)
                if is_main:
                    log.append({"kind": "eval", "step": step, **ev})
                    _write_scalars(writer, "val", step, ev)
                shown = "  ".join(f"{k} {ev[k]:.4f}" for k in exp.metric_keys[:2] if ev.get(k) is not None)
                bar.write(f"step {step}: val {shown}" + (" (best)" if improved else ""))
            if is_ckpt:
                ckpts.save(step, state)
            if is_eval and early_stop_due(log.evals(), tp.early_stop_patience, metric):
                stopped_early = True
                bar.write(f"early stopping at step {step}: no {metric} gain in {tp.early_stop_patience} evaluations")
                break
    finally:
        bar.close()
        if writer is not None:
            writer.flush()
    elapsed = time.time() - t0
    if trained and is_main:
        log.append({"kind": "session", "step": step, "steps": trained, "seconds": round(elapsed, 1)})
    sessions = [e for e in log.entries if e["kind"] == "session"]
    evals = log.evals()
    best = max(evals, key=lambda e: _score(e, metric)) if evals else None
    result = {
        "run_id": run_dir.name, "status": "complete",
        **({k: best.get(k) for k in exp.metric_keys} if best else {}),
        "best_step": best["step"] if best else None,
        "last_step": step, "stopped_early": stopped_early,
        "sessions": len(sessions), "train_seconds": round(sum(e["seconds"] for e in sessions), 1),
        "images_per_s": (round(sum(e["steps"] for e in sessions) * tp.batch_size
                               / sum(e["seconds"] for e in sessions), 2) if sessions else None),
        "num_params": count_params(state.params), "devices": exp.mesh.devices.size,
        "platform": jax.devices()[0].platform, "train_images": len(exp.train_data),
        "val_images": len(exp.val_data),
        "data_stats": {"train": {**exp.train_source.stats, **getattr(exp.train_data, "stats", {})},
                       "val": {**exp.val_source.stats, **getattr(exp.val_data, "stats", {})}},
        "streams": {name: {"examples_per_batch": exp.train_data.sizes[name], "images": len(d)}
                    for name, d in exp.train_data.streams.items()} if hasattr(exp.train_data, "streams") else None,
        **({"pseudo_labels": _pseudo_provenance(exp)} if getattr(exp, "pseudo_store", None) is not None else {}),
        "last_train_metrics": next((e for e in reversed(log.entries) if e["kind"] == "train"), None),
        # what a run that starts from this one (a student, a detector on this init) is addressed by
        "checkpoint_digest": ckpts.best_digest(),
        "machine": machine(),
    }
    if is_main:
        write_json_atomic(run_dir / "metrics.json", result)
    ckpts.close()
    return result


def _pseudo_provenance(exp) -> dict:
    """Where a student's pseudo labels came from (recorded in its metrics.json)."""
    from stlib import paths
    store, st = exp.pseudo_store, exp.params.self_train
    return {"store": paths.relative(store.root), "teacher": store.meta.get("teacher"),
            "teacher_digest": store.meta.get("teacher_digest"), "teacher_AP": store.meta.get("teacher_AP"),
            "source": store.meta.get("source"), "threshold": st.score_threshold, "targets": st.targets,
            **({"oracle": True} if st.oracle else {}),
            **{k: v for k, v in exp.train_data.streams["pseudo"].source.stats.items() if v}}


def load_best_state(exp: Experiment, run_dir):
    """The best checkpoint of a finished run as a TrainState (for plots and predictions)."""
    ck = Checkpoints(Path(run_dir) / "checkpoints")
    try:
        return ck.restore_best(exp.init_state())
    finally:
        ck.close()
