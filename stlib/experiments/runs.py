"""Run directories and papermill execution.

A run lives in `<run cache>/runs/<run-id>/` (`stlib.paths.cache_root`, git-ignored), where
the run id hashes what the result depends on (`stlib.experiments.identity`): the same
config on the same data from the same checkpoints always maps to the same folder (and
resumes there); anything else never collides with it. The repository's published records
(`outputs/`) are never written by a run (`stlib.experiments.records`).
"""
from __future__ import annotations

import os
from pathlib import Path

from stlib import config as cfg
from stlib import paths
from stlib.experiments import identity
from stlib.io import write_text_atomic

REPO_ROOT = paths.REPO_ROOT
NOTEBOOKS = paths.NOTEBOOKS_DIR


def default_outputs() -> Path:
    """The run cache (`stlib.paths.cache_root`)."""
    return paths.cache_root()


def resolve_run_dir(params: cfg.Params, run_dir: str | os.PathLike = "", outputs=None) -> Path:
    """`run_dir` if given, else <outputs>/runs/<run-id>, the id hashing the params (named inits
    resolved to their checkpoint folders, `stlib.experiments.inits`), the data and the
    checkpoints the run starts from (`stlib.experiments.identity`)."""
    if run_dir:
        return Path(run_dir)
    from stlib.experiments.inits import resolve_init
    params = resolve_init(params, outputs, require=False)
    return paths.outputs_root(outputs) / "runs" / identity.run_id(params)


def prepare_run_dir(params: cfg.Params, outputs=None) -> Path:
    """The run folder of `params` (inits resolved), made, with params.yaml and identity.json."""
    run_dir = resolve_run_dir(params, outputs=outputs)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "params.yaml", cfg.dump_params(params))
    identity.write_identity(run_dir, params)
    return run_dir


def notebook_path(name: str) -> Path:
    path = NOTEBOOKS / name
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} not found (stlib must be installed from its repository: pip install -e .)")
    return path


def execute_notebook(name: str, params: cfg.Params, overrides=(), params_file=None, outputs=None,
                     progress: bool = True) -> Path:
    """Executes `notebooks/<name>` with papermill for `params`; the executed copy goes into the run dir.

    Returns the run directory.
    """
    from stlib.experiments.inits import resolve_init
    params = resolve_init(params, outputs)   # a named init without its checkpoint fails here, before work
    run_dir = prepare_run_dir(params, outputs)
    execute(name, run_dir / name, {"PARAMS_FILE": str(run_dir / "params.yaml"), "RUN_DIR": str(run_dir),
                                   "PROGRESS": progress}, log_output=True)
    return run_dir


def execute(notebook: str, out_path, parameters: dict, log_output: bool = False) -> Path:
    """Runs `notebooks/<notebook>` with papermill into `out_path`. A failure inside is raised as
    `NotebookError`, one line with the error's type and message and the executed notebook's path
    (its cell holds the full traceback)."""
    import papermill as pm
    out_path = Path(out_path)
    try:
        pm.execute_notebook(str(notebook_path(notebook)), str(out_path), parameters=parameters,
                            cwd=str(REPO_ROOT), progress_bar=False, log_output=log_output, kernel_name="python3",
                            kernel_manager_class=_quiet_kernel_manager())
    except pm.PapermillExecutionError as e:
        raise NotebookError(e.ename, e.evalue, out_path) from None
    return out_path


def _quiet_kernel_manager():
    """jupyter_client's kernel manager sends SIGINT before every shutdown request, so each normal
    papermill run logged "KeyboardInterrupt caught in kernel"; a notebook that has finished has
    nothing to interrupt, so this one skips that interrupt (and only that one)."""
    from jupyter_client import AsyncKernelManager

    class QuietShutdownKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()
    return QuietShutdownKernelManager


class NotebookError(RuntimeError):
    """An error inside an executed notebook, re-raised as the notebook's own one-line error."""

    def __init__(self, ename: str, evalue: str, notebook):
        self.ename, self.evalue, self.notebook = ename, evalue, Path(notebook)
        super().__init__(f"{ename}: {evalue} (in {paths.relative(notebook)}; its cells hold the traceback)")


def run(params: cfg.Params, notebook: str = "train.ipynb", outputs=None, progress: bool = True,
        direct: bool = False) -> tuple[Path, dict]:
    """Makes the run of `params` (named inits resolved first) through `notebooks/<notebook>`, or
    in this process with `direct`; returns (run folder, its final metrics). `train.ipynb` trains
    a detector, `pretrain.ipynb` pre-trains a backbone (`pretrain.method`)."""
    import json
    from stlib.experiments.inits import resolve_init
    if notebook not in ("train.ipynb", "pretrain.ipynb"):
        raise ValueError(f"run: notebook must be train.ipynb or pretrain.ipynb, got {notebook!r}")
    params = resolve_init(params, outputs)
    check_before_work(params)
    run_dir = prepare_run_dir(params, outputs)
    try:
        if not direct:
            execute_notebook(notebook, params, outputs=outputs, progress=progress)
            result = json.loads((run_dir / "metrics.json").read_text())
        elif notebook == "pretrain.ipynb":
            from stlib.train.pretrain import pretrain_and_evaluate
            result = pretrain_and_evaluate(params, run_dir, progress=progress)
        else:
            from stlib.train.loop import train_and_evaluate
            result = train_and_evaluate(params, run_dir, progress=progress)
    except Exception as e:
        from stlib.io import RunInProgressError
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
    import traceback
    from stlib import errors
    from stlib.io import machine, write_json_atomic
    run_dir = Path(run_dir)
    try:
        with open(run_dir / "run.log", "a") as f:
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        write_json_atomic(run_dir / FAILED_FILE, {"error": errors.one_line(exc) or f"{type(exc).__name__}: {exc}",
                                                 "log": "run.log", "machine": machine()})
    except OSError:   # the disk that failed the run may refuse these too
        pass


def check_before_work(params: cfg.Params) -> None:
    """What can be checked before a run starts: its teacher is a finished detection run, its
    `model.init` folder holds a checkpoint of its backbone (errors name the folder)."""
    if params.self_train.teacher:
        from stlib.pseudo.teacher import TeacherRun
        TeacherRun(params.self_train.teacher)
    if params.model.init != "rand":
        from stlib.experiments.inits import check_init_folder
        check_init_folder(params)


def summarize(result: dict):
    """A one-row table of a run's final metrics (pandas, for notebooks)."""
    import pandas as pd
    metrics = ["top1", "top5"] if "top1" in result else ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    keys = metrics + ["best_step", "last_step", "stopped_early", "devices"]
    return pd.DataFrame([{k: result.get(k) for k in keys}], index=[result.get("run_id")])
