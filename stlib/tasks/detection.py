"""Detection (the paper's main task): RetinaNet on COCO-style boxes, trained on the human
labels and, for a self-training student, on pseudo-labelled images handed in beside them.

`Detector` is the model, anchors, optimizer and jitted steps of a params file (no data): the
task trains it, and pseudo labelling (`stlib.pseudo.label`) predicts with it.
`DetectionTask` is a detection run in the shape `stlib.train.loop.train_and_evaluate`
drives: the human stream from `data`, the streams it is handed (`TaskInputs.streams`:
pseudo labels, Sec. 3.2), joint training's classification stream (Sec. 5,
`stlib.tasks.joint`), and COCO AP on the validation split.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stlib import config as cfg
from stlib import losses
from stlib.augment import augment_batch, prepare_eval_batch
from stlib.augment.classification import augment_classification
from stlib.data.anchors import AnchorConfig, assign_soft_targets, assign_targets, flatten_level_outputs, generate_anchors
from stlib.data.classification import ClassificationData, build_classification_sources, class_folders
from stlib.data.mixture import Mixture, split_batch
from stlib.data.pipeline import DetectionData
from stlib.data.sources import build_detection_sources
from stlib.eval.coco_eval import detections_to_coco, evaluate_coco
from stlib.eval.postprocess import PostprocessConfig, postprocess
from stlib.models.registry import create_model
from stlib.models.weight_import import init_backbone
from stlib.tasks.base import TASKS, TaskInputs, resolve_inputs
from stlib.tasks.joint import JointClassifier
from stlib.train import sharding
from stlib.train.optimizers import create_optimizer
from stlib.train.state import SelfTrainState, create_train_state, restore_variables
from stlib.train.step import apply_gradients, jit_eval_step, jit_train_step, step_rng


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What `train_step` reads: augmentation, the detection loss, the combination of streams
    (Appendix B) and joint training's classification stream (its policy and label smoothing)."""
    augment: cfg.AugmentParams
    loss: cfg.LossParams
    alpha: float
    joint_alpha: float
    norm_momentum: float
    loss_norm: bool
    classification_augment: str
    label_smoothing: float

    @classmethod
    def from_params(cls, p: cfg.Params) -> "StepConfig":
        st = p.self_train
        return cls(p.augment, p.loss, st.alpha, st.joint_alpha, st.norm_momentum, st.loss_norm,
                   p.pretrain.augment, p.pretrain.label_smoothing)


def compute_targets(batch, anchors, loss_params):
    fn = functools.partial(assign_targets, anchors, match_threshold=loss_params.match_threshold,
                           unmatched_threshold=loss_params.unmatched_threshold)
    return jax.vmap(fn)(batch["boxes"], batch["classes"], batch["valid"])


def compute_soft_targets(batch, anchors, loss_params, num_classes: int):
    fn = functools.partial(assign_soft_targets, anchors, num_classes=num_classes,
                           match_threshold=loss_params.match_threshold,
                           unmatched_threshold=loss_params.unmatched_threshold)
    return jax.vmap(fn)(batch["boxes"], batch["classes"], batch["scores"], batch["valid"])


DETECTION_STREAMS = ("human", "pseudo")   # detection streams, in the order they are concatenated


def _concat(batches: list[dict]) -> dict:
    if len(batches) == 1:
        return batches[0]
    return {k: jnp.concatenate([b[k] for b in batches]) for k in batches[0]}


