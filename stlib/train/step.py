"""Helpers every task's jitted steps share: the per-step RNG, the optimizer update, and `jit`
with the state replicated and the batch sharded on the mesh's `data` axis.

A task's `train_step(state, batch) -> (state, metrics)` is pure and donates `state`; it
runs on the global batch, so BatchNorm statistics cover every device's examples.
"""
from __future__ import annotations

import jax
import optax

from stlib.train import sharding


def step_rng(state):
    """The step's PRNG key: the state's key folded with the step (same step, same noise, also on resume)."""
    return jax.random.fold_in(state.rng, state.step)


def apply_gradients(state, grads, batch_stats, tx):
    """`state` one optimizer step on: `grads` through `tx`, the new BatchNorm statistics, step + 1."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state)


def jit_train_step(fn, mesh):
    """`fn(state, batch) -> (state, metrics)` jitted: state replicated and donated, batch sharded on `data`."""
    rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return jax.jit(fn, in_shardings=(rep, bat), out_shardings=(rep, rep), donate_argnums=0)


def jit_eval_step(fn, mesh):
    """`fn(variables, batch) -> outputs` jitted: variables replicated, batch sharded, outputs replicated."""
    rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return jax.jit(fn, in_shardings=(rep, bat), out_shardings=rep)
