"""`stlib show RUN_OR_STUDY`: a finished run's or study's headline numbers and where its
figures are, as text, so nobody has to open JSON.

A run folder (`metrics.json`): status, the validation metric and its companions (COCO AP for
detection, top-1 for pre-training, the linear probe for SimCLR), best and last step, time,
the machine, what data was skipped, where a student's pseudo labels came from, a failed
run's one-line error. A study folder (`results.json`): its description, mean and spread per
cell, paired differences against the baseline, and its runs. Both list their figures
(PNG), executed notebooks and reports.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from stlib import paths
from stlib.experiments.runs import FAILED_FILE

HEADLINE_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "top1", "top5", "linear_top1", "linear_train_top1")


class ShowError(ValueError):
    """The path is neither a run folder nor a study folder."""


def _num(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _files(folder: Path) -> list[str]:
    kinds = ("*.png", "*.ipynb", "*.md")
    found = sorted({f for k in kinds for f in folder.glob(k)})
    return [f"    {paths.relative(f)}" for f in found]


def show_run(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    lines = [f"run {run_dir.name}  ({paths.relative(run_dir)})"]
    failed = run_dir / FAILED_FILE
    if failed.is_file():
        info = json.loads(failed.read_text())
        lines.append(f"  FAILED: {info.get('error')} (traceback: {paths.relative(run_dir / info.get('log', 'run.log'))})")
    mfile = run_dir / "metrics.json"
    if not mfile.is_file():
        lines.append("  not finished: no metrics.json yet (the same command resumes it from its last checkpoint)")
        return "\n".join(lines)
    m = json.loads(mfile.read_text())
    heads = [f"{k} {_num(m[k])}" for k in HEADLINE_KEYS if k in m]
    lines.append(f"  {m.get('status', '?')}: " + "  ".join(heads))
    lines.append(f"  best step {m.get('best_step')}, last step {m.get('last_step')}, stopped early: "
                 f"{m.get('stopped_early')}, {m.get('train_seconds')} s of training on {m.get('devices')} device(s)")
    mach = m.get("machine") or {}
    if mach:
        lines.append(f"  machine: {mach.get('cpu')} ({mach.get('simd')}), {mach.get('platform')}, {mach.get('date')}")
    for split, stats in (m.get("data_stats") or {}).items():
        counted = ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if v)
        if counted:
            lines.append(f"  data ({split}): {counted}")
    pl = m.get("pseudo_labels")
    if pl:
        lines.append(f"  pseudo labels: {pl.get('source')} from teacher {pl.get('teacher')} (AP {_num(pl.get('teacher_AP'))}), "
                     f"{pl.get('targets')} >= {pl.get('threshold')}, store {pl.get('store')}")
        explorer = paths.find(str(pl.get("store", ""))) / "explorer"
        if pl.get("store") and explorer.is_dir():
            lines += ["  pseudo-label explorer:"] + _files(explorer)
    files = _files(run_dir)
    if files:
        lines += ["  figures, notebooks and reports:"] + files
    return "\n".join(lines)


def _spread_line(row: dict, value: str) -> str:
    """A summary row of a study: cell, value, sample std, 95% CI half-width, n."""
    return (f"    {row['cell']:<24} {_num(row.get(value))}  std {_num(row.get('std'))}  "
            f"+-{_num(row.get('ci95'))}  n={row.get('n')}")


def show_study(study_dir: Path) -> str:
    study_dir = Path(study_dir)
    res = json.loads((study_dir / "results.json").read_text())
    spec = res.get("study") or {}
    metric = spec.get("metric", "AP")
    lines = [f"study {study_dir.name}  ({paths.relative(study_dir)})"]
    if spec.get("description"):
        lines.append(f"  {spec['description']}")
    lines.append(f"  {metric} per cell (mean, sample std, 95% CI half-width, n):")
    lines += [_spread_line(s, "mean") for s in res.get("summary", [])]
    paired = res.get("paired") or []
    if paired:
        lines.append(f"  paired differences against {paired[0].get('baseline')} (same seed):")
        lines += [_spread_line(d, "mean_diff") for d in paired]
    doubling = res.get("doubling") or []
    if doubling:
        lines.append(f"  doubling check (converged: twice the steps gain < {_num(doubling[0].get('threshold'))}):")
        lines += [f"    {d['short']:<24} {d['steps']} -> {d['long_steps']} steps: gain {d['mean_gain']:+.4f}  "
                  f"{'converged' if d['converged'] else 'NOT converged'}  seeds {d['seeds']}" for d in doubling]
    runs = res.get("runs") or []
    if runs:
        lines.append(f"  runs ({len(runs)}):")
        for r in runs:
            lines.append(f"    {r['cell']}, seed {r['seed']}: {r.get('run_dir')} ({metric} {_num(r.get(metric))})")
    files = _files(study_dir)
    if files:
        lines += ["  figures, notebooks and reports:"] + files
    return "\n".join(lines)


def show(path) -> str:
    """The text `stlib show` prints for a run folder or a study folder (or a path inside one)."""
    p = paths.find(str(path))
    for folder in (p, p.parent):
        if (folder / "results.json").is_file():
            return show_study(folder)
        if (folder / "params.yaml").is_file() and folder.parent.name == "runs":
            return show_run(folder)
    raise ShowError(f"{path}: neither a run folder (runs/<id> with params.yaml) nor a study folder "
                    "(studies/<name> with results.json)")