def train_step(state, batch, *, model, tx, anchors, config: StepConfig, mesh=None, classifier=None):
    """One SGD step on a global batch of data streams (each sharded on `mesh`'s `data` axis).

    `batch` is {stream: batch} (`stlib.data.mixture.Mixture`): "human" (labeled detection),
    optionally "pseudo" (the teacher's pseudo boxes, Sec. 3.2) and "classification" (joint
    training, Sec. 5; needs `classifier`, a `stlib.tasks.joint.JointClassifier`).
    The detection streams are augmented and run through the detector as one batch, so
    BatchNorm statistics cover all of them (synchronous BN over the paper's 256 + 256);
    each stream's loss is its own RetinaNet loss (normalized by its own positives), and the
    streams are combined by `losses.combine_stream_losses` (Appendix B), with the moving
    averages kept in `state.loss_avg`. With the human stream alone this is plain supervised
    training; a plain detection batch (no stream names) is taken as the human stream.
    Returns (new_state, metrics).
    """
    if "image" in batch:
        batch = {"human": batch}
    rng = step_rng(state)
    names = [n for n in DETECTION_STREAMS if n in batch]
    soft_names = [n for n in names if "scores" in batch[n]]   # soft pseudo labels (self_train.targets: soft)
    if soft_names:   # the other streams' boxes count fully; their loss stays the hard one
        batch = {n: (b if n not in names or "scores" in b else {**b, "scores": b["valid"].astype(jnp.float32)})
                 for n, b in batch.items()}
    det = augment_batch(rng, _concat([batch[n] for n in names]), config.augment, mesh=mesh)
    dropout_rng = jax.random.fold_in(rng, 1)   # drop-connect / dropout of backbones that have them
    targets = compute_targets(det, anchors, config.loss)
    num_classes = model.num_classes
    weight = det["example_valid"].astype(jnp.float32)
    sizes = [batch[n]["image"].shape[0] for n in names]
    lp = config.loss
    soft_targets = {}
    start = 0
    for name, n in zip(names, sizes):
        if name in soft_names:
            soft_targets[name] = compute_soft_targets({k: det[k][start:start + n] for k in ("boxes", "classes", "scores", "valid")},
                                                      anchors, lp, num_classes)
        start += n
    cls_batch = batch.get("classification")
    if cls_batch is not None:
        cls_images = augment_classification(jax.random.fold_in(rng, 2), cls_batch["image"],
                                            policy=config.classification_augment,
                                            randaugment_layers=config.augment.randaugment_layers,
                                            randaugment_magnitude=config.augment.randaugment_magnitude, mesh=mesh)

    def loss_fn(p):
        det_params = {k: v for k, v in p.items() if k != "cls_head"}
        det_stats = {k: v for k, v in state.batch_stats.items() if k != "cls_head"}
        (cls_out, box_out), new_vars = model.apply(
            {"params": det_params, "batch_stats": det_stats}, det["image"], train=True, mutable=["batch_stats"],
            rngs={"dropout": dropout_rng})
        new_stats = dict(new_vars["batch_stats"])
        cls = flatten_level_outputs(cls_out, num_classes)
        box = flatten_level_outputs(box_out, 4)
        stream_losses, aux = {}, {}
        start = 0
        for name, n in zip(names, sizes):
            sl = slice(start, start + n)
            start += n
            if name in soft_targets:
                t = soft_targets[name]
                loss, a = losses.soft_detection_loss(cls[sl], box[sl], t["cls_targets"], t["not_ignored"], t["box_targets"],
                                                     t["box_weight"], lp.focal_alpha, lp.focal_gamma, lp.huber_delta,
                                                     lp.box_loss_weight, example_weight=weight[sl])
                stream_losses[name] = loss
                aux[name] = a
                continue
            loss, a = losses.detection_loss(cls[sl], box[sl], targets["cls_targets"][sl], targets["box_targets"][sl],
                                            num_classes, lp.focal_alpha, lp.focal_gamma, lp.huber_delta,
                                            lp.box_loss_weight, example_weight=weight[sl])
            stream_losses[name] = loss
            aux[name] = a
        if cls_batch is not None:
            loss, acc, head_stats = classifier.loss(p, state.batch_stats, cls_images, cls_batch,
                                                    jax.random.fold_in(rng, 3), config.label_smoothing)
            stream_losses["classification"] = loss
            aux["classification"] = {"accuracy": acc}
            if head_stats:
                new_stats["cls_head"] = head_stats
        if len(stream_losses) == 1:
            return stream_losses["human"], (aux["human"], new_stats, None)
        averages = losses.update_loss_averages(state.loss_avg, stream_losses, config.norm_momentum)
        alphas = {"pseudo": config.alpha, "classification": config.joint_alpha}
        total, weights = losses.combine_stream_losses(stream_losses, alphas, averages, "human", config.loss_norm)
        flat = {}
        for name, l in stream_losses.items():
            flat[f"{name}/loss"] = l
            flat[f"{name}/weight"] = weights[name]
            flat[f"{name}/loss_avg"] = averages[name]
            flat.update({f"{name}/{k}": v for k, v in aux[name].items()})
        return total, (flat, new_stats, averages)

    (loss, (aux, batch_stats, averages)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = apply_gradients(state, grads, batch_stats, tx)
    if averages is not None:
        new_state = new_state.replace(loss_avg=averages)
    metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads)}
    return new_state, metrics


def predict_step(variables, batch, *, model, anchors, post_cfg, image_size):
    """Detections for an evaluation batch (normalization only, no augmentation)."""
    batch = prepare_eval_batch(batch)
    cls_out, box_out = model.apply(variables, batch["image"], train=False)
    cls = flatten_level_outputs(cls_out, model.num_classes)
    box = flatten_level_outputs(box_out, 4)
    det = postprocess(cls, box, anchors, (image_size, image_size), post_cfg)
    det["image_id"] = batch["image_id"]
    det["scale"] = batch["scale"]
    det["example_valid"] = batch["example_valid"]
    return det


