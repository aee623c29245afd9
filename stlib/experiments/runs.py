"""Run directories and papermill execution.

A run lives in `outputs/runs/<run-id>/`, where the run id is the params' name plus a hash
of the resolved params: the same config always maps to the same folder (and resumes
there), a different config never collides with it.
"""
from __future__ import annotations

import os
from pathlib import Path

from stlib import config as cfg
from stlib.io import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO_ROOT / "notebooks"


def default_outputs() -> Path:
    return Path(os.environ.get("STLIB_OUTPUTS", REPO_ROOT / "outputs"))


def resolve_run_dir(params: cfg.Params, run_dir: str | os.PathLike = "", outputs=None) -> Path:
    """`run_dir` if given, else <outputs>/runs/<run-id>, the id hashing the params with named
    inits resolved to their checkpoint folders (`stlib.experiments.inits`)."""
    if run_dir:
        return Path(run_dir)
    from stlib.experiments.inits import resolve_init
    params = resolve_init(params, outputs, require=False)
    return Path(outputs or default_outputs()) / "runs" / cfg.run_id(params)


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
    import papermill as pm
    from stlib.experiments.inits import resolve_init
    params = resolve_init(params, outputs)   # a named init without its checkpoint fails here, before work
    run_dir = resolve_run_dir(params, outputs=outputs)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "params.yaml", cfg.dump_params(params))
    pm.execute_notebook(
        str(notebook_path(name)), str(run_dir / name),
        parameters={"PARAMS_FILE": str(run_dir / "params.yaml"), "OVERRIDES": [], "RUN_DIR": str(run_dir),
                    "PROGRESS": progress},
        cwd=str(REPO_ROOT), progress_bar=False, log_output=True, kernel_name="python3")
    return run_dir


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
    if not direct:
        run_dir = execute_notebook(notebook, params, outputs=outputs, progress=progress)
        return run_dir, json.loads((run_dir / "metrics.json").read_text())
    run_dir = resolve_run_dir(params, outputs=outputs)
    if notebook == "pretrain.ipynb":
        from stlib.train.pretrain import pretrain_and_evaluate
        return run_dir, pretrain_and_evaluate(params, run_dir, progress=progress)
    from stlib.train.loop import train_and_evaluate
    return run_dir, train_and_evaluate(params, run_dir, progress=progress)


def summarize(result: dict):
    """A one-row table of a run's final metrics (pandas, for notebooks)."""
    import pandas as pd
    metrics = ["top1", "top5"] if "top1" in result else ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    keys = metrics + ["best_step", "last_step", "stopped_early", "devices"]
    return pd.DataFrame([{k: result.get(k) for k in keys}], index=[result.get("run_id")])
