"""Semantic segmentation runs (Sec. 3.2's PASCAL VOC track), `model.head: segmentation`.

The same engine as detection (`stlib.train.loop.train_and_evaluate`: batches sharded on the
`data` axis, BatchNorm over the global batch, resume, best checkpoint by the metric, the
non-finite guard): a `Segmenter` (backbone, `model.neck`, the segmentation head at stride
2^`model.segmentation_level`) trained with per-pixel softmax cross-entropy that skips the ignore
label 255 (`stlib.losses.segmentation_loss`, labels picked down to the logit size as TPU does),
Augment-S1..S4 moving the masks with the pixels, and mIoU on the validation split from one
confusion matrix summed over it, the logits upsampled to the label size first (TPU `metric_fn`,
`stlib.eval.miou`). Inits load the backbone as for detection (`model.init`).
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
from stlib.data.mixture import Mixture, split_batch
from stlib.data.segmentation import IGNORE_LABEL, SegmentationData, SegmentationSource, world_segmentation_sources
from stlib.eval.miou import confusion_matrix, miou_from_confusion
from stlib.losses import segmentation_loss
from stlib.models.registry import create_model
from stlib.models.segmentation import segmentation_upsample_logits
from stlib.models.weight_import import init_backbone
from stlib.tasks.base import TASKS, TaskInputs, resolve_inputs
from stlib.train import sharding
from stlib.train.optimizers import create_optimizer
from stlib.train.state import SelfTrainState, create_train_state, restore_variables
from stlib.train.step import apply_gradients, jit_eval_step, jit_train_step, step_rng


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the train step reads: augmentation and, for a student, the combination of its human
    and pseudo streams (Appendix B's normalized loss)."""
    augment: cfg.AugmentParams
    alpha: float = 1.0
    norm_momentum: float = 0.99
    loss_norm: bool = True

    @classmethod
    def from_params(cls, p: cfg.Params) -> "StepConfig":
        st = p.self_train
        return cls(p.augment, st.alpha, st.norm_momentum, st.loss_norm)


STREAMS = ("human", "pseudo")   # concatenated in this order, so BatchNorm sees both (Sec. 3.2)