class Detector:
    """The model, anchors, optimizer and jitted steps for `params` on `mesh` (no data needed).

    `train_step(state, batch)` and `predict_step(variables, batch)` are jitted with the state
    replicated and the batch sharded on `data`; `train_step` donates the state.
    """

    def __init__(self, params: cfg.Params, num_classes: int, mesh, classifier=None):
        p, mp, pp = params, params.model, params.postprocess
        self.params, self.mesh = p, mesh
        if mp.head != "retinanet":
            raise cfg.ParamsError(f"model.head {mp.head!r}: a Detector is a detection model (model.head retinanet); "
                                  "other heads are trained by their own tasks (stlib.tasks)")
        self.model = create_model(mp, num_classes=num_classes)
        anchor_cfg = AnchorConfig(mp.min_level, mp.max_level, mp.num_scales, tuple(mp.aspect_ratios), mp.anchor_size)
        size = p.data.image_size
        self.anchors = jax.device_put(np.asarray(generate_anchors((size, size), anchor_cfg)), sharding.replicated(mesh))
        self.tx = create_optimizer(p.train)
        self.post_cfg = PostprocessConfig(pp.pre_nms_top_k, pp.score_threshold, pp.nms_iou_threshold,
                                          pp.max_detections, pp.method, pp.soft_nms_sigma)
        self.train_step = jit_train_step(
            functools.partial(train_step, model=self.model, tx=self.tx, anchors=self.anchors,
                              config=StepConfig.from_params(p), mesh=mesh, classifier=classifier), mesh)
        self.predict_step = jit_eval_step(
            functools.partial(predict_step, model=self.model, anchors=self.anchors, post_cfg=self.post_cfg,
                              image_size=size), mesh)

    def init_state(self, init=None):
        """Fresh state (Rand Init), with the backbone from the checkpoint folder `init` when given
        (`model.init` resolved, `TaskInputs.init`)."""
        state = create_train_state(self.model, self.tx, self.params.data.image_size,
                                   jax.random.PRNGKey(self.params.train.seed), sharding.replicated(self.mesh))
        if init is not None:
            params, batch_stats, _ = init_backbone(state.params, state.batch_stats, init, self.params.model.backbone)
            state = state.replace(params=params, batch_stats=batch_stats)
        return state

    def restore(self, variables: dict):
        """A state holding `variables` ({"params", "batch_stats"}, e.g. a teacher's best checkpoint)."""
        state = create_train_state(self.model, self.tx, self.params.data.image_size, jax.random.PRNGKey(0),
                                   sharding.replicated(self.mesh))
        return restore_variables(state, variables, self.tx, self.mesh)


def joint_classification_source(p: cfg.Params):
    """The labeled classification source of `self_train.joint_source` (errors name the setting)."""
    spec = p.self_train.joint_source
    if spec == "world":
        if p.data.source != "world":
            raise cfg.ParamsError(f"self_train.joint_source world: data.source {p.data.source!r} is not the embedded "
                                  "world; give the classification images as self_train.joint_source=folder:<path> "
                                  "(one sub-folder per class, as ImageNet's train folder)")
        return build_classification_sources(p.data.world_scale, p.data.world_seed)["train"]
    if spec.startswith("folder:"):
        return class_folders(spec[len("folder:"):])
    raise cfg.ParamsError(f"self_train.joint_source must be world or folder:<path>, got {spec!r}")


@TASKS.register("retinanet")
class DetectionTask:
    """A detection run: the human stream, the streams handed in (pseudo labels), joint
    training's classification stream when `self_train.joint`, COCO AP on validation."""
    metric = "AP"
    metric_keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")

    def __init__(self, params: cfg.Params, inputs: TaskInputs | None = None, progress: bool = True):
        self.params = p = params
        self.inputs = inputs = resolve_inputs(p, inputs)
        self.mesh = inputs.mesh
        train_src, val_src = inputs.sources or build_detection_sources(p.data)
        self.train_source, self.val_source = train_src, val_src
        self.category_ids = [c["id"] for c in train_src.categories]
        self.val_data = DetectionData(val_src, p.data.image_size, p.data.max_boxes)
        self.coco_gt = val_src.coco_gt()
        self.progress = progress
        self.classifier = None
        streams = {"human": DetectionData(train_src, p.data.image_size, p.data.max_boxes), **inputs.streams}
        shares = {"human": 1.0, **inputs.shares}
        if p.self_train.joint:
            streams["classification"] = self._classification_stream()
            shares["classification"] = p.self_train.joint_ratio
        self.train_data = Mixture(streams, split_batch(p.train.batch_size, shares, self.mesh.devices.size))
        self.detector = Detector(p, len(self.category_ids), self.mesh, classifier=self.classifier)
        self.model, self.anchors, self.tx = self.detector.model, self.detector.anchors, self.detector.tx
        self.train_step, self.predict_step = self.detector.train_step, self.detector.predict_step

    def _classification_stream(self):
        """Joint training's stream: the classification set with its labels (`self_train.joint_source`:
        the world's at smoke / mini scale, ImageNet-style class folders at paper scale)."""
        p = self.params
        src = joint_classification_source(p)
        self.classifier = JointClassifier(p.model, src.num_classes)
        return ClassificationData(src, p.pretrain.image_size)

    def init_state(self):
        """The detector's initial state: Rand Init / the init checkpoint's backbone, or the variables
        it was handed to start from (a student from its teacher: weights and BN statistics, Sec. 3.2)
        with a fresh optimizer; joint training adds a fresh classification head; with extra streams
        the state carries the loss moving averages."""
        p, start_from = self.params, self.inputs.start_from
        state = self.detector.init_state(init=None if start_from is not None else self.inputs.init)
        if start_from is not None:
            state = restore_variables(state, start_from, self.tx, self.mesh)
        if len(self.train_data.streams) == 1:
            return state
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

    def summary(self) -> dict:
        return self.inputs.summary() if self.inputs.summary is not None else {}
