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
from stlib.augment import augment_batch, prepare_eval_batch
from stlib.data.segmentation import IGNORE_LABEL, SegmentationData, SegmentationSource, world_segmentation_sources
from stlib.eval.miou import confusion_matrix, miou_from_confusion
from stlib.losses import segmentation_loss
from stlib.models.registry import create_model
from stlib.models.segmentation import segmentation_upsample_logits
from stlib.models.weight_import import init_backbone
from stlib.tasks.base import TASKS, TaskInputs, resolve_inputs
from stlib.train import sharding
from stlib.train.optimizers import create_optimizer
from stlib.train.state import create_train_state
from stlib.train.step import apply_gradients, jit_eval_step, jit_train_step, step_rng


@dataclasses.dataclass(frozen=True)
class StepConfig:
    augment: cfg.AugmentParams


def segmentation_train_step(state, batch, *, model, tx, config: StepConfig, mesh=None):
    """One SGD step on a global batch: augment (the mask follows the pixels; its padding and the
    areas a transform brings in are ignored), then the per-pixel loss. Returns (state, metrics)."""
    rng = step_rng(state)
    aug = augment_batch(rng, batch, config.augment, mesh=mesh)
    labels = jnp.where(aug["example_valid"][:, None, None], aug["mask"], IGNORE_LABEL)

    def loss_fn(p):
        logits, new_vars = model.apply({"params": p, "batch_stats": state.batch_stats}, aug["image"], train=True,
                                       mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(rng, 1)})
        return segmentation_loss(logits, labels, IGNORE_LABEL), new_vars["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = apply_gradients(state, grads, batch_stats, tx)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


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
        self.train_data = SegmentationData(self.train_source, p.data.image_size)
        self.val_data = SegmentationData(self.val_source, p.data.image_size)
        self.model = create_model(p.model, num_classes=self.num_classes)
        self.tx = create_optimizer(p.train)
        self.train_step = jit_train_step(functools.partial(segmentation_train_step, model=self.model, tx=self.tx,
                                                           config=StepConfig(p.augment), mesh=self.mesh), self.mesh)
        self.eval_step = jit_eval_step(functools.partial(segmentation_eval_step, model=self.model,
                                                         num_classes=self.num_classes), self.mesh)
        self.predict_step = jit_eval_step(functools.partial(segmentation_predict_step, model=self.model), self.mesh)
        self.progress = progress

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
        """Rand Init, or the init checkpoint's backbone (`model.init`) with a fresh neck and head."""
        p = self.params
        state = create_train_state(self.model, self.tx, p.data.image_size, jax.random.PRNGKey(p.train.seed),
                                   sharding.replicated(self.mesh))
        if self.inputs.init is None:
            return state
        params, batch_stats, _ = init_backbone(state.params, state.batch_stats, self.inputs.init, p.model.backbone)
        return state.replace(params=params, batch_stats=batch_stats)

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
