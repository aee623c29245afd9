"""TrainState, optimizer and learning-rate schedule.

Optimizer (Sec. 3.2, REFERENCE §4.4/§4.6): SGD with momentum 0.9; L2 weight decay on
conv/dense kernels only (not BN, not biases), added to the gradient before clipping and
momentum, as the TPU code's L2 loss term does; optional global-norm clipping; linear
warmup from `warmup_init_lr` to `base_lr`, then cosine decay to 0 at the last step.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


@flax.struct.dataclass
class SelfTrainState(TrainState):
    """TrainState of training on several streams (self-training, joint training): adds the
    moving averages of each stream's loss that Appendix B's loss normalization divides by
    ({"count", stream: f32}), so a resumed run continues them exactly."""
    loss_avg: Any = None


def learning_rate_schedule(tp) -> optax.Schedule:
    """Sec. 3.2: linear warmup (warmup_init_lr -> base_lr over warmup_steps), then cosine decay."""
    return optax.warmup_cosine_decay_schedule(
        init_value=tp.warmup_init_lr, peak_value=tp.base_lr, warmup_steps=tp.warmup_steps,
        decay_steps=tp.steps, end_value=0.0)


def kernel_mask(params):
    """True for conv/dense kernels (the variables TPU's L2 term covers: `.*(kernel|weight)`)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def create_optimizer(tp) -> optax.GradientTransformation:
    """`train.optimizer` sgd (above) or lars (SimCLR's; `stlib.train.simclr.lars_optimizer`, its
    weight decay and trust ratio on all but BN parameters and biases), with the same schedule."""
    if getattr(tp, "optimizer", "sgd") == "lars":
        from stlib.train.simclr import lars_optimizer
        lars = lars_optimizer(learning_rate_schedule(tp), tp.weight_decay, tp.momentum)
        if tp.grad_clip_norm > 0:
            return optax.chain(optax.clip_by_global_norm(tp.grad_clip_norm), lars)
        return lars
    parts = [optax.add_decayed_weights(tp.weight_decay, mask=kernel_mask)]
    if tp.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(tp.grad_clip_norm))
    parts.append(optax.sgd(learning_rate_schedule(tp), momentum=tp.momentum))
    return optax.chain(*parts)


def create_train_state(model, tx, image_size: int, rng, replicated_sharding=None) -> TrainState:
    """Initializes variables under `jit` (placed with `replicated_sharding` when given)."""
    init_rng, state_rng = jax.random.split(rng)

    def init():
        variables = model.init(init_rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params), rng=state_rng)

    return jax.jit(init, out_shardings=replicated_sharding)()


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))
