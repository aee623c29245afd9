#!/usr/bin/env python
"""Depthwise convolutions on the CPU: XLA's grouped convolution against stlib's taps (issue 20).

`stlib.models.depthwise` computes a depthwise layer either as XLA's grouped convolution
(`feature_group_count=C`) or as k*k shifted, strided slices times per-channel weights ("taps");
"auto" takes taps on the CPU. This script measures both:

- per layer shape: forward, and forward plus both gradients (p50 ms), with the taps' largest
  difference from the grouped convolution relative to its largest value (output and gradients);
- XLA's own cost analysis of one weight gradient, before and after compilation (the compiled
  grouped form counts a dense convolution over every channel pair);
- the real train step (benchmarks/train_step.py, a fresh process each) with STLIB_DEPTHWISE=conv
  and =taps: ms/step and XLA's GFLOP per device against the unpartitioned program's.

    python benchmarks/depthwise.py                  # the shapes below and the EfficientNet-B7 step
    python benchmarks/depthwise.py --write          # ... and a section in benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks/RESULTS.md"
HEADING = "## Depthwise convolutions on the CPU (`benchmarks/depthwise.py`)"
# (batch, side, channels, kernel, stride): EfficientNet-B7 MBConv layers at a 128 px input, batch 2
SHAPES = ((2, 64, 192, 3, 1), (2, 64, 288, 5, 2), (2, 16, 960, 3, 1), (2, 8, 2304, 5, 1))
IMPLS = ("conv", "taps")


def micro(shapes, reps: int) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from benchmarks.conv_grad import _time
    from stlib.models.depthwise import depthwise_conv, depthwise_taps

    def flops(c):
        c = c[0] if isinstance(c, (list, tuple)) else c
        return float(c.get("flops", float("nan"))) if c else float("nan")

    rows = []
    rng = np.random.default_rng(0)
    for (n, side, c, k, s) in shapes:
        x = jnp.asarray(rng.normal(size=(n, side, side, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, 1, c)) / k, jnp.float32)
        g = jnp.asarray(rng.normal(size=depthwise_conv(x, w, s).shape), jnp.float32)
        row = {"shape": (n, side, c, k, s)}
        outs = {}
        for name, f in (("conv", depthwise_conv), ("taps", depthwise_taps)):
            fwd = jax.jit(lambda a, b, f=f: f(a, b, s))
            both = jax.jit(lambda a, b, c_, f=f: jax.vjp(lambda a_, b_: f(a_, b_, s), a, b)[1](c_))
            row[f"{name}_fwd"] = _time(fwd, x, w, reps=reps)
            row[f"{name}_grads"] = _time(both, x, w, g, reps=reps)
            outs[name] = (fwd(x, w), *both(x, w, g))
            dw = jax.jit(lambda a, b, c_, f=f: jax.vjp(lambda b_: f(a, b_, s), b)[1](c_)[0]).lower(x, w, g)
            row[f"{name}_dw_gflop"] = (flops(dw.cost_analysis()) / 1e9, flops(dw.compile().cost_analysis()) / 1e9)
        row["rel_err"] = max(float(jnp.max(jnp.abs(b - a)) / jnp.max(jnp.abs(a))) for a, b in zip(*outs.values()))
        rows.append(row)
    return rows


def step(impl: str, step_args: list[str]) -> dict:
    """benchmarks/train_step.py with `step_args` in a fresh process, depthwise layers as `impl`."""
    env = {**os.environ, "STLIB_DEPTHWISE": impl}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/train_step.py"), *step_args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"train step benchmark ({impl}) failed:\n{proc.stderr[-3000:]}")
    ms = float(re.search(r"^ms/step mean: ([0-9.]+)", proc.stdout, re.M).group(1))
    m = re.search(r"^GFLOP/step: .*?([0-9.]+) per device x (\d+)(?:; unpartitioned program ([0-9.]+))?", proc.stdout,
                  re.M)
    compile_s = float(re.search(r"^compile s: ([0-9.]+)", proc.stdout, re.M).group(1))
    return {"ms": ms, "compile_s": compile_s, "per_device": float(m.group(1)) if m else None,
            "devices": int(m.group(2)) if m else None, "unpartitioned": float(m.group(3)) if m and m.group(3) else None}


def _section(args, rows, steps, reps: int) -> str:
    import jax

    from benchmarks.train_step import cpu_cores, cpu_model
    lines = [f"### {datetime.date.today().isoformat()} · {cpu_model()} ({cpu_cores()} cores) · jax {jax.__version__}",
             "", f"`{shlex.join(['python', 'benchmarks/depthwise.py', *args])}`", "",
             f"Single layers on {jax.device_count()} XLA {jax.devices()[0].platform} device(s), float32 (p50 of "
             f"{reps} runs); the train step in a fresh process with stlib's devices (benchmarks/train_step.py's "
             "mean ms/step). Nothing else ran.", "",
             "| N, side, C, k, stride | fwd ms conv / taps | fwd + grads ms conv / taps | speed-up fwd / with grads "
             "| weight-grad GFLOP (XLA, lowered -> compiled) conv / taps | max rel. error |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        (cl, cc), (tl, tc) = r["conv_dw_gflop"], r["taps_dw_gflop"]
        lines.append(f"| {', '.join(map(str, r['shape']))} | {r['conv_fwd']:.2f} / {r['taps_fwd']:.2f} | "
                     f"{r['conv_grads']:.2f} / {r['taps_grads']:.2f} | {r['conv_fwd'] / r['taps_fwd']:.1f}x / "
                     f"{r['conv_grads'] / r['taps_grads']:.1f}x | {cl:.3g} -> {cc:.3g} / {tl:.3g} -> {tc:.3g} | "
                     f"{r['rel_err']:.1e} |")
    if steps:
        lines += ["", "| train step (`train_step.py " + " ".join(steps["args"]) + "`) | compile s | ms/step | "
                  "GFLOP per device x devices (unpartitioned program) | / conv's ms |", "|---|---|---|---|---|"]
        for impl, r in steps["runs"].items():
            flop = (f"{r['per_device']:g} x {r['devices']} ({r['unpartitioned']:g})" if r["per_device"] is not None
                    else "n/a")
            lines.append(f"| STLIB_DEPTHWISE={impl} | {r['compile_s']:.1f} | {r['ms']:.1f} | {flop} | "
                         f"{r['ms'] / steps['runs']['conv']['ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="", help="N,side,C,k,stride;... (default: the built-in list)")
    ap.add_argument("--reps", type=int, default=7, help="timed runs per op (p50 reported)")
    ap.add_argument("--step-args", default="--model retinanet-b7 --size 128 --batch 2 --steps 3 --warmup 1 "
                                            "--matmul-size 0",
                    help="arguments for benchmarks/train_step.py ('' skips the step)")
    ap.add_argument("--write", action="store_true", help=f"write a section into {RESULTS.relative_to(REPO)}")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")] if args.shapes else SHAPES
    rows = micro(shapes, args.reps)
    steps = None
    if args.step_args.strip():
        step_args = args.step_args.split()
        steps = {"args": step_args, "runs": {impl: step(impl, step_args) for impl in IMPLS}}
    section = _section(argv, rows, steps, args.reps)
    print(section)
    if args.write:
        from benchmarks.conv_grad import write_section
        write_section(section, args.results, HEADING, "depthwise.py")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    raise SystemExit(main())
