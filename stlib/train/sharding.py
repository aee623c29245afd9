"""One device mesh with a `data` axis, for CPU, GPU and TPU, on one host or many.

Batches are sharded along `data`; the train state is replicated. Because the model is
applied to the global (sharded) batch under `jit`, BatchNorm statistics are computed over
the global batch: the paper's synchronous BatchNorm, with no extra code.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from stlib.devices import MultiProcessError


def maybe_initialize_distributed() -> None:
    """Joins a multi-process job when the environment describes one (`jax.distributed`).

    JAX_NUM_PROCESSES > 1 names the job explicitly: JAX_COORDINATOR_ADDRESS (host:port of process
    0) and JAX_PROCESS_ID (0..N-1) must be set too, as `stlib train --processes N` sets them for
    processes on one machine, or a launcher on a GPU cluster. STLIB_MULTIHOST=1 leaves the job to
    JAX's own detection (Cloud TPU pods, SLURM, Open MPI). Otherwise (one process) it does nothing.
    Call it before any JAX computation: the processes agree on the devices when the backend starts.
    """
    n = int(os.environ.get("JAX_NUM_PROCESSES", "1"))
    if jax.distributed.is_initialized() or (n <= 1 and os.environ.get("STLIB_MULTIHOST") != "1"):
        return
    if n <= 1:
        jax.distributed.initialize()
        return
    missing = [v for v in ("JAX_COORDINATOR_ADDRESS", "JAX_PROCESS_ID") if not os.environ.get(v)]
    if missing:
        raise MultiProcessError(f"JAX_NUM_PROCESSES={n} needs {' and '.join(missing)} set as well "
                         "(the coordinator's host:port, and this process's index 0..N-1)")
    pid = int(os.environ["JAX_PROCESS_ID"])
    if not 0 <= pid < n:
        raise MultiProcessError(f"JAX_PROCESS_ID={pid} must be in 0..{n - 1} (JAX_NUM_PROCESSES={n})")
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"], num_processes=n,
                               process_id=pid)


def is_main_process() -> bool:
    """Process 0 of a multi-process job, or the only process; does not start the XLA backend when
    no job was joined (a GPU backend started in a parent would take the memory its notebook needs)."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process of a multi-process job gets here (nothing with one process): where
    process 0 writes files that the others read next (a run's metrics, a finished store)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


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
