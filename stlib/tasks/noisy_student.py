"""Noisy Student (Xie et al. 2020) in the embedded world: the ImageNet++ Init analogue,
`pretrain.method: noisy_student`.

The teacher's labels of the unlabeled object pool are made before the task
(`stlib.pseudo.classification`, assembled by `stlib.experiments.assemble`) and handed in as
the "pseudo" stream. The student, of `model.backbone`, from scratch or from the teacher's
weights (`TaskInputs.start_from`) and noised (`pretrain.augment: randaugment`,
`model.classifier_dropout`, `model.drop_path_rate`), trains on batches that are
`1 - pretrain.pseudo_share` labeled and `pretrain.pseudo_share` pseudo-labeled.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from stlib import config as cfg
from stlib.data.mixture import Mixture, split_batch
from stlib.losses import soft_cross_entropy
from stlib.tasks.base import PRETRAIN_METHODS, TaskInputs
from stlib.tasks.pretrain import PretrainTask, StepConfig
from stlib.train.state import restore_variables, same_layers
from stlib.train.step import apply_gradients, step_rng


def noisy_student_train_step(state, batch, *, model, tx, config: StepConfig, mesh=None):
    """One step of a noised student on {"labeled", "pseudo"} streams: both are augmented with
    the policy (RandAugment for a noised student), the model runs with dropout and stochastic
    depth, and the loss is labeled CE (label smoothing) + pseudo CE against the teacher's targets,
    each averaged over its own stream (Xie et al. 2020, Sec. 2)."""
    rng = step_rng(state)
    lab, pse = batch["labeled"], batch["pseudo"]
    n_l = lab["image"].shape[0]
    images = config.augment(rng, jnp.concatenate([lab["image"], pse["image"]]), mesh)
    w_l = lab["example_valid"].astype(jnp.float32)
    w_p = pse["example_valid"].astype(jnp.float32)
    k = pse["target"].shape[-1]
    t_l = jax.nn.one_hot(lab["label"], k) * (1.0 - config.label_smoothing) + config.label_smoothing / k

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
    new_state = apply_gradients(state, grads, batch_stats, tx)
    return new_state, {"loss": loss, "labeled_loss": loss_l, "pseudo_loss": loss_p, "accuracy": acc,
                       "pseudo_agreement": agree, "grad_norm": optax.tree.norm(grads)}


@PRETRAIN_METHODS.register("noisy_student")
class NoisyStudentTask(PretrainTask):
    """A Noisy Student run: the labeled set plus the "pseudo" stream it is handed."""

    def __init__(self, params: cfg.Params, inputs: TaskInputs | None = None, progress: bool = True):
        super().__init__(params, inputs, progress)
        pseudo = self.inputs.streams.get("pseudo")
        if pseudo is None:
            raise cfg.ParamsError("pretrain.method noisy_student: the task is handed its teacher's pseudo-labelled "
                                  "pool; build the run with stlib.experiments.assemble.build_task(params)")
        share = params.pretrain.pseudo_share
        sizes = split_batch(params.train.batch_size, {"labeled": 1.0 - share, "pseudo": share},
                            multiple=self.mesh.devices.size * jax.process_count())
        self.train_data = Mixture({"labeled": self.train_data, "pseudo": pseudo}, sizes)

    def _step_fn(self):
        return functools.partial(noisy_student_train_step, model=self.model, tx=self.tx,
                                 config=StepConfig.from_params(self.params), mesh=self.mesh)

    def init_state(self):
        """Rand Init, or the variables it was handed to start from (`pretrain.student_init: teacher`:
        the teacher's weights and BN statistics) with a fresh optimizer; a student whose layers
        differ from them is refused."""
        state = super().init_state()
        start = self.inputs.start_from
        if start is None:
            return state
        if not same_layers(state, start):
            raise cfg.ParamsError(
                f"pretrain.student_init teacher: the student ({self.params.model.backbone}) and "
                f"{self.inputs.start_from_name or 'the teacher'} have different layers; use "
                "student_init scratch for a different student")
        return restore_variables(state, start, self.tx, self.mesh)
