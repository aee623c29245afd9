"""Pre-training a detector's backbone on the object-centric classification set (ImageNet Init).

Table 1's ImageNet Init starts detection from a backbone trained to classify ImageNet.
At the mini scale the embedded world's object-centric classification set plays ImageNet
(40 classes, 6,000 images); `pretrain_and_evaluate` trains `model.backbone` with a
classification head (`model.head: classification`) on it and records top-1 on the held-out
split. The run is a run like any other (`outputs/runs/<id>/`, resumable, best checkpoint
by top-1) and its checkpoint holds `{"backbone", "head"}`, so a detector takes its
backbone with `model.init: <run folder>`.

The loop is `stlib.train.loop.train_and_evaluate`; this module supplies the
classification `PretrainExperiment` (data, model, jitted steps, top-1 evaluation) and its
Noisy Student twin `NoisyStudentExperiment` (ImageNet++ Init, `pretrain.method:
noisy_student`). SimCLR (`pretrain.method: simclr`) lives in `stlib.train.simclr_pretrain`.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stlib import config as cfg
from stlib.augment.classification import augment_classification, prepare_classification_eval
from stlib.data.classification import ClassificationData, ClassificationSource, build_classification_sources
from stlib.data.mixture import Mixture, split_batch
from stlib.io import write_bytes_atomic, write_json_atomic
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


def classification_train_step(state, batch, *, model, tx, params, mesh=None):
    """One SGD step of supervised pre-training on a global batch. Returns (new_state, metrics)."""
    rng = jax.random.fold_in(state.rng, state.step)
    pp = params.pretrain
    images = augment_classification(rng, batch["image"], policy=pp.augment,
                                    randaugment_layers=params.augment.randaugment_layers,
                                    randaugment_magnitude=params.augment.randaugment_magnitude, mesh=mesh)
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


def world_setup(p: cfg.Params, what: str):
    """(mesh, {"train", "val", "pool"} sources) of a pre-training run on the embedded world;
    a non-world `data.source` or a batch that does not split over the devices is an error."""
    if p.data.source != "world":
        raise cfg.ParamsError(f"data.source {p.data.source!r}: pre-training reads the embedded world's {what}")
    sharding.maybe_initialize_distributed()
    mesh = sharding.create_mesh()
    sharding.check_batch_size(p.train.batch_size, mesh)
    sharding.check_batch_size(p.train.eval_batch_size, mesh, "train.eval_batch_size")
    return mesh, build_classification_sources(p.data.world_scale, p.data.world_seed)


class PretrainExperiment:
    """Everything a pre-training run needs, in the shape `train_and_evaluate` drives."""
    metric = "top1"
    metric_keys = ("top1", "top5")

    def __init__(self, params: cfg.Params, progress: bool = True):
        self.params = p = params
        if p.model.head != "classification":
            raise cfg.ParamsError(f"model.head {p.model.head!r}: pre-training trains a classifier "
                                  "(model.head classification)")
        self.mesh, sources = world_setup(p, "classification set (paper-scale ImageNet comes from imported "
                                            "checkpoints, `stlib import-weights`)")
        self.train_source, self.val_source = sources["train"], sources["val"]
        self.categories = self.train_source.categories
        size = p.pretrain.image_size
        self.train_data = ClassificationData(self.train_source, size)
        self.val_data = ClassificationData(self.val_source, size)
        self.model = create_model(p.model, num_classes=len(self.categories))
        self.tx = create_optimizer(p.train)
        rep, bat = sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)
        self.train_step = jax.jit(
            functools.partial(classification_train_step, model=self.model, tx=self.tx, params=p, mesh=self.mesh),
            in_shardings=(rep, bat), out_shardings=(rep, rep), donate_argnums=0)
        self.eval_step = jax.jit(functools.partial(classification_eval_step, model=self.model),
                                 in_shardings=(rep, bat), out_shardings=rep)
        self.progress = progress

    def init_state(self):
        """Rand Init; with `model.init` (a name or checkpoint folder) the checkpoint's whole
        classifier when its layers match (continued training, e.g. the no-pseudo-label control
        of Noisy Student), else its backbone with a fresh head."""
        p = self.params
        state = create_train_state(self.model, self.tx, p.pretrain.image_size, jax.random.PRNGKey(p.train.seed),
                                   sharding.replicated(self.mesh))
        if p.model.init == "rand":
            return state
        from stlib.experiments.inits import checkpoint_path
        from stlib.models.weight_import import init_backbone, read_checkpoint
        path = checkpoint_path(p.model.init, p)
        variables, _ = read_checkpoint(path)
        if _same_layers(state, variables):
            return restore_variables(state, variables, self.tx, self.mesh)
        params, batch_stats, _ = init_backbone(state.params, state.batch_stats, path, p.model.backbone)
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


def _same_layers(state, variables: dict) -> bool:
    """Whether `variables` ({"params", "batch_stats"}) has exactly the state's layers and shapes."""
    mine = (state.params, state.batch_stats)
    theirs = (variables["params"], variables.get("batch_stats", {}))
    return jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(theirs) and all(
        a.shape == np.shape(b) for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)))


