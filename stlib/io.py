"""Atomic file writes: a reader never sees a half-written file, an interrupted write leaves the old one."""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from pathlib import Path


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temp file beside `path`, opened for writing: (fd, its path).

    Created with mode 0o666 so the umask (and a default ACL) gives it the permissions of any
    new file; `tempfile.mkstemp` makes 0o600, which `os.replace` would hand on to `path`.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name beside {path}")


def write_bytes_atomic(path, data: bytes) -> None:
    """Writes `data` to `path` through a temp file and `os.replace`; the file gets the
    permissions of a new file (0o666 & ~umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "size", 2) == 1:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else str(x)
    return x


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def to_jsonable(obj):
    """Numbers from numpy/jax as Python numbers; NaN as null (JSON has no NaN)."""
    return _jsonable(obj)


def machine() -> dict:
    """What made a result: the CPU model, core count, accelerator platform and device kind, and the
    date (records name their machine; floats from another machine are another result)."""
    import datetime
    import platform
    cpu, simd = platform.processor() or platform.machine(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and simd is None:
                # the widest vector set: two CPUs of one model name can round floats differently
                flags = set(line.split(":", 1)[1].split())
                simd = next((f for f in ("avx512f", "avx2", "sse4_2") if f in flags), "")
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "date": datetime.date.today().isoformat()}
    if simd:
        out["simd"] = simd
    try:
        import jax
        dev = jax.devices()[0]
        out.update(platform=dev.platform, device_kind=dev.device_kind, devices=jax.device_count())
    except Exception:   # noqa: BLE001 - a description, never a failure
        pass
    return out


class RunInProgressError(RuntimeError):
    """Another live process is training into the same run folder."""


def _holder_alive(holder: str) -> bool:
    """Whether the process named `pid@host` in a lock file still runs (another host: assumed so)."""
    import socket
    pid, _, host = holder.partition("@")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def lock_holder(run_dir) -> str | None:
    """`pid@host` of the live process holding `<run_dir>/run.lock`, or None (no lock, or a stale one)."""
    path = Path(run_dir) / "run.lock"
    try:
        holder = path.read_text().strip()
    except FileNotFoundError:
        return None
    return holder if holder and _holder_alive(holder) else None


@contextlib.contextmanager
def run_lock(run_dir):
    """Holds `<run_dir>/run.lock` while this process trains into the folder, so two processes
    never write one run's checkpoints and logs at once (e.g. two studies sharing a run).
    A lock left by a killed process is taken over; a live holder is a `RunInProgressError`."""
    import socket
    path = Path(run_dir) / "run.lock"
    me = f"{os.getpid()}@{socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = lock_holder(run_dir)
            if holder is not None and holder != me:
                raise RunInProgressError(f"{run_dir} is being trained by process {holder}; wait for it to finish "
                                         "(or delete run.lock if that process is gone)") from None
            path.unlink(missing_ok=True)   # stale: its process is gone
    else:
        raise RunInProgressError(f"{run_dir}: could not take run.lock")
    with os.fdopen(fd, "w") as f:
        f.write(me)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
