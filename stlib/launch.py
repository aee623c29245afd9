"""`--processes N`: one command as N JAX processes on this machine, joined by `jax.distributed`.

The same code path a TPU pod or a GPU cluster takes (one process per host, each owning its
devices, batches assembled with `make_array_from_process_local_data`, collectives across
processes), run on one machine: the CPU's cores are split between the processes (gloo carries
the collectives), or a launcher's GPUs between them. Process 0 is the coordinator and the only one
that writes the run's files; it prints as a single process would. Every other process's output
goes to `<cache>/logs/` and is shown when it fails. When any process fails the others are
stopped, and the run resumes from its last checkpoint like any interrupted one.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from stlib import devices, paths

ENV_VARS = ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_COORDINATOR_ADDRESS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_env(index: int, count: int, port: int, environ=None) -> dict:
    """The environment of process `index` of `count`: the job's coordinates, and (on a CPU host,
    unless STLIB_HOST_DEVICES is set) an equal share of the cores as its XLA devices."""
    env = dict(os.environ if environ is None else environ)
    env.update(JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(index), JAX_COORDINATOR_ADDRESS=f"localhost:{port}")
    if environ is None:   # the device count `import stlib` put in XLA_FLAGS is this process's, not theirs
        if devices.USER_XLA_FLAGS is None:
            env.pop("XLA_FLAGS", None)
        else:
            env["XLA_FLAGS"] = devices.USER_XLA_FLAGS
    if "STLIB_HOST_DEVICES" not in env and devices.FLAG not in env.get("XLA_FLAGS", ""):
        env["STLIB_HOST_DEVICES"] = str(max(1, (os.cpu_count() or 1) // count))
    return env


def run_processes(argv: list[str], count: int, *, poll_s: float = 0.2, settle_s: float = 3.0) -> int:
    """Runs `stlib <argv>` as `count` processes; returns 0 when all succeed, else a failed one's exit
    status (1 for a signal). Every failed process is named on stderr (the ones the launcher stopped
    are not), with the end of its log."""
    if count < 2:
        raise devices.MultiProcessError(f"--processes must be at least 2 to launch a multi-process job, got {count}")
    port = free_port()
    logs = paths.cache_root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    procs, files = [], []
    for i in range(count):
        cmd = [sys.executable, "-m", "stlib.cli", *argv]
        if i == 0:
            procs.append(subprocess.Popen(cmd, env=process_env(i, count, port)))
            files.append(None)
        else:
            log = logs / f"process-{stamp}-{os.getpid()}-{i}.log"
            f = open(log, "w")
            files.append((log, f))
            procs.append(subprocess.Popen(cmd + ["--quiet"], env=process_env(i, count, port), stdout=f,
                                          stderr=subprocess.STDOUT))
    try:
        while all(p.poll() in (None, 0) for p in procs) and any(p.poll() is None for p in procs):
            time.sleep(poll_s)
        if any(p.poll() not in (None, 0) for p in procs):
            time.sleep(settle_s)   # the others may be failing because of it (the coordinator aborts)
    finally:
        for p in procs:   # a failed process leaves the others waiting in a collective: stop them
            if p.poll() is None:
                p.terminate()
        for p in procs:   # JAX's distributed runtime catches SIGTERM (for preemption): kill what stays
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for entry in files:
            if entry is not None:
                entry[1].close()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0 and p.returncode != -signal.SIGTERM]
    failed = failed or [i for i, p in enumerate(procs) if p.returncode != 0]
    if not failed:
        for entry in files:
            if entry is not None:
                Path(entry[0]).unlink(missing_ok=True)
        return 0
    for i in failed:
        print(f"stlib: process {i} of {count} failed ({_exit_text(procs[i].returncode)})"
              + (f"; its log: {files[i][0]}" if files[i] is not None else ""), file=sys.stderr)
        if files[i] is not None:
            for line in Path(files[i][0]).read_text(errors="replace").splitlines()[-20:]:
                print(f"  [{i}] {line}", file=sys.stderr)
    return procs[failed[0]].returncode if procs[failed[0]].returncode > 0 else 1


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"
