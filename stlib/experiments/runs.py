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
import traceback
from pathlib import Path

from stlib import config as cfg
from stlib import errors, paths
from stlib.experiments import assemble, identity, inits
from stlib.io import RunInProgressError, machine, write_json_atomic, write_text_atomic
from stlib.pseudo.teacher import TeacherRun
from stlib.registry import check_choices


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
                                   "RUN_DIR": paths.relative(run_dir), "PROGRESS": progress}, log_output=True)
    return run_dir


def execute(notebook: str, out_path, parameters: dict, log_output: bool = False) -> Path:
    """Runs `notebooks/<notebook>` with papermill into `out_path`. A failure inside is raised as
    `NotebookError`, one line with the error's type and message and the executed notebook's path
    (its cell holds the full traceback)."""
    import papermill as pm
    out_path = Path(out_path)
    try:
        pm.execute_notebook(str(notebook_path(notebook)), str(out_path), parameters=parameters,
                            cwd=str(paths.REPO_ROOT), progress_bar=False, log_output=log_output, kernel_name="python3",
                            kernel_manager_class=_quiet_kernel_manager())
    except pm.PapermillExecutionError as e:
        raise NotebookError(e.ename, e.evalue, out_path) from None
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
    """An error inside an executed notebook, re-raised as the notebook's own one-line error."""

    def __init__(self, ename: str, evalue: str, notebook):
        self.ename, self.evalue, self.notebook = ename, evalue, Path(notebook)
        super().__init__(f"{ename}: {evalue} (in {paths.relative(notebook)}; its cells hold the traceback)")


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
        with open(run_dir / "run.log", "a") as f:
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        write_json_atomic(run_dir / FAILED_FILE, {"error": errors.one_line(exc) or f"{type(exc).__name__}: {exc}",
                                                 "log": "run.log", "machine": machine()})
    except OSError:   # the disk that failed the run may refuse these too
        pass


def check_before_work(params: cfg.Params) -> None:
    """What can be checked before a run starts: every named component is registered, its teacher
    is a finished detection run, its `model.init` folder holds a checkpoint of its backbone
    (errors name the field or the folder)."""
    check_choices(params)
    if params.self_train.teacher:
        TeacherRun(params.self_train.teacher)
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
