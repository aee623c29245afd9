"""Records: the results the repository publishes, kept apart from the run cache.

`outputs/` (`stlib.paths.records_root`) holds records: the small result files of runs,
studies and pseudo-label stores (params, metrics, curves, reports, plots, executed
notebooks), each naming the machine that made it (`metrics.json: machine`). Runs a user
makes live in the run cache (`stlib.paths.cache_root`); no run writes a record.

- A run needed only for its numbers may be read from a record with the *same run id*:
  the id covers params, data and starting checkpoints (`stlib.experiments.identity`), so
  the record is that very computation. A run needed for its checkpoint (a teacher, an
  init) is made in the cache.
- A study's report in the cache is shown next to the study's record, cell by cell and seed
  by seed (`comparison_markdown`).
- `stlib publish PATH` copies a finished run or study (with its runs and stores' small
  files) into the records, on purpose; an existing record is replaced only with `--replace`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from stlib import paths
from stlib.io import write_bytes_atomic

# What never goes into a record (heavy or machine-local; the same list as .gitignore's)
_SKIP_DIRS = {"checkpoints", "tensorboard", "shards"}
_SKIP_FILES = {"run.log", "run.lock", "pseudo_labels.npz", "failed.json", "record_comparison.md"}
_TEXT = (".json", ".jsonl", ".yaml", ".md", ".ipynb", ".csv", ".txt")


class RecordError(ValueError):
    """A publish that cannot be done (names the path and what to do)."""


def complete_metrics(run_dir) -> dict | None:
    """A run folder's metrics.json when the run finished, else None."""
    m = Path(run_dir) / "metrics.json"
    if not m.is_file():
        return None
    try:
        metrics = json.loads(m.read_text())
    except json.JSONDecodeError:
        return None
    return metrics if metrics.get("status") == "complete" else None


def record_run(run_id: str) -> Path | None:
    """The record of run `run_id` when one exists and finished, else None."""
    d = paths.records_root() / "runs" / run_id
    return d if complete_metrics(d) else None


def record_study(name: str) -> dict | None:
    """The recorded `results.json` of study `name`, or None."""
    f = paths.records_root() / "studies" / name / "results.json"
    return json.loads(f.read_text()) if f.is_file() else None


def is_record(path) -> bool:
    try:
        Path(path).resolve().relative_to(paths.records_root().resolve())
        return True
    except ValueError:
        return False


def _machine_line(run_dir) -> str:
    m = complete_metrics(paths.find(run_dir)) or {}
    mach = m.get("machine") or {}
    if not mach:
        return f"{m.get('platform', '?')} (machine not recorded)"
    simd = f" ({mach['simd']})" if mach.get("simd") else ""
    return f"{mach.get('cpu', '?')}{simd}, {mach.get('device_kind', mach.get('platform', '?'))}, {mach.get('date', '?')}"


def comparison_rows(study, rows: list[dict]) -> list[dict] | None:
    """Per (cell, seed): this report's value, the record's, and where each came from; None when
    the study has no record (or this report is the record)."""
    rec = record_study(study.name)
    if rec is None:
        return None
    metric = study.metric
    recorded = {(r["cell"], r["seed"]): r for r in rec.get("runs", [])}
    out = []
    for r in rows:
        rr = recorded.get((r["cell"], r["seed"]), {})
        out.append({"cell": r["cell"], "seed": r["seed"], "this": r.get(metric), "record": rr.get(metric),
                    "this_run": r["run_id"], "record_run": rr.get("run_id"),
                    "this_from": "record" if is_record(r["run_dir"]) else "this machine",
                    "record_machine": _machine_line(rr["run_dir"]) if rr.get("run_dir") else ""})
    return out


