"""SimCLR pre-training in the embedded world (Table 4's SimCLR Init), `pretrain.method: simclr`.

The backbone learns without labels from the world's object images (the classification
set's training images with their labels dropped, plus the unlabeled object pool): two
SimCLR views of each image (`stlib.augment.simclr`), backbone + projection head
(`stlib.models.simclr`), NT-Xent at `pretrain.temperature` (`stlib.losses.nt_xent_loss`),
LARS when `train.optimizer: lars` (`stlib.train.optimizers`).

Its validation metric is the linear probe (SimCLR Sec. 4 / App. B.8, `stlib.eval.linear_probe`):
every evaluation freezes the backbone, takes pooled features of the labeled training images
and of the held-out split (no augmentation) and fits a multinomial logistic regression;
`linear_top1` (held-out) picks the best checkpoint. The checkpoint holds {"backbone",
"projection"}, so a detector loads its backbone with `model.init: simclr` like any other init.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stlib import config as cfg
from stlib.augment.classification import prepare_classification_eval
from stlib.augment.simclr import simclr_views
from stlib.data.classification import ClassificationData, unlabeled_union
from stlib.eval.linear_probe import linear_probe
from stlib.losses import nt_xent_loss
from stlib.models.registry import create_backbone
from stlib.models.simclr import ProjectionHead, SimCLRModel
from stlib.tasks.base import PRETRAIN_METHODS, TaskInputs, resolve_inputs
from stlib.tasks.pretrain import world_sources
from stlib.train import sharding
from stlib.train.optimizers import create_optimizer
from stlib.train.state import create_train_state
from stlib.train.step import apply_gradients, jit_eval_step, jit_train_step, step_rng


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the SimCLR step reads: the views' crop scale and colour strength, the temperature."""
    crop_scale: tuple
    color_strength: float
    temperature: float

    @classmethod
    def from_params(cls, p: cfg.Params) -> "StepConfig":
        return cls(tuple(p.pretrain.crop_scale), p.pretrain.color_strength, p.pretrain.temperature)


def simclr_train_step(state, batch, *, model, tx, config: StepConfig):
    """One SimCLR step: two views of every image through one forward (BN over all 2N views, as
    SimCLR's global BN), NT-Xent over the global batch. Returns (new_state, metrics)."""
    rng = step_rng(state)
    v1, v2 = simclr_views(rng, batch["image"], crop_scale=config.crop_scale, color_strength=config.color_strength)
    n = v1.shape[0]
    weight = batch["example_valid"].astype(jnp.float32)

    def loss_fn(p):
        (_, z), new_vars = model.apply({"params": p, "batch_stats": state.batch_stats}, jnp.concatenate([v1, v2]),
                                       train=True, mutable=["batch_stats"],
                                       rngs={"dropout": jax.random.fold_in(rng, 1)})
        loss, m = nt_xent_loss(z[:n], z[n:], config.temperature, weight)
        return loss, (m, new_vars["batch_stats"])

    (loss, (m, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = apply_gradients(state, grads, batch_stats, tx)
    return new_state, {"loss": loss, **m, "grad_norm": optax.tree.norm(grads)}


@PRETRAIN_METHODS.register("simclr")
class SimCLRTask:
    """A SimCLR pre-training run, in the shape `stlib.train.loop.train_and_evaluate` drives."""
    metric = "linear_top1"
    metric_keys = ("linear_top1", "linear_train_top1")

    def __init__(self, params: cfg.Params, inputs: TaskInputs | None = None, progress: bool = True):
        self.params = p = params
        sources = world_sources(p, "object images (paper-scale SimCLR comes from imported checkpoints, "
                                   "`stlib import-weights resnet50 ... --input unit`)")
        self.inputs = inputs = resolve_inputs(dataclasses.replace(p, model=dataclasses.replace(p.model, init="rand")),
                                              inputs)
        self.mesh = inputs.mesh
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
        self.train_step = jit_train_step(
            functools.partial(simclr_train_step, model=self.model, tx=self.tx, config=StepConfig.from_params(p)),
            self.mesh)
        self._features = jit_eval_step(
            lambda v, x: self.model.apply(v, prepare_classification_eval(x), train=False, method=SimCLRModel.features),
            self.mesh)
        self.progress = progress

    def init_state(self):
        """Rand Init: SimCLR learns the backbone from scratch."""
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
