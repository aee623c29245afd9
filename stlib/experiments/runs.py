"""Run directories and papermill execution.

A run lives in `<run cache>/runs/<run-id>/` (`stlib.paths.cache_root`, git-ignored), where
the run id hashes what the result depends on (`stlib.experiments.identity`): the same
config on the same data from the same checkpoints always maps to the same folder (and
resumes there); anything else never collides with it. The repository's published records
(`outputs/`) are never written by a run (`stlib.experiments.records`).
"""
from __future__ import annotations

import json
import os
import re
import traceback
from pathlib import Path

from stlib import config as cfg
from stlib import errors, paths
from stlib.experiments import assemble, identity, inits
from stlib.io import RunInProgressError, machine, write_json_atomic, write_text_atomic
from stlib.pseudo.teacher import TeacherRun
from stlib.registry import check_choices
from stlib.train import sharding


def default_outputs() -> Path:
    """The run cache (`stlib.paths.cache_root`)."""
    return paths.cache_root()


def resolve_run_dir(params: cfg.Params, run_dir: str | os.PathLike = "", outputs=None) -> Path:
    """`run_dir` if given, else <outputs>/runs/<run-id>, the id hashing the params (named inits
    resolved to their checkpoint folders, `stlib.experiments.inits`), the data and the
    checkpoints the run starts from (`stlib.experiments.identity`)."""
    if run_dir:
        return Path(run_dir)
    return inits.run_dir_of(inits.resolve_init(params, outputs, require=False), outputs)


def prepare_run_dir(params: cfg.Params, outputs=None) -> Path:
    """The run folder of `params` (inits resolved), made, with params.yaml and identity.json."""
    run_dir = resolve_run_dir(params, outputs=outputs)
    run_dir.mkdir(parents=True, exist_ok=True)
    if sharding.is_main_process():   # the other processes of a multi-process run write nothing
        write_text_atomic(run_dir / "params.yaml", cfg.dump_params(params))
        identity.write_identity(run_dir, params)
    return run_dir


def notebook_path(name: str) -> Path:
    path = paths.NOTEBOOKS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} not found (stlib must be installed from its repository: pip install -e .)")
    return path


def execute_notebook(name: str, params: cfg.Params, overrides=(), params_file=None, outputs=None,
                     progress: bool = True) -> Path:
    """Executes `notebooks/<name>` with papermill for `params`; the executed copy goes into the run dir.

    Returns the run directory.
    """
    params = inits.resolve_init(params, outputs)   # a named init without its checkpoint fails here, before work
    run_dir = prepare_run_dir(params, outputs)
    # repository-relative where the run is inside the repository (notebooks run there), so an
    # executed notebook kept as a record names no machine's folders
    execute(name, run_dir / name, {"PARAMS_FILE": paths.relative(run_dir / "params.yaml"),
                                   "RUN_DIR": paths.relative(run_dir), "PROGRESS": progress}, log_output=True,
            run_dir=run_dir)
    return run_dir


def execute(notebook: str, out_path, parameters: dict, log_output: bool = False, run_dir=None) -> Path:
    """Runs `notebooks/<notebook>` with papermill into `out_path`. A failure inside is raised as
    `NotebookError` in the words of the error itself, not papermill's: which run (`run_dir`), where
    its log is, the error's line and, for an error that is not one of stlib's own, its traceback's
    last lines. A failure in a notebook nested inside this one passes through unchanged."""
    import papermill as pm
    out_path = Path(out_path)
    try:
        pm.execute_notebook(str(notebook_path(notebook)), str(out_path), parameters=parameters,
                            cwd=str(paths.REPO_ROOT), progress_bar=False, log_output=log_output, kernel_name="python3",
                            kernel_manager_class=_quiet_kernel_manager())
    except pm.PapermillExecutionError as e:
        raise NotebookError.from_papermill(e, out_path, run_dir) from None
    return out_path


