"""TrainState, its initialization, and restoring variables into it (the optimizers and the
schedule are in `stlib.train.optimizers`)."""
from __future__ import annotations

from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from stlib.train import sharding


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


def same_layers(state, variables: dict) -> bool:
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