def comparison_markdown(study, rows: list[dict]) -> str | None:
    """This report next to the study's record, cell by cell and seed by seed (markdown)."""
    comp = comparison_rows(study, rows)
    if comp is None:
        return None
    m = study.metric

    def f(v):
        return "" if v is None else f"{v:.4f}"
    lines = [f"This report next to the record of {study.name} ({m}; the same run id means the same params, data "
             "and starting checkpoints):", "",
             f"| cell | seed | {m} here | from | {m} record | record made on | same run |",
             "|---|---|---|---|---|---|---|"]
    for c in comp:
        same = "yes" if c["this_run"] == c["record_run"] else "no"
        lines.append(f"| {c['cell']} | {c['seed']} | {f(c['this'])} | {c['this_from']} | {f(c['record'])} | "
                     f"{c['record_machine']} | {same} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# Publishing
# ----------------------------------------------------------------------------

def _rewrite(text: str, cache_prefix: str) -> str:
    """Cache paths in a published file point into the records instead."""
    return text.replace(cache_prefix + "/", "outputs/") if cache_prefix else text


def _copy_tree(src: Path, dst: Path, cache_prefix: str) -> list[Path]:
    written = []
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if f.is_dir() or _SKIP_DIRS & set(rel.parts) or f.name in _SKIP_FILES or f.name.startswith("."):
            continue
        if rel.parts[0] == "explorer" and f.suffix == ".ipynb":
            continue
        data = f.read_bytes()
        if f.suffix in _TEXT:
            data = _rewrite(data.decode(), cache_prefix).encode()
        write_bytes_atomic(dst / rel, data)
        written.append(dst / rel)
    return written


def _cache_prefix() -> str:
    rel = paths.relative(paths.cache_root())
    return "" if rel.startswith("/") else rel


def publish_run(run_dir, replace: bool = False) -> list[Path]:
    """Copies a finished run's small files into `outputs/runs/<id>/` (see the module docstring)."""
    run_dir = paths.find(run_dir)
    if complete_metrics(run_dir) is None:
        raise RecordError(f"{paths.relative(run_dir)}: not a finished run (no complete metrics.json); "
                          "finish it before publishing")
    if is_record(run_dir):
        return []
    dst = paths.records_root() / "runs" / run_dir.name
    if dst.exists() and not replace:
        raise RecordError(f"record {paths.relative(dst)} exists; pass --replace to overwrite it with "
                          f"{paths.relative(run_dir)}")
    if dst.exists():
        shutil.rmtree(dst)
    return _copy_tree(run_dir, dst, _cache_prefix())


def _is_paper_folder(path: Path) -> bool:
    """A folder of `stlib reproduce`'s rendered results: `<item>.json` files naming their item."""
    for f in path.glob("*.json"):
        try:
            if "item" in json.loads(f.read_text()) and (path / f"{f.stem}.md").is_file():
                return True
        except (OSError, ValueError):
            continue
    return False


def _copy_record(path: Path, dst: Path, replace: bool) -> list[Path]:
    """`path`'s small files as the record `dst`, which is replaced only with `replace`."""
    if dst.exists() and not replace:
        raise RecordError(f"record {paths.relative(dst)} exists; pass --replace to overwrite it")
    if dst.exists():
        shutil.rmtree(dst)
    return _copy_tree(path, dst, _cache_prefix())


def publish(path, replace: bool = False) -> list[Path]:
    """Publishes a run folder, a study folder (its report, its runs and their pseudo-label
    stores' small files), a pseudo-label store (store.json, quality, the explorer's figures) or a
    results folder (`<outputs>/paper/<scale>/`: tables, figures, the executed notebooks). Runs already recorded under the same id are left as they are unless
    `replace`. Returns the files written."""
    path = paths.find(path)
    if (path / "results.json").is_file():
        results = json.loads((path / "results.json").read_text())
        dst = paths.records_root() / "studies" / path.name
        if dst.exists() and not replace:
            raise RecordError(f"record {paths.relative(dst)} exists; pass --replace to overwrite it")
        written = []
        for r in results.get("runs", []):
            run_dir = paths.find(r["run_dir"])
            if is_record(run_dir) or (record_run(run_dir.name) and not replace):
                continue
            written += publish_run(run_dir, replace=True)
            pl = (complete_metrics(run_dir) or {}).get("pseudo_labels")
            if pl:
                store = paths.find(pl["store"])
                if store.is_dir() and not is_record(store):
                    sdst = paths.records_root() / "pseudo_labels" / store.name
                    if not sdst.exists() or replace:
                        written += _copy_tree(store, sdst, _cache_prefix())
        return written + _copy_record(path, dst, replace=True)
    if (path / "params.yaml").is_file():
        return publish_run(path, replace)
    if (path / "store.json").is_file():     # a pseudo-label store: store.json, quality and explorer figures
        return _copy_record(path, paths.records_root() / "pseudo_labels" / path.name, replace)
    if path.parent.name == "paper" and _is_paper_folder(path):   # `stlib reproduce`'s tables and figures
        return _copy_record(path, paths.records_root() / "paper" / path.name, replace)
    raise RecordError(f"{paths.relative(path)}: neither a run folder (params.yaml, metrics.json), a study "
                      "folder (results.json), a pseudo-label store (store.json) nor a results folder "
                      "(<outputs>/paper/<scale>/ of `stlib reproduce`)")