def _quiet_kernel_manager():
    """jupyter_client's kernel manager sends SIGINT before every shutdown request, so each normal
    papermill run logged "KeyboardInterrupt caught in kernel"; a notebook that has finished has
    nothing to interrupt, so this one skips that interrupt (and only that one). It also talks to
    the kernel over IPC sockets (files beside its connection file) instead of TCP on localhost:
    every kernel warned "running over TCP without encryption" into the executed notebooks."""
    from jupyter_client import AsyncKernelManager

    class QuietShutdownKernelManager(AsyncKernelManager):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("transport", "ipc")
            super().__init__(*args, **kwargs)

        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()
    return QuietShutdownKernelManager


class NotebookError(RuntimeError):
    """An error inside an executed notebook, re-raised in the error's own words.

    `headline` is one line: the error's kind and message, which run failed, the executed notebook
    and the log holding the whole traceback (the run's `run.log`, or the notebook's cells); `tail`
    holds the traceback's last lines for an error that is not one of stlib's own (a bug), and
    `traceback` the whole of it, without terminal colours. str() is the headline and the tail, so a
    notebook that runs this one (self_train.ipynb running the teacher's train.ipynb) hands the
    innermost failure on as it is."""

    TAIL_LINES = 8

    def __init__(self, headline: str, notebook, tail=(), traceback_text: str = "", run: str = "", log=None):
        self.headline, self.notebook, self.tail = headline, Path(notebook), list(tail)
        self.traceback, self.run, self.log = traceback_text, run, log
        super().__init__("\n".join([headline, *("  " + line for line in self.tail)]))

    @classmethod
    def from_papermill(cls, e, notebook, run_dir=None) -> "NotebookError":
        if e.ename == "NotebookError":   # a nested notebook's failure: its words, not this wrapper's
            head, *tail = str(e.evalue).splitlines() or [""]
            return cls(head, notebook, [line[2:] if line.startswith("  ") else line for line in tail])
        text = _plain("\n".join(getattr(e, "traceback", None) or []))
        run = Path(run_dir).name if run_dir else ""
        log = Path(run_dir) / "run.log" if run_dir else None
        where = (f"run {run}; " if run else "") + f"in {paths.relative(notebook)}; " + (
            f"log {paths.relative(log)}" if log else "its cells hold the traceback")
        headline = f"{errors.KINDS.get(e.ename, e.ename)}: {' '.join(str(e.evalue).split())} ({where})"
        tail = [] if e.ename in errors.KINDS else _last_lines(text, cls.TAIL_LINES)
        return cls(headline, notebook, tail, text, run, log)


