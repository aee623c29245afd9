"""Optimizers by name (`train.optimizer`) and the learning-rate schedule they share.

sgd (Sec. 3.2, REFERENCE §4.4/§4.6): SGD with momentum 0.9; L2 weight decay on conv/dense
kernels only (not BN, not biases), added to the gradient before clipping and momentum, as the
TPU code's L2 loss term does; optional global-norm clipping.

lars (SimCLR's, Chen et al. 2020 Sec. B.1): LARS with momentum, BN parameters and biases
excluded from weight decay and trust-ratio scaling (`lars_optimizer`).

Both: linear warmup from `warmup_init_lr` to `base_lr`, then cosine decay to 0 at the last step
(or SpineNet's step schedule, `train.lr_schedule: step`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from stlib.registry import Registry

__all__ = ["OPTIMIZERS", "create_optimizer", "kernel_mask", "lars_mask", "lars_optimizer",
           "learning_rate_schedule"]

# name -> builder(train params) -> optax.GradientTransformation (`train.optimizer`)
OPTIMIZERS = Registry("optimizer", field="train.optimizer")


def learning_rate_schedule(tp) -> optax.Schedule:
    """Sec. 3.2: linear warmup (warmup_init_lr -> base_lr over warmup_steps), then cosine decay to
    0 at the last step; or, with `lr_schedule: step` (SpineNet's, REFERENCE §4.6), base_lr until
    each of `lr_boundaries`, then the matching `lr_levels`."""
    if getattr(tp, "lr_schedule", "cosine") == "step":
        levels = jnp.asarray((tp.base_lr, *map(float, tp.lr_levels)), jnp.float32)
        bounds = jnp.asarray(tuple(tp.lr_boundaries), jnp.int32)
        warmup = max(tp.warmup_steps, 1)

        def step_schedule(step):
            warm = tp.warmup_init_lr + (tp.base_lr - tp.warmup_init_lr) * step / warmup
            return jnp.where(step < tp.warmup_steps, warm, levels[jnp.searchsorted(bounds, step, side="right")])
        return step_schedule
    return optax.warmup_cosine_decay_schedule(
        init_value=tp.warmup_init_lr, peak_value=tp.base_lr, warmup_steps=tp.warmup_steps,
        decay_steps=tp.steps, end_value=0.0)


def kernel_mask(params):
    """True for conv/dense kernels (the variables TPU's L2 term covers: `.*(kernel|weight)`)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def create_optimizer(tp) -> optax.GradientTransformation:
    """The optimizer `tp.optimizer` (a `stlib.config.TrainParams`; sgd when it has none) names."""
    return OPTIMIZERS.get(getattr(tp, "optimizer", "sgd"))(tp)


@OPTIMIZERS.register("sgd")
def sgd_optimizer(tp) -> optax.GradientTransformation:
    """Momentum SGD with L2 on the kernels (`kernel_mask`), then optional clipping."""
    parts = [optax.add_decayed_weights(tp.weight_decay, mask=kernel_mask)]
    if tp.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(tp.grad_clip_norm))
    parts.append(optax.sgd(learning_rate_schedule(tp), momentum=tp.momentum))
    return optax.chain(*parts)


@OPTIMIZERS.register("lars")
def lars_from_params(tp) -> optax.GradientTransformation:
    """SimCLR's LARS (`lars_optimizer`: weight decay and trust ratio on all but BN parameters and
    biases), after optional clipping."""
    lars = lars_optimizer(learning_rate_schedule(tp), tp.weight_decay, tp.momentum)
    if tp.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(tp.grad_clip_norm), lars)
    return lars


# ----------------------------------------------------------------------------- LARS

_LARS_EXCLUDED = ("bias", "scale")


def lars_mask(params):
    """True for parameters that get LARS weight decay and trust-ratio scaling.

    SimCLR excludes `['batch_normalization', 'bias']` (plus its supervised head, which it
    regularizes separately) from both (`model_util.get_optimizer`; `lars_optimizer.py` sets
    exclude_from_layer_adaptation to the weight-decay list). In flax a BatchNorm's parameters
    are `scale` and `bias` and a Dense/Conv bias is `bias`, so every leaf named `bias` or
    `scale` is excluded; kernels (and any other weight) are included.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in _LARS_EXCLUDED, params)


def lars_optimizer(learning_rate, weight_decay: float, momentum: float = 0.9,
                   trust_coefficient: float = 0.001) -> optax.GradientTransformation:
    """LARS (You et al. 2017) as SimCLR trains with it, built on `optax.lars`.

    Per included tensor (`lars_mask`): g <- g + weight_decay * w, then g is scaled by the trust
    ratio trust_coefficient * ||w|| / ||g|| (1 where either norm is 0), then by the learning
    rate, into a heavy-ball momentum buffer (SimCLR's "classic" momentum, no Nesterov).
    Excluded tensors (BN scale/bias, biases) get plain momentum SGD.

    SimCLR's settings (Sec. 2.3 "Default setting"): learning rate 0.3 x BatchSize / 256 (4.8 at
    batch 4096), weight decay 1e-6, momentum 0.9, trust coefficient (`eeta`) 0.001, 10 warmup
    epochs then cosine decay. Appendix B.1: square-root scaling, 0.075 x sqrt(BatchSize), does
    better for small batches and short schedules. The repository README's CIFAR-10 command
    (batch 512, ResNet-18) uses learning rate 1.0 and weight decay 1e-4.

    Args:
      learning_rate: a float or an optax schedule.
      weight_decay: L2 coefficient added to the gradient of included tensors (>= 0).
      momentum: momentum decay.
      trust_coefficient: LARS eta.
    """
    if weight_decay < 0:
        raise ValueError(f"lars_optimizer: weight_decay must be >= 0, got {weight_decay}")
    if trust_coefficient <= 0:
        raise ValueError(f"lars_optimizer: trust_coefficient must be > 0, got {trust_coefficient}")
    return optax.lars(learning_rate, weight_decay=weight_decay, weight_decay_mask=lars_mask,
                      trust_coefficient=trust_coefficient, trust_ratio_mask=lars_mask, momentum=momentum)