def segmentation_train_step(state, batch, *, model, tx, config: StepConfig, mesh=None):
    """One SGD step on a global batch: augment (the mask follows the pixels; its padding and the
    areas a transform brings in are ignored), then the per-pixel loss. `batch` is one batch, or
    {stream: batch} of a student's "human" and "pseudo" streams: they go through the model as one
    batch, each stream's loss is its own mean over its valid pixels, and the two are combined by
    the normalized loss of Appendix B (`losses.combine_stream_losses`). Returns (state, metrics)."""
    if "image" in batch:
        batch = {"human": batch}
    names = [n for n in STREAMS if n in batch]
    sizes = [batch[n]["image"].shape[0] for n in names]
    rng = step_rng(state)
    joined = {k: jnp.concatenate([batch[n][k] for n in names]) for k in batch[names[0]]}
    aug = augment_batch(rng, joined, config.augment, mesh=mesh)
    labels = jnp.where(aug["example_valid"][:, None, None], aug["mask"], IGNORE_LABEL)

    def loss_fn(p):
        logits, new_vars = model.apply({"params": p, "batch_stats": state.batch_stats}, aug["image"], train=True,
                                       mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(rng, 1)})
        stream_losses, start = {}, 0
        for name, n in zip(names, sizes):
            stream_losses[name] = segmentation_loss(logits[start:start + n], labels[start:start + n], IGNORE_LABEL)
            start += n
        if len(names) == 1:
            return stream_losses["human"], (new_vars["batch_stats"], {}, None)
        averages = losses.update_loss_averages(state.loss_avg, stream_losses, config.norm_momentum)
        total, weights = losses.combine_stream_losses(stream_losses, {"pseudo": config.alpha}, averages, "human",
                                                      config.loss_norm)
        flat = {f"{k}/{what}": v for k in names for what, v in
                (("loss", stream_losses[k]), ("weight", weights[k]), ("loss_avg", averages[k]))}
        return total, (new_vars["batch_stats"], flat, averages)

    (loss, (batch_stats, flat, averages)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = apply_gradients(state, grads, batch_stats, tx)
    if averages is not None:
        new_state = new_state.replace(loss_avg=averages)
    return new_state, {"loss": loss, **flat, "grad_norm": optax.tree.norm(grads)}


def segmentation_predict_step(variables, batch, *, model):
    """Predicted class ids [B, S, S] at the input size (logits upsampled as for evaluation)."""
    logits = model.apply(variables, prepare_eval_batch(batch)["image"], train=False)
    return jnp.argmax(segmentation_upsample_logits(logits.astype(jnp.float32), batch["mask"].shape[1:3]), -1)


def segmentation_eval_step(variables, batch, *, model, num_classes: int):
    """The batch's confusion matrix [K+1, K+1] (padding examples and ignored pixels excluded)."""
    logits = model.apply(variables, prepare_eval_batch(batch)["image"], train=False)
    logits = segmentation_upsample_logits(logits.astype(jnp.float32), batch["mask"].shape[1:3])
    labels = jnp.where(batch["example_valid"][:, None, None], batch["mask"], IGNORE_LABEL)
    return confusion_matrix(jnp.argmax(logits, -1), labels, num_classes, IGNORE_LABEL)


def segmentation_sources(dp: cfg.DataParams) -> tuple:
    """(train, val) of `data.source`: world (the embedded world as PASCAL VOC: `data.train_split`
    train | aug | train_aug, `stlib.data.segmentation.world_segmentation_source`) | voc (PASCAL VOC
    on disk at `data.voc_root`, the list files `data.train_split` / `data.val_split`)."""
    if dp.source == "world":
        return world_segmentation_sources(dp.world_scale, dp.world_seed, dp.train_split)
    if dp.source == "voc":
        if not dp.voc_root:
            raise cfg.ParamsError("data.source voc needs data.voc_root (the folder with JPEGImages/, "
                                  "SegmentationClass/ and ImageSets/Segmentation/)")
        return SegmentationSource.voc(dp.voc_root, dp.train_split), SegmentationSource.voc(dp.voc_root, dp.val_split)
    raise cfg.ParamsError(f"data.source {dp.source!r}: segmentation reads world or voc")


@TASKS.register("segmentation")
class SegmentationTask:
    """A segmentation run, in the shape `train_and_evaluate` drives; its metric is mIoU."""
    metric = "mIoU"
    metric_keys = ("mIoU",)

    def __init__(self, params: cfg.Params, inputs: TaskInputs | None = None, progress: bool = True):
        self.params = p = params
        self.inputs = inputs = resolve_inputs(p, inputs)
        self.mesh = inputs.mesh
        self.train_source, self.val_source = inputs.sources or segmentation_sources(p.data)
        self.num_classes = self.train_source.num_classes
        self.class_names = ["background", *self.train_source.class_names]
        streams = {"human": SegmentationData(self.train_source, p.data.image_size), **inputs.streams}
        self.train_data = Mixture(streams, split_batch(p.train.batch_size, {"human": 1.0, **inputs.shares},
                                                       self.mesh.devices.size))
        self.val_data = SegmentationData(self.val_source, p.data.image_size)
        self.model = create_model(p.model, num_classes=self.num_classes)
        self.tx = create_optimizer(p.train)
        self.train_step = jit_train_step(functools.partial(segmentation_train_step, model=self.model, tx=self.tx,
                                                           config=StepConfig.from_params(p), mesh=self.mesh), self.mesh)
        self.eval_step = jit_eval_step(functools.partial(segmentation_eval_step, model=self.model,
                                                         num_classes=self.num_classes), self.mesh)
        self.predict_step = jit_eval_step(functools.partial(segmentation_predict_step, model=self.model), self.mesh)
        self.progress = progress

    def summary(self) -> dict:
        """What joins metrics.json at the end: a student's pseudo-label provenance."""
        return self.inputs.summary() if self.inputs.summary is not None else {}

    def predict_masks(self, state, limit: int) -> list[dict]:
        """The first `limit` validation examples with the predicted mask (`pred`), for a look."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        out = []
        for batch in self.val_data.eval_batches(self.params.train.eval_batch_size):
            pred = np.asarray(self.predict_step(variables, sharding.shard_batch(batch, self.mesh)))
            out += [{"image": batch["image"][b], "mask": batch["mask"][b], "pred": pred[b],
                     "image_hw": batch["image_hw"][b]} for b in range(len(pred)) if batch["example_valid"][b]]
            if len(out) >= limit:
                break
        return out[:limit]

    def init_state(self):
        """Rand Init, or the init checkpoint's backbone (`model.init`) with a fresh neck and head; a
        student starts from its teacher's whole model (Sec. 3.2) with a fresh optimizer, and carries
        the streams' loss averages."""
        p = self.params
        state = create_train_state(self.model, self.tx, p.data.image_size, jax.random.PRNGKey(p.train.seed),
                                   sharding.replicated(self.mesh))
        if self.inputs.start_from is not None:
            state = restore_variables(state, self.inputs.start_from, self.tx, self.mesh)
        elif self.inputs.init is not None:
            params, batch_stats, _ = init_backbone(state.params, state.batch_stats, self.inputs.init,
                                                   p.model.backbone)
            state = state.replace(params=params, batch_stats=batch_stats)
        if len(self.train_data.streams) == 1:
            return state
        zero = np.zeros((), np.float32)
        averages = {"count": np.zeros((), np.int32), **{k: zero for k in self.train_data.streams}}
        return SelfTrainState(step=state.step, params=state.params, batch_stats=state.batch_stats,
                              opt_state=state.opt_state, rng=state.rng,
                              loss_avg=jax.device_put(averages, sharding.replicated(self.mesh)))

    def evaluate(self, state) -> dict:
        """mIoU over the validation split (one confusion matrix), and each class's IoU."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        cm = np.zeros((self.num_classes, self.num_classes), np.int64)
        n = 0
        for batch in self.val_data.eval_batches(self.params.train.eval_batch_size, jax.process_index(),
                                                jax.process_count()):
            cm += np.asarray(self.eval_step(variables, sharding.shard_batch(batch, self.mesh)), np.int64)
            n += int(batch["example_valid"].sum())
        mean, per_class = miou_from_confusion(cm)
        out = {"mIoU": float(mean), "val_images": n}
        out.update({f"IoU/{name}": float(v) for name, v in zip(self.class_names, np.asarray(per_class))
                    if not np.isnan(v)})
        return out