def _plain(text: str) -> str:
    """`text` without terminal colour codes (IPython colours its tracebacks)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def _last_lines(traceback_text: str, n: int) -> list:
    """The last `n` non-blank lines of a traceback, from its last frame on where that fits."""
    lines = [line.rstrip() for line in traceback_text.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    frames = [i for i, line in enumerate(lines) if line.lstrip().startswith(("File ", "Cell In"))]
    start = frames[-1] if frames and len(lines) - frames[-1] <= n else len(lines) - n
    return lines[max(0, start):]


def run(params: cfg.Params, notebook: str = "train.ipynb", outputs=None, progress: bool = True,
        direct: bool = False) -> tuple[Path, dict]:
    """Makes the run of `params` (named inits resolved first) through `notebooks/<notebook>`, or
    in this process with `direct`; returns (run folder, its final metrics). `train.ipynb` trains
    a detector, `pretrain.ipynb` pre-trains a backbone (`pretrain.method`)."""
    if notebook not in ("train.ipynb", "pretrain.ipynb"):
        raise ValueError(f"run: notebook must be train.ipynb or pretrain.ipynb, got {notebook!r}")
    params = inits.resolve_init(params, outputs)
    check_before_work(params)
    run_dir = prepare_run_dir(params, outputs)
    try:
        if not direct:
            execute_notebook(notebook, params, outputs=outputs, progress=progress)
            result = json.loads((run_dir / "metrics.json").read_text())
        else:
            result = assemble.train(params, run_dir, progress=progress, outputs=outputs)
    except Exception as e:
        if not isinstance(e, RunInProgressError):   # another process's run is not ours to mark
            mark_failed(run_dir, e)
        raise
    (run_dir / FAILED_FILE).unlink(missing_ok=True)
    return run_dir, result


FAILED_FILE = "failed.json"


def mark_failed(run_dir, exc: BaseException) -> None:
    """Marks a run folder whose run failed: `failed.json` with the one-line error, and the full
    traceback appended to its `run.log`. The folder keeps its checkpoints, so the same command
    resumes once the cause is fixed; a finished run removes the mark."""
    run_dir = Path(run_dir)
    try:
        inner = next((e for e in errors.chain(exc) if isinstance(e, NotebookError) and e.traceback), None)
        with open(run_dir / "run.log", "a") as f:   # the notebook's own traceback, not papermill's
            f.write(inner.traceback + "\n" if inner is not None else
                    "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        write_json_atomic(run_dir / FAILED_FILE, {"error": errors.one_line(exc) or f"{type(exc).__name__}: {exc}",
                                                 "last_lines": errors.details(exc),
                                                 "log": "run.log", "machine": machine()})
    except OSError:   # the disk that failed the run may refuse these too
        pass


def check_before_work(params: cfg.Params) -> None:
    """What can be checked before a run starts: every named component is registered, its teacher
    is a finished detection (or, for a segmenter, segmentation) run, its `model.init` folder holds a checkpoint of its backbone
    (errors name the field or the folder)."""
    check_choices(params)
    if params.self_train.teacher:   # a segmentation student's teacher is a segmentation run
        TeacherRun(params.self_train.teacher, head=params.model.head if params.model.head == "segmentation"
                   else "retinanet")
    if params.model.init != "rand":
        inits.check_init_folder(params)


def summarize(result: dict):
    """A one-row table of a run's final metrics (pandas, for notebooks)."""
    import pandas as pd
    metrics = ["top1", "top5"] if "top1" in result else ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    keys = metrics + ["best_step", "last_step", "stopped_early", "devices"]
    return pd.DataFrame([{k: result.get(k) for k in keys}], index=[result.get("run_id")])


def ensure_world_inits(world_scale: str = "mini", names=cfg.NAMED_INITS, outputs=None, progress: bool = True,
                       direct: bool = False) -> dict:
    """Makes every named init of the `world_scale` world that has no checkpoint yet (one command:
    `stlib inits`), in dependency order (Noisy Student's teacher is the supervised run).

    Returns {name: metrics dict of its run}.
    """
    order = [n for n in ("imagenet", "simclr", "imagenet++") if n in names]
    if "imagenet++" in order and "imagenet" not in order:
        order.insert(0, "imagenet")
    out = {}
    for name in order:
        pre = inits.resolve_init(inits.preset_params(name, world_scale), outputs)
        run_dir = inits.world_init_dir(name, world_scale, outputs)
        metrics = run_dir / "metrics.json"
        done = metrics.is_file() and json.loads(metrics.read_text()).get("status") == "complete"
        if not (done and inits.has_checkpoint(run_dir)):
            run(pre, "pretrain.ipynb", outputs, progress, direct)
        out[name] = json.loads(metrics.read_text())
    return out


def describe_run(run_dir):
    """A small table of what a pre-training run did beyond its top-1: Noisy Student's pseudo
    labels (kept images, balance, the teacher's accuracy on the pool against the world's
    hidden labels) or SimCLR's linear probe; for notebooks."""
    import pandas as pd
    run_dir = Path(run_dir)
    rows = {}
    if (run_dir / "pseudo_labels.json").is_file():
        rows.update(json.loads((run_dir / "pseudo_labels.json").read_text()))
    if (run_dir / "metrics.json").is_file():
        m = json.loads((run_dir / "metrics.json").read_text())
        rows.update({k: m[k] for k in ("top1", "top5", "linear_top1", "linear_train_top1", "contrast_accuracy")
                     if m.get(k) is not None})
    if not rows:
        return pd.DataFrame({"note": ["supervised pre-training: nothing beyond the metrics above"]})
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))
