"""The jitted steps: `train_step` (augment -> targets -> loss -> SGD) and `predict_step`.

Both run on the global batch sharded over the mesh's `data` axis; augmentation and
anchor labelling run on the device inside the step.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from stlib import losses
from stlib.augment import augment_batch, prepare_eval_batch
from stlib.data.anchors import assign_targets, flatten_level_outputs
from stlib.eval.postprocess import postprocess


def compute_targets(batch, anchors, loss_params):
    fn = functools.partial(assign_targets, anchors, match_threshold=loss_params.match_threshold,
                           unmatched_threshold=loss_params.unmatched_threshold)
    return jax.vmap(fn)(batch["boxes"], batch["classes"], batch["valid"])


def train_step(state, batch, *, model, tx, anchors, params, mesh=None):
    """One SGD step on a global batch (sharded on `mesh`'s `data` axis). Returns (new_state, metrics)."""
    rng = jax.random.fold_in(state.rng, state.step)
    batch = augment_batch(rng, batch, params.augment, mesh=mesh)
    dropout_rng = jax.random.fold_in(rng, 1)   # drop-connect / dropout of backbones that have them
    targets = compute_targets(batch, anchors, params.loss)
    num_classes = model.num_classes
    weight = batch["example_valid"].astype(jnp.float32)

    def loss_fn(p):
        (cls_out, box_out), new_vars = model.apply(
            {"params": p, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"],
            rngs={"dropout": dropout_rng})
        cls = flatten_level_outputs(cls_out, num_classes)
        box = flatten_level_outputs(box_out, 4)
        lp = params.loss
        loss, aux = losses.detection_loss(cls, box, targets["cls_targets"], targets["box_targets"], num_classes,
                                          lp.focal_alpha, lp.focal_gamma, lp.huber_delta, lp.box_loss_weight,
                                          example_weight=weight)
        return loss, (aux, new_vars["batch_stats"])

    (loss, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
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
