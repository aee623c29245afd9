"""Host (CPU) devices: split the CPU into one XLA device per core so the `data` mesh uses them all.

XLA reads XLA_FLAGS when its CPU backend starts, so this runs on `import stlib`, before
any computation. benchmarks/train_step.py measures the gain (benchmarks/RESULTS.md).
It only affects the CPU platform; GPU and TPU hosts are unchanged. Set STLIB_HOST_DEVICES
(e.g. to 1) to choose, or put --xla_force_host_platform_device_count in XLA_FLAGS yourself.
"""
from __future__ import annotations

import os

FLAG = "--xla_force_host_platform_device_count"


def configure_host_devices() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return
    n = int(os.environ.get("STLIB_HOST_DEVICES", "0")) or (os.cpu_count() or 1)
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={n}".strip()
