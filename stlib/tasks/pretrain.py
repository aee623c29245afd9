"""Supervised pre-training of a detector's backbone (Table 1's ImageNet Init), `pretrain.method: supervised`.

Table 1's ImageNet Init starts detection from a backbone trained to classify ImageNet. At the
mini scale the embedded world's object-centric classification set plays ImageNet (40
classes, 6,000 images); `PretrainTask` trains `model.backbone` with a classification head
(`model.head: classification`) on it and reports top-1 on the held-out split. The run is a
run like any other (resumable, best checkpoint by top-1) and its checkpoint holds
{"backbone", "head"}, so a detector takes its backbone with `model.init: <run folder>`.
Paper-scale ImageNet comes from imported checkpoints (`stlib import-weights`).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stlib import config as cfg
from stlib.augment.classification import augment_classification, prepare_classification_eval
from stlib.data.classification import ClassificationData, build_classification_sources
from stlib.losses import classification_loss
from stlib.models.registry import create_model
from stlib.models.weight_import import init_backbone, read_checkpoint
from stlib.tasks.base import CLASSIFICATION_HEAD, PRETRAIN_METHODS, TaskInputs, resolve_inputs
from stlib.train import sharding
from stlib.train.optimizers import create_optimizer
from stlib.train.state import create_train_state, restore_variables, same_layers
from stlib.train.step import apply_gradients, jit_eval_step, jit_train_step, step_rng


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the classification steps read: the augmentation policy and label smoothing."""
    policy: str
    randaugment_layers: int
    randaugment_magnitude: float
    label_smoothing: float

    @classmethod
    def from_params(cls, p: cfg.Params) -> "StepConfig":
        return cls(p.pretrain.augment, p.augment.randaugment_layers, p.augment.randaugment_magnitude,
                   p.pretrain.label_smoothing)

    def augment(self, rng, images, mesh):
        return augment_classification(rng, images, policy=self.policy, randaugment_layers=self.randaugment_layers,
                                      randaugment_magnitude=self.randaugment_magnitude, mesh=mesh)


def classification_train_step(state, batch, *, model, tx, config: StepConfig, mesh=None):
    """One SGD step of supervised pre-training on a global batch. Returns (new_state, metrics)."""
    rng = step_rng(state)
    images = config.augment(rng, batch["image"], mesh)
    weight = batch["example_valid"].astype(jnp.float32)

    def loss_fn(p):
        logits, new_vars = model.apply({"params": p, "batch_stats": state.batch_stats}, images, train=True,
                                       mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(rng, 1)})
        loss, acc = classification_loss(logits, batch["label"], weight, config.label_smoothing)
        return loss, (acc, new_vars["batch_stats"])

    (loss, (acc, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = apply_gradients(state, grads, batch_stats, tx)
    return new_state, {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads)}


def classification_eval_step(variables, batch, *, model):
    """(top-1 hits, top-5 hits, examples) of a batch, padding excluded."""
    logits = model.apply(variables, prepare_classification_eval(batch["image"]), train=False)
    weight = batch["example_valid"].astype(jnp.float32)
    labels = batch["label"]
    top1 = jnp.argmax(logits, -1) == labels
    k = min(5, logits.shape[-1])
    top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
    return jnp.stack([jnp.sum(top1 * weight), jnp.sum(top5 * weight), jnp.sum(weight)])


def world_sources(p: cfg.Params, what: str) -> dict:
    """{"train", "val", "pool"} of the embedded world's object set; another `data.source` is an error."""
    if p.data.source != "world":
        raise cfg.ParamsError(f"data.source {p.data.source!r}: pre-training reads the embedded world's {what}")
    return build_classification_sources(p.data.world_scale, p.data.world_seed)


@PRETRAIN_METHODS.register("supervised")
class PretrainTask:
    """A supervised pre-training run, in the shape `train_and_evaluate` drives."""
    metric = "top1"
    metric_keys = ("top1", "top5")

    def __init__(self, params: cfg.Params, inputs: TaskInputs | None = None, progress: bool = True):
        self.params = p = params
        if p.model.head != CLASSIFICATION_HEAD:
            raise cfg.ParamsError(f"model.head {p.model.head!r}: pre-training trains a classifier "
                                  "(model.head classification)")
        sources = world_sources(p, "classification set (paper-scale ImageNet comes from imported "
                                   "checkpoints, `stlib import-weights`)")
        self.inputs = inputs = resolve_inputs(p, inputs)
        self.mesh = inputs.mesh
        self.train_source, self.val_source, self.pool_source = sources["train"], sources["val"], sources["pool"]
        self.categories = self.train_source.categories
        size = p.pretrain.image_size
        self.train_data = ClassificationData(self.train_source, size)
        self.val_data = ClassificationData(self.val_source, size)
        self.model = create_model(p.model, num_classes=len(self.categories))
        self.tx = create_optimizer(p.train)
        self.train_step = jit_train_step(self._step_fn(), self.mesh)
        self.eval_step = jit_eval_step(functools.partial(classification_eval_step, model=self.model), self.mesh)
        self.progress = progress

    def _step_fn(self):
        return functools.partial(classification_train_step, model=self.model, tx=self.tx,
                                 config=StepConfig.from_params(self.params), mesh=self.mesh)

    def init_state(self):
        """Rand Init; with an init checkpoint the checkpoint's whole classifier when its layers
        match (continued training, e.g. the no-pseudo-label control of Noisy Student), else its
        backbone with a fresh head."""
        p = self.params
        state = create_train_state(self.model, self.tx, p.pretrain.image_size, jax.random.PRNGKey(p.train.seed),
                                   sharding.replicated(self.mesh))
        if self.inputs.init is None:
            return state
        variables, _ = read_checkpoint(self.inputs.init)
        if same_layers(state, variables):
            return restore_variables(state, variables, self.tx, self.mesh)
        params, batch_stats, _ = init_backbone(state.params, state.batch_stats, self.inputs.init, p.model.backbone)
        return state.replace(params=params, batch_stats=batch_stats)

    def evaluate(self, state) -> dict:
        """Top-1 and top-5 accuracy on the held-out split."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        totals = np.zeros(3)
        for batch in self.val_data.eval_batches(self.params.train.eval_batch_size, jax.process_index(),
                                                jax.process_count()):
            totals += np.asarray(self.eval_step(variables, sharding.shard_batch(batch, self.mesh)))
        n = max(totals[2], 1.0)
        return {"top1": float(totals[0] / n), "top5": float(totals[1] / n), "val_images": int(totals[2])}