def restore_variables(state, variables: dict, tx, mesh):
    """`state` with all weights and BN statistics from `variables` and a fresh optimizer state."""
    rep = sharding.replicated(mesh)
    params = jax.device_put(jax.tree.map(jnp.asarray, variables["params"]), rep)
    stats = jax.device_put(jax.tree.map(jnp.asarray, variables.get("batch_stats", {})), rep)
    return state.replace(params=params, batch_stats=stats, opt_state=jax.jit(tx.init, out_shardings=rep)(params))


# ----------------------------------------------------------------------------
# Noisy Student (Xie et al. 2020): ImageNet++ Init
# ----------------------------------------------------------------------------


def soft_cross_entropy(logits, targets, weight):
    """Cross-entropy against target distributions [B, K], averaged over examples with weight 1."""
    ce = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
    return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


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


def noisy_student_train_step(state, batch, *, model, tx, params, mesh=None):
    """One step of a noised student on {"labeled", "pseudo"} streams: both are augmented with
    the policy (RandAugment for a noised student), the model runs with dropout and stochastic
    depth, and the loss is labeled CE (label smoothing) + pseudo CE against the teacher's targets,
    each averaged over its own stream (Xie et al. 2020, Sec. 2)."""
    rng = jax.random.fold_in(state.rng, state.step)
    pp = params.pretrain
    lab, pse = batch["labeled"], batch["pseudo"]
    n_l = lab["image"].shape[0]
    images = augment_classification(rng, jnp.concatenate([lab["image"], pse["image"]]), policy=pp.augment,
                                    randaugment_layers=params.augment.randaugment_layers,
                                    randaugment_magnitude=params.augment.randaugment_magnitude, mesh=mesh)
    w_l = lab["example_valid"].astype(jnp.float32)
    w_p = pse["example_valid"].astype(jnp.float32)
    k = pse["target"].shape[-1]
    t_l = jax.nn.one_hot(lab["label"], k) * (1.0 - pp.label_smoothing) + pp.label_smoothing / k

    def loss_fn(p):
        logits, new_vars = model.apply({"params": p, "batch_stats": state.batch_stats}, images, train=True,
                                       mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(rng, 1)})
        loss_l = soft_cross_entropy(logits[:n_l], t_l, w_l)
        loss_p = soft_cross_entropy(logits[n_l:], pse["target"], w_p)
        acc = jnp.sum((jnp.argmax(logits[:n_l], -1) == lab["label"]) * w_l) / jnp.maximum(jnp.sum(w_l), 1.0)
        agree = jnp.sum((jnp.argmax(logits[n_l:], -1) == jnp.argmax(pse["target"], -1)) * w_p) / jnp.maximum(
            jnp.sum(w_p), 1.0)
        return loss_l + loss_p, (loss_l, loss_p, acc, agree, new_vars["batch_stats"])

    (loss, (loss_l, loss_p, acc, agree, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    return new_state, {"loss": loss, "labeled_loss": loss_l, "pseudo_loss": loss_p, "accuracy": acc,
                       "pseudo_agreement": agree, "grad_norm": optax.tree.norm(grads)}


def _load_teacher(teacher: str, params: cfg.Params):
    """(teacher run folder, its Params, its model, its variables) for `pretrain.teacher`."""
    from stlib.experiments.inits import checkpoint_path
    from stlib.models.weight_import import read_checkpoint
    path = checkpoint_path(teacher, params, what="pretrain.teacher")
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
    variables, _ = read_checkpoint(run_dir)
    return run_dir, tp, variables


class NoisyStudentExperiment(PretrainExperiment):
    """Noisy Student (Xie et al. 2020) in the embedded world: the ImageNet++ Init analogue.

    1. The teacher (`pretrain.teacher`: the supervised run, `imagenet`) labels the unlabeled
       object pool without noise; its class probabilities are stored in the run folder
       (`pseudo_labels.npz`, written once, reused on resume).
    2. Pool images below `pretrain.confidence_threshold` are dropped and classes balanced
       (`select_pseudo_labels`).
    3. A student of `model.backbone`, from scratch and noised (`pretrain.augment:
       randaugment`, `model.classifier_dropout`, `model.drop_path_rate`), trains on batches
       that are `1 - pseudo_share` labeled and `pseudo_share` pseudo-labeled.
    """

    def __init__(self, params: cfg.Params, progress: bool = True, run_dir=None):
        super().__init__(params, progress)
        p = params
        self.teacher_dir, self.teacher_params, teacher_vars = _load_teacher(p.pretrain.teacher, p)
        self._teacher_vars = teacher_vars if p.pretrain.student_init == "teacher" else None
        pool = build_classification_sources(p.data.world_scale, p.data.world_seed)["pool"]
        self.pool_source = pool
        probs = self._pool_probabilities(pool, teacher_vars, run_dir)
        if p.pretrain.pseudo_label == "hard":
            probs = np.eye(probs.shape[1], dtype=np.float32)[probs.argmax(1)] * (probs.max(1, keepdims=True) > 0)
        positions = select_pseudo_labels(probs, p.pretrain.confidence_threshold, p.pretrain.balance)
        self.pseudo_stats = self._pseudo_stats(probs, positions)
        pseudo = PseudoLabeledData(pool, p.pretrain.image_size, probs, positions)
        sizes = split_batch(p.train.batch_size, {"labeled": 1.0 - p.pretrain.pseudo_share,
                                                 "pseudo": p.pretrain.pseudo_share},
                            multiple=self.mesh.devices.size * jax.process_count())
        self.train_data = Mixture({"labeled": self.train_data, "pseudo": pseudo}, sizes)
        rep, bat = sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)
        self.train_step = jax.jit(
            functools.partial(noisy_student_train_step, model=self.model, tx=self.tx, params=p, mesh=self.mesh),
            in_shardings=(rep, bat), out_shardings=(rep, rep), donate_argnums=0)
        if run_dir is not None and jax.process_index() == 0:
            write_json_atomic(Path(run_dir) / "pseudo_labels.json", self.pseudo_stats)

    def init_state(self):
        """Rand Init, or (`pretrain.student_init: teacher`) the teacher's weights and BN statistics
        with a fresh optimizer; a student whose layers differ from the teacher's is refused."""
        state = super().init_state()
        if self._teacher_vars is None:
            return state
        if not _same_layers(state, self._teacher_vars):
            raise cfg.ParamsError(
                f"pretrain.student_init teacher: the student ({self.params.model.backbone}) and the teacher "
                f"({self.teacher_params.model.backbone}, {self.teacher_dir}) have different layers; use "
                "student_init scratch for a different student")
        return restore_variables(state, self._teacher_vars, self.tx, self.mesh)

    def _pool_probabilities(self, pool: ClassificationSource, teacher_vars: dict, run_dir) -> np.ndarray:
        """The teacher's softmax over every pool image (cached in run_dir/pseudo_labels.npz)."""
        cache = Path(run_dir) / "pseudo_labels.npz" if run_dir is not None else None
        teacher_id = Path(self.teacher_dir).name
        if cache is not None and cache.is_file():
            with np.load(cache) as z:
                if str(z["teacher"]) == teacher_id and len(z["probs"]) == len(pool):
                    return z["probs"]
        tp = self.teacher_params
        model = create_model(tp.model, num_classes=len(self.categories))
        fn = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, prepare_classification_eval(x), train=False)),
                     in_shardings=(sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)),
                     out_shardings=sharding.replicated(self.mesh))
        variables = jax.device_put(teacher_vars, sharding.replicated(self.mesh))
        data = ClassificationData(pool, tp.pretrain.image_size)
        probs = np.zeros((len(pool), len(self.categories)), np.float32)  # corrupt images stay all-zero
        for batch in data.eval_batches(self.params.train.eval_batch_size, jax.process_index(), jax.process_count()):
            out = np.asarray(fn(variables, sharding.shard_batch({"image": batch["image"]}, self.mesh)["image"]))
            valid = np.asarray(batch["example_valid"])
            probs[np.asarray(batch["index"])[valid]] = out[valid]
        if cache is not None and jax.process_index() == 0:
            import io
            buf = io.BytesIO()
            np.savez(buf, probs=probs, teacher=np.asarray(teacher_id))
            write_bytes_atomic(cache, buf.getvalue())
        return probs

    def _pseudo_stats(self, probs: np.ndarray, positions: np.ndarray) -> dict:
        """What the student trains on, and (for the embedded world, whose pool labels are hidden
        from training) how right the teacher's labels are."""
        conf, cls = probs.max(1), probs.argmax(1)
        kept = np.unique(positions)
        counts = np.bincount(cls[positions], minlength=probs.shape[1])
        out = {"teacher": str(self.teacher_dir), "pool_images": int(len(probs)),
               "confidence_threshold": self.params.pretrain.confidence_threshold,
               "kept_images": int(len(kept)), "training_positions": int(len(positions)),
               "per_class_min": int(counts.min()), "per_class_max": int(counts.max()),
               "mean_confidence_kept": float(conf[kept].mean()) if len(kept) else None}
        hidden = hidden_pool_labels(self.pool_source)
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


