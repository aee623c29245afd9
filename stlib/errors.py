"""One-line errors: what the project raises on purpose reaches the user as one line.

Every error stlib raises on purpose names the file, field or value and what to do
(`ParamsError`, `DataError`, `WeightImportError`, a locked run, a non-finite loss, a record
that exists...). `one_line` turns such an error, or a full or read-only disk anywhere in an
exception's chain (orbax and papermill wrap them), into that one line; anything else is a bug
and keeps its traceback. The CLI prints the line and writes the traceback to a log file
(`write_log`); inside a notebook `short_tracebacks()` does the same for the cell's output.

This module imports nothing from stlib: errors are recognised by their class names, so every
layer's errors are known here without importing the layers.
"""
from __future__ import annotations

import datetime
import errno
import os
import traceback
from pathlib import Path

# class name -> what kind of error the line says it is
KINDS = {
    "ParamsError": "params error",
    "InitError": "params error",
    "DataError": "data error",
    "CorruptImageError": "data error",
    "WeightImportError": "weights error",
    "RunInProgressError": "run locked",
    "NonFiniteLossError": "training stopped",
    "RecordError": "record error",
    "StoreError": "pseudo-label store error",
    "ShowError": "not a result",
    "MultiProcessError": "multi-process job",
}
_DISK = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
         errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system"}


def chain(exc: BaseException):
    """`exc`, then its causes and contexts."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _flat(text: str) -> str:
    return " ".join(str(text).split())


def disk_error(exc: BaseException) -> OSError | None:
    """The OSError of a full, read-only or forbidden disk anywhere in `exc`'s chain, else None."""
    for e in chain(exc):
        if isinstance(e, OSError) and e.errno in _DISK:
            return e
        # some libraries re-raise with the errno only in the text
        if "No space left on device" in str(e):
            return OSError(errno.ENOSPC, "No space left on device")
    return None


def one_line(exc: BaseException) -> str | None:
    """The one line for an error the project raises on purpose (or a disk error), else None."""
    disk = disk_error(exc)
    if disk is not None:
        where = f" writing {disk.filename}" if getattr(disk, "filename", None) else ""
        what = _DISK.get(disk.errno, disk.strerror or "cannot write")
        hint = ("free some space (checkpoints are under <run>/checkpoints/) or point STLIB_OUTPUTS / --outputs "
                "at another disk, then run the same command again: it resumes") if disk.errno in (
            errno.ENOSPC, errno.EDQUOT) else ("make the folder writable or point STLIB_OUTPUTS / --outputs at "
                                              "a writable one")
        return f"disk error: {what}{where}; {hint}"
    for e in chain(exc):
        for cls in type(e).__mro__:
            if cls.__name__ == "NotebookError":   # says its kind, run, notebook and log itself
                return _flat(getattr(e, "headline", "") or str(e).split("\n")[0])
            if cls.__name__ in KINDS:
                return f"{KINDS[cls.__name__]}: {_flat(e)}"
    return None


def details(exc: BaseException) -> list:
    """The lines to show under the one line: a failed notebook's traceback tail for an error that is
    not one of stlib's own (empty otherwise)."""
    for e in chain(exc):
        if any(cls.__name__ == "NotebookError" for cls in type(e).__mro__):
            return list(getattr(e, "tail", []))
    return []


def write_log(exc: BaseException, log_dir) -> Path | None:
    """Writes `exc`'s full traceback to `<log_dir>/error-<time>.log`; returns the path (None if it cannot)."""
    try:
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = log_dir / f"error-{stamp}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return path
    except OSError:
        return None


def short_tracebacks(log_dir=None) -> None:
    """In IPython (a notebook), show errors the project raises on purpose as their one line and keep
    the traceback in a log file; other errors keep IPython's traceback. Outside IPython: nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        line = one_line(value)
        if line is None:   # a bug: IPython's own traceback
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
            return None
        log = write_log(value, log_dir or Path.cwd() / ".stlib-logs")
        text = "\n".join([f"stlib: {line}" + (f" (traceback: {log})" if log else ""),
                          *("  " + d for d in details(value))])
        shell._showtraceback(etype, value, [text])   # the cell's error output: its name, message and this line
        return [text]

    ip.set_custom_exc((Exception,), handler)
