"""One device mesh with a `data` axis, for CPU, GPU and TPU, on one host or many.

Batches are sharded along `data`; the train state is replicated. Because the model is
applied to the global (sharded) batch under `jit`, BatchNorm statistics are computed over
the global batch: the paper's synchronous BatchNorm, with no extra code.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def maybe_initialize_distributed() -> None:
    """Joins a multi-host job when the environment describes one (`jax.distributed`).

    On Cloud TPU pods and SLURM/Open MPI clusters `jax.distributed.initialize()` finds the
    coordinator itself; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID. A single host does nothing.
    """
    if int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1 or os.environ.get("STLIB_MULTIHOST") == "1":
        if not jax.distributed.is_initialized():
            jax.distributed.initialize()


def create_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch (this process's slice) -> global jax arrays sharded on `data`.

    Nested dicts (a `stlib.data.mixture.Mixture`'s {stream: batch}) are sharded leaf by leaf."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)), batch)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    n = mesh.devices.size
    if batch_size % n or batch_size % jax.process_count():
        raise ValueError(f"{what} ({batch_size}) must be a multiple of the number of devices ({n}) "
                         f"and of processes ({jax.process_count()})")


def setup_mesh(batch_size: int, eval_batch_size: int | None = None, what: str = "train.batch_size"):
    """The run's mesh (joining a multi-host job first), with its batch sizes checked against it."""
    maybe_initialize_distributed()
    mesh = create_mesh()
    check_batch_size(batch_size, mesh, what)
    if eval_batch_size is not None:
        check_batch_size(eval_batch_size, mesh, "train.eval_batch_size")
    return mesh