def pretrain_and_evaluate(params: cfg.Params, run_dir, *, progress: bool = True) -> dict:
    """Pre-trains `params.model.backbone` into `run_dir` with `pretrain.method` (supervised,
    noisy_student or simclr); returns final metrics (best top-1/top-5, or linear-probe top-1
    for SimCLR, and the rest `train_and_evaluate` records)."""
    from stlib.train.loop import train_and_evaluate
    method = params.pretrain.method
    if method == "noisy_student":
        exp = NoisyStudentExperiment(params, progress, run_dir=run_dir)
    elif method == "simclr":
        from stlib.train.simclr_pretrain import SimCLRExperiment
        exp = SimCLRExperiment(params, progress)
    else:
        exp = PretrainExperiment(params, progress)
    return train_and_evaluate(params, run_dir, progress=progress, experiment=exp)


def describe_run(run_dir):
    """A small table of what a pre-training run did beyond its top-1: Noisy Student's pseudo
    labels (kept images, balance, the teacher's accuracy on the pool against the world's
    hidden labels) or SimCLR's linear probe; for notebooks."""
    import pandas as pd
    run_dir = Path(run_dir)
    rows = {}
    if (run_dir / "pseudo_labels.json").is_file():
        rows.update(json.loads((run_dir / "pseudo_labels.json").read_text()))
    if (run_dir / "metrics.json").is_file():
        m = json.loads((run_dir / "metrics.json").read_text())
        rows.update({k: m[k] for k in ("top1", "top5", "linear_top1", "linear_train_top1", "contrast_accuracy")
                     if m.get(k) is not None})
    if not rows:
        return pd.DataFrame({"note": ["supervised pre-training: nothing beyond the metrics above"]})
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))
