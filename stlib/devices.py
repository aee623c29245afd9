"""Host (CPU) devices: split the CPU into one XLA device per core so the `data` mesh uses them all.

XLA reads XLA_FLAGS when its CPU backend starts, so this runs on `import stlib`, before
any computation. benchmarks/train_step.py measures the gain (benchmarks/RESULTS.md).
It only affects the CPU platform; GPU and TPU hosts are unchanged. Set STLIB_HOST_DEVICES
(e.g. to 1) to choose, or put --xla_force_host_platform_device_count in XLA_FLAGS yourself.
"""
from __future__ import annotations

import os

FLAG = "--xla_force_host_platform_device_count"
# JAX's GPU client reserves 75% of the GPU's memory when it starts; these variables change that.
GPU_MEMORY_VARS = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR")


class MultiProcessError(ValueError):
    """A multi-process job described wrongly (`--processes`, JAX_NUM_PROCESSES and friends)."""


# XLA_FLAGS as the user left it, before `configure_host_devices` (None: unset); processes launched
# from here (`stlib.launch`) start from it, to get their own share of the cores
USER_XLA_FLAGS: str | None = None


def configure_host_devices() -> None:
    global USER_XLA_FLAGS
    USER_XLA_FLAGS = os.environ.get("XLA_FLAGS")
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return
    n = int(os.environ.get("STLIB_HOST_DEVICES", "0")) or (os.cpu_count() or 1)
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={n}".strip()


def worker_env(jobs: int, environ=None) -> dict:
    """The environment for one of `jobs` worker processes sharing this host's devices (`stlib study
    --jobs`). On a GPU each JAX process reserves 75% of the memory at start-up, so a second worker
    would fail to allocate: with jobs > 1 each gets 90% / jobs (XLA_PYTHON_CLIENT_MEM_FRACTION),
    unless the user set any of `GPU_MEMORY_VARS`. CPU hosts ignore the variable; a TPU chip takes
    one process, so TPU hosts run with jobs 1."""
    env = dict(os.environ if environ is None else environ)
    if jobs > 1 and not any(v in env for v in GPU_MEMORY_VARS):
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / jobs:.3f}"
    return env
