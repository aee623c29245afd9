"""SimCLR pre-training in the embedded world (Table 4's SimCLR Init), `pretrain.method: simclr`.

The backbone learns without labels from the world's object images (the classification
set's training images with their labels dropped, plus the unlabeled object pool): two
SimCLR views of each image (`stlib.augment.simclr`), backbone + projection head, NT-Xent at
`pretrain.temperature`, LARS when `train.optimizer: lars` (`stlib.train.simclr`).

Its validation metric is the linear probe (SimCLR Sec. 4 / App. B.8): every evaluation
freezes the backbone, takes pooled features of the labeled training images and of the
held-out split (no augmentation) and fits a multinomial logistic regression; `linear_top1`
(held-out) picks the best checkpoint. The checkpoint holds {"backbone", "projection"}, so a
detector loads its backbone with `model.init: simclr` like any other init.
"""
from __future__ import annotations

import copy
import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stlib import config as cfg
from stlib.augment.classification import prepare_classification_eval
from stlib.augment.simclr import simclr_views
from stlib.data.classification import ClassificationData, ClassificationSource, UNLABELED
from stlib.models.registry import create_backbone
from stlib.train import sharding
from stlib.train.pretrain import world_setup
from stlib.train.simclr import ProjectionHead, SimCLRModel, linear_probe, nt_xent_loss
from stlib.train.state import create_optimizer, create_train_state


def unlabeled_union(name: str, *sources: ClassificationSource) -> ClassificationSource:
    """The images of several sources as one unlabeled source (labels -1; corrupt counted afresh)."""
    out = copy.copy(sources[0])
    out._lock = threading.Lock()
    out.name = name
    out.categories = []
    out.files = [f for s in sources for f in s.files]
    out.labels = np.full(len(out.files), UNLABELED, np.int32)
    out.stats = {"images_corrupt": 0, "files_ignored": sum(s.stats.get("files_ignored", 0) for s in sources)}
    return out


def simclr_train_step(state, batch, *, model, tx, params):
    """One SimCLR step: two views of every image through one forward (BN over all 2N views, as
    SimCLR's global BN), NT-Xent over the global batch. Returns (new_state, metrics)."""
    rng = jax.random.fold_in(state.rng, state.step)
    pp = params.pretrain
    v1, v2 = simclr_views(rng, batch["image"], crop_scale=tuple(pp.crop_scale), color_strength=pp.color_strength)
    n = v1.shape[0]
    weight = batch["example_valid"].astype(jnp.float32)

    def loss_fn(p):
        (_, z), new_vars = model.apply({"params": p, "batch_stats": state.batch_stats}, jnp.concatenate([v1, v2]),
                                       train=True, mutable=["batch_stats"],
                                       rngs={"dropout": jax.random.fold_in(rng, 1)})
        loss, m = nt_xent_loss(z[:n], z[n:], pp.temperature, weight)
        return loss, (m, new_vars["batch_stats"])

    (loss, (m, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    return new_state, {"loss": loss, **m, "grad_norm": optax.tree.norm(grads)}


class SimCLRExperiment:
    """A SimCLR pre-training run, in the shape `stlib.train.loop.train_and_evaluate` drives."""
    metric = "linear_top1"
    metric_keys = ("linear_top1", "linear_train_top1")

    def __init__(self, params: cfg.Params, progress: bool = True):
        self.params = p = params
        self.mesh, sources = world_setup(p, "object images (paper-scale SimCLR comes from imported checkpoints, "
                                            "`stlib import-weights resnet50 ... --input unit`)")
        labeled, self.val_source = sources["train"], sources["val"]
        self.categories = labeled.categories
        self.train_source = unlabeled_union("objects-unlabeled", labeled, sources["pool"])
        size = p.pretrain.image_size
        self.train_data = ClassificationData(self.train_source, size)
        self.probe_train = ClassificationData(labeled, size)
        self.val_data = ClassificationData(self.val_source, size)
        mp, pp = p.model, p.pretrain
        projection = functools.partial(ProjectionHead, num_layers=pp.projection_layers, out_dim=pp.projection_dim,
                                       bn_momentum=mp.bn_momentum, bn_epsilon=mp.bn_epsilon)
        self.model = SimCLRModel(backbone=create_backbone(mp), projection=projection)
        self.tx = create_optimizer(p.train)
        rep, bat = sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)
        self.train_step = jax.jit(functools.partial(simclr_train_step, model=self.model, tx=self.tx, params=p),
                                  in_shardings=(rep, bat), out_shardings=(rep, rep), donate_argnums=0)
        self._features = jax.jit(
            lambda v, x: self.model.apply(v, prepare_classification_eval(x), train=False, method=SimCLRModel.features),
            in_shardings=(rep, bat), out_shardings=rep)
        self.progress = progress

    def init_state(self):
        p = self.params
        return create_train_state(self.model, self.tx, p.pretrain.image_size, jax.random.PRNGKey(p.train.seed),
                                  sharding.replicated(self.mesh))

    def features(self, state, data: ClassificationData) -> tuple[np.ndarray, np.ndarray]:
        """(pooled backbone features [N, C], labels [N]) of every image of `data`, no augmentation."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        feats, labels = [], []
        for batch in data.eval_batches(self.params.train.eval_batch_size, jax.process_index(), jax.process_count()):
            f = np.asarray(self._features(variables, sharding.shard_batch({"image": batch["image"]}, self.mesh)["image"]))
            valid = np.asarray(batch["example_valid"])
            feats.append(f[valid])
            labels.append(np.asarray(batch["label"])[valid])
        return np.concatenate(feats), np.concatenate(labels)

    def evaluate(self, state) -> dict:
        """Linear-probe top-1 of the frozen backbone (held-out split), and on its own training set."""
        xt, yt = self.features(state, self.probe_train)
        xv, yv = self.features(state, self.val_data)
        out = linear_probe(xt, yt, xv, yv, len(self.categories), l2=self.params.pretrain.probe_l2,
                           seed=self.params.train.seed)
        return {**out, "val_images": int(len(yv))}
