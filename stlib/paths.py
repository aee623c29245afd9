"""Where stlib reads and writes: the repository, its records, and the user's run cache.

Two trees hold results, and they never mix:

- **records** (`<repo>/outputs/`, in git): what the repository publishes. Small result files
  of runs, studies and stores (metrics, reports, plots, executed notebooks), each naming the
  machine it ran on. A user's run never writes here; `stlib publish` copies a finished run or
  study into it on purpose.
- **the run cache** (`$STLIB_OUTPUTS`, default `<repo>/.cache/outputs/`, ignored by git): every
  run, study and pseudo-label store a user makes, with checkpoints. Same layout as the records
  (`runs/`, `studies/`, `pseudo_labels/`).

Paths written into params and reports are repository-relative where they can be, so a run id
does not depend on where the repository is checked out. Installed from a wheel, the root is
`$STLIB_HOME` or the working directory, and the presets ship with the package (`preset`).
"""
from __future__ import annotations

import os
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parents[1]
# Installed from the repository (a checkout, `pip install -e .`): the checkout is the root, and
# presets, notebooks and docs are its folders. Installed from a wheel: the root is `$STLIB_HOME`
# or the working directory (runs, caches and records go there, never into the installation),
# and presets, notebooks and docs are the copies the wheel ships in `stlib/_data/` (setup.py).
IN_REPOSITORY = (_SOURCE_ROOT / "pyproject.toml").is_file() and (_SOURCE_ROOT / "params").is_dir()
_SHIPPED = Path(__file__).resolve().parent / "_data"
REPO_ROOT = _SOURCE_ROOT if IN_REPOSITORY else Path(os.environ.get("STLIB_HOME") or Path.cwd()).resolve()
PARAMS_DIR = (_SOURCE_ROOT if IN_REPOSITORY else _SHIPPED) / "params"
NOTEBOOKS_DIR = (_SOURCE_ROOT if IN_REPOSITORY else _SHIPPED) / "notebooks"
DOCS_DIR = (_SOURCE_ROOT if IN_REPOSITORY else _SHIPPED) / "docs"
CACHE_DIR = REPO_ROOT / ".cache"   # ignored by git: the generated world, the run cache (defaults)


def records_root() -> Path:
    """The published records: `$STLIB_RECORDS`, else `<repo>/outputs`."""
    return Path(os.environ.get("STLIB_RECORDS") or REPO_ROOT / "outputs")


def cache_root() -> Path:
    """The user's run cache: `$STLIB_OUTPUTS`, else `<repo>/.cache/outputs`."""
    return Path(os.environ.get("STLIB_OUTPUTS") or CACHE_DIR / "outputs")


def outputs_root(outputs=None) -> Path:
    """`outputs` when given (a caller's own cache, e.g. a test's tmp folder), else the run cache."""
    return Path(outputs) if outputs else cache_root()


def relative(path) -> str:
    """`path` relative to the repository when inside it, else absolute (posix separators)."""
    p = Path(path).expanduser()
    try:
        return p.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(p.resolve()) if p.exists() else str(p)


def find(path) -> Path:
    """A path as given when it exists (or is absolute), else relative to the repository."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    alt = REPO_ROOT / p
    return alt if alt.exists() else p


def preset(path) -> Path:
    """A params file or study spec: as given (or under the root), else a shipped preset, given as
    `params/<scale>/<name>.yaml` or by name, `<scale>/<name>` (`stlib train mini/retinanet`)."""
    p = Path(path).expanduser()
    for cand in (p, REPO_ROOT / p):
        if cand.is_file():
            return cand
    rel = p.as_posix()
    rel = rel[len("params/"):] if rel.startswith("params/") else rel
    for cand in (PARAMS_DIR / rel, PARAMS_DIR / f"{rel}.yaml"):
        if cand.is_file():
            return cand
    return p
