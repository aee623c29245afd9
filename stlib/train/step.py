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
from stlib.data.anchors import assign_soft_targets, assign_targets, flatten_level_outputs
from stlib.eval.postprocess import postprocess


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


def train_step(state, batch, *, model, tx, anchors, params, mesh=None, classifier=None):
    """One SGD step on a global batch of data streams (each sharded on `mesh`'s `data` axis).

    `batch` is {stream: batch} (`stlib.data.mixture.Mixture`): "human" (labeled detection),
    optionally "pseudo" (the teacher's pseudo boxes, Sec. 3.2) and "classification" (joint
    training, Sec. 5; needs `classifier`, a `stlib.train.joint.JointClassifier`).
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
    rng = jax.random.fold_in(state.rng, state.step)
    names = [n for n in DETECTION_STREAMS if n in batch]
    soft_names = [n for n in names if "scores" in batch[n]]   # soft pseudo labels (self_train.targets: soft)
    if soft_names:   # the other streams' boxes count fully; their loss stays the hard one
        batch = {n: (b if n not in names or "scores" in b else {**b, "scores": b["valid"].astype(jnp.float32)})
                 for n, b in batch.items()}
    det = augment_batch(rng, _concat([batch[n] for n in names]), params.augment, mesh=mesh)
    dropout_rng = jax.random.fold_in(rng, 1)   # drop-connect / dropout of backbones that have them
    targets = compute_targets(det, anchors, params.loss)
    num_classes = model.num_classes
    weight = det["example_valid"].astype(jnp.float32)
    sizes = [batch[n]["image"].shape[0] for n in names]
    st, lp = params.self_train, params.loss
    soft_targets = {}
    start = 0
    for name, n in zip(names, sizes):
        if name in soft_names:
            soft_targets[name] = compute_soft_targets({k: det[k][start:start + n] for k in ("boxes", "classes", "scores", "valid")},
                                                      anchors, lp, num_classes)
        start += n
    cls_batch = batch.get("classification")
    if cls_batch is not None:
        from stlib.augment.classification import augment_classification
        cls_images = augment_classification(jax.random.fold_in(rng, 2), cls_batch["image"],
                                            policy=params.pretrain.augment,
                                            randaugment_layers=params.augment.randaugment_layers,
                                            randaugment_magnitude=params.augment.randaugment_magnitude, mesh=mesh)

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
                                                    jax.random.fold_in(rng, 3), params.pretrain.label_smoothing)
            stream_losses["classification"] = loss
            aux["classification"] = {"accuracy": acc}
            if head_stats:
                new_stats["cls_head"] = head_stats
        if len(stream_losses) == 1:
            return stream_losses["human"], (aux["human"], new_stats, None)
        averages = losses.update_loss_averages(state.loss_avg, stream_losses, st.norm_momentum)
        alphas = {"pseudo": st.alpha, "classification": st.joint_alpha}
        total, weights = losses.combine_stream_losses(stream_losses, alphas, averages, "human", st.loss_norm)
        flat = {}
        for name, l in stream_losses.items():
            flat[f"{name}/loss"] = l
            flat[f"{name}/weight"] = weights[name]
            flat[f"{name}/loss_avg"] = averages[name]
            flat.update({f"{name}/{k}": v for k, v in aux[name].items()})
        return total, (flat, new_stats, averages)

    (loss, (aux, batch_stats, averages)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
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
