"""Convergence speed: how many steps a run needs to reach a level of its validation metric.

Sec. 5 (Limitations): fine-tuning a pre-trained model is 1.3x-8x faster than training from
scratch. Every detection run records validation AP every `train.eval_every` steps in
`metrics.jsonl`; this module reads those curves and measures

- `steps_to_fraction`: the steps a run needed to reach `fraction` of its own final AP;
- `speedup`: steps the baseline (Rand Init) needs to reach `fraction` of its final AP,
  divided by the steps another run needs to reach that same AP.

Between evaluations the curve is interpolated linearly, starting from (0, 0): a detector's
heads start fresh under every initialization, so its AP at step 0 is 0 (our convention; the
paper does not say how it measured). The answer is therefore only as fine as `eval_every`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def eval_curve(run_dir, metric: str = "AP") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a run's validation `metric`, in step order, from its metrics.jsonl
    (a resumed run's re-evaluated steps keep their last value)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics log (is {run_dir} a run folder?)")
    points = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        e = json.loads(line)
        if e.get("kind") == "eval" and e.get(metric) is not None:
            points[int(e["step"])] = float(e[metric])
    if not points:
        raise ValueError(f"{path}: no evaluation of {metric!r} recorded")
    steps = np.asarray(sorted(points), np.float64)
    return steps, np.asarray([points[int(s)] for s in steps], np.float64)


def steps_to_level(steps, values, level: float) -> float:
    """The first step at which the curve (linear between points, from (0, 0)) reaches `level`;
    inf if it never does."""
    s = np.concatenate([[0.0], np.asarray(steps, np.float64)])
    v = np.concatenate([[0.0], np.asarray(values, np.float64)])
    if level <= 0:
        return 0.0
    hit = np.flatnonzero(v >= level)
    if len(hit) == 0:
        return float("inf")
    i = int(hit[0])
    if v[i] == v[i - 1]:
        return float(s[i])
    return float(s[i - 1] + (level - v[i - 1]) / (v[i] - v[i - 1]) * (s[i] - s[i - 1]))


def final_value(values) -> float:
    """The run's final metric: its last evaluation."""
    return float(np.asarray(values)[-1])


def steps_to_fraction(steps, values, fraction: float = 0.9) -> float:
    """Steps the run needed to reach `fraction` of its own final metric."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return steps_to_level(steps, values, fraction * final_value(values))


def speedup(baseline: tuple, other: tuple, fraction: float = 0.9) -> dict:
    """How much faster `other` reaches the AP the baseline ends near.

    Args: `baseline` and `other` are (steps, values) curves (e.g. `eval_curve`).
    Returns {"level", "baseline_steps", "other_steps", "speedup"}: level = fraction x the
    baseline's final value; speedup = baseline_steps / other_steps (nan if `other` never
    gets there).
    """
    level = fraction * final_value(baseline[1])
    b = steps_to_level(*baseline, level)
    o = steps_to_level(*other, level)
    ratio = float("nan") if not np.isfinite(o) else (float("inf") if o == 0 else b / o)
    return {"level": level, "baseline_steps": b, "other_steps": o, "speedup": ratio}
