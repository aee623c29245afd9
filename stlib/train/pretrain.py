"""Pre-training a detector's backbone on the object-centric classification set (ImageNet Init).

Table 1's ImageNet Init starts detection from a backbone trained to classify ImageNet.
At the mini scale the embedded world's object-centric classification set plays ImageNet
(40 classes, 6,000 images); `pretrain_and_evaluate` trains `model.backbone` with a
classification head (`model.head: classification`) on it and records top-1 on the held-out
split. The run is a run like any other (`outputs/runs/<id>/`, resumable, best checkpoint
by top-1) and its checkpoint holds `{"backbone", "head"}`, so a detector takes its
backbone with `model.init: <run folder>`.

The loop is `stlib.train.loop.train_and_evaluate`; this module supplies the
classification `PretrainExperiment` (data, model, jitted steps, top-1 evaluation).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stlib import config as cfg
from stlib.augment.classification import augment_classification, prepare_classification_eval
from stlib.data.classification import ClassificationData, build_classification_sources
from stlib.models.registry import create_model
from stlib.train import sharding
from stlib.train.state import create_optimizer, create_train_state


def classification_loss(logits, labels, weight, label_smoothing: float = 0.0):
    """Softmax cross-entropy with label smoothing, averaged over examples with weight 1.

    Returns (loss, accuracy)."""
    k = logits.shape[-1]
    target = jax.nn.one_hot(labels, k) * (1.0 - label_smoothing) + label_smoothing / k
    ce = -jnp.sum(target * jax.nn.log_softmax(logits), axis=-1)
    n = jnp.maximum(jnp.sum(weight), 1.0)
    acc = jnp.sum((jnp.argmax(logits, -1) == labels) * weight) / n
    return jnp.sum(ce * weight) / n, acc


def classification_train_step(state, batch, *, model, tx, params):
    """One SGD step of supervised pre-training on a global batch. Returns (new_state, metrics)."""
    rng = jax.random.fold_in(state.rng, state.step)
    pp = params.pretrain
    images = augment_classification(rng, batch["image"], policy=pp.augment,
                                    randaugment_layers=params.augment.randaugment_layers,
                                    randaugment_magnitude=params.augment.randaugment_magnitude)
    weight = batch["example_valid"].astype(jnp.float32)

    def loss_fn(p):
        logits, new_vars = model.apply({"params": p, "batch_stats": state.batch_stats}, images, train=True,
                                       mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(rng, 1)})
        loss, acc = classification_loss(logits, batch["label"], weight, pp.label_smoothing)
        return loss, (acc, new_vars["batch_stats"])

    (loss, (acc, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
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


class PretrainExperiment:
    """Everything a pre-training run needs, in the shape `train_and_evaluate` drives."""
    metric = "top1"
    metric_keys = ("top1", "top5")

    def __init__(self, params: cfg.Params, progress: bool = True):
        self.params = p = params
        if p.model.head != "classification":
            raise cfg.ParamsError(f"model.head {p.model.head!r}: pre-training trains a classifier "
                                  "(model.head classification)")
        if p.data.source != "world":
            raise cfg.ParamsError(f"data.source {p.data.source!r}: pre-training reads the embedded world's "
                                  "classification set (paper-scale ImageNet comes from imported checkpoints, "
                                  "`stlib import-weights`)")
        sharding.maybe_initialize_distributed()
        self.mesh = sharding.create_mesh()
        sharding.check_batch_size(p.train.batch_size, self.mesh)
        sharding.check_batch_size(p.train.eval_batch_size, self.mesh, "train.eval_batch_size")
        sources = build_classification_sources(p.data.world_scale, p.data.world_seed)
        self.train_source, self.val_source = sources["train"], sources["val"]
        self.categories = self.train_source.categories
        size = p.pretrain.image_size
        self.train_data = ClassificationData(self.train_source, size)
        self.val_data = ClassificationData(self.val_source, size)
        self.model = create_model(p.model, num_classes=len(self.categories))
        self.tx = create_optimizer(p.train)
        rep, bat = sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)
        self.train_step = jax.jit(
            functools.partial(classification_train_step, model=self.model, tx=self.tx, params=p),
            in_shardings=(rep, bat), out_shardings=(rep, rep), donate_argnums=0)
        self.eval_step = jax.jit(functools.partial(classification_eval_step, model=self.model),
                                 in_shardings=(rep, bat), out_shardings=rep)
        self.progress = progress

    def init_state(self):
        p = self.params
        return create_train_state(self.model, self.tx, p.pretrain.image_size, jax.random.PRNGKey(p.train.seed),
                                  sharding.replicated(self.mesh))

    def evaluate(self, state) -> dict:
        """Top-1 and top-5 accuracy on the held-out split."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        totals = np.zeros(3)
        for batch in self.val_data.eval_batches(self.params.train.eval_batch_size, jax.process_index(),
                                                jax.process_count()):
            totals += np.asarray(self.eval_step(variables, sharding.shard_batch(batch, self.mesh)))
        n = max(totals[2], 1.0)
        return {"top1": float(totals[0] / n), "top5": float(totals[1] / n), "val_images": int(totals[2])}


def pretrain_and_evaluate(params: cfg.Params, run_dir, *, progress: bool = True) -> dict:
    """Pre-trains `params.model.backbone` as a classifier into `run_dir`; returns final metrics
    (best top-1/top-5 and the rest `train_and_evaluate` records)."""
    from stlib.train.loop import train_and_evaluate
    return train_and_evaluate(params, run_dir, progress=progress, experiment=PretrainExperiment(params, progress))
