#!/usr/bin/env python
"""Convolution weight gradient: XLA's own against an explicit sum of matmuls (issue 17's lead).

On XLA's CPU backend a convolution's weight gradient is itself a convolution (over the batch).
The weight gradient of a k x k convolution is also k*k matmuls: for kernel tap (i, j), the input
window shifted by (i, j) (strided like the convolution), reshaped to [N*Ho*Wo, Cin], transposed,
times the output gradient [N*Ho*Wo, Cout]. `matmul_conv` computes it that way in a custom VJP
(forward pass and input gradient stay XLA's). This script measures both:

- per convolution shape: forward, input gradient, weight gradient (XLA's and the matmul one), and
  the matmul gradient's largest error relative to XLA's;
- the real mini train step (benchmarks/train_step.py, in a fresh process each) with every plain
  convolution of the model switched to `matmul_conv` (`--step-modes matmul`), with only its 1x1
  convolutions switched (`matmul-1x1`), and unchanged (`xla`).

    python benchmarks/conv_grad.py                 # the shapes below and the mini step, all three modes
    python benchmarks/conv_grad.py --write         # ... and a section in benchmarks/RESULTS.md

The model is switched by pointing `flax.linen.linear`'s `lax` at a copy whose
`conv_general_dilated` is `matmul_conv`: a measurement device, not a change to stlib.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks/RESULTS.md"
HEADING = "## Convolution weight gradient (`benchmarks/conv_grad.py`)"
# (batch, side, Cin, Cout, kernel, stride): issue 17's shape first, then the mini model's kinds
SHAPES = ((2, 64, 256, 256, 3, 1), (16, 32, 64, 64, 3, 1), (16, 64, 32, 64, 3, 2), (16, 16, 256, 256, 1, 1),
          (16, 128, 3, 32, 3, 2), (16, 16, 64, 64, 3, 1))
_NHWC = ("NHWC", "HWIO", "NHWC")


def _weight_grad_by_matmuls(x, g, kernel_hw, strides, pads, precision=None):
    import jax.numpy as jnp
    from jax import lax
    kh, kw = kernel_hw
    n, ho, wo, cout = g.shape
    cin, (sh, sw) = x.shape[-1], strides
    xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    g2 = g.reshape(n * ho * wo, cout)
    taps = [lax.dot_general(lax.slice(xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                                      (1, sh, sw, 1)).reshape(n * ho * wo, cin), g2, (((0,), (0,)), ((), ())),
                            precision=precision)
            for i in range(kh) for j in range(kw)]
    return jnp.stack(taps).reshape(kh, kw, cin, cout)


@functools.cache
def _custom_conv():
    import jax
    from jax import lax

    def plain(x, w, strides, pads, precision):
        return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC, precision=precision)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
    def conv(x, w, strides, pads, precision):
        return plain(x, w, strides, pads, precision)

    def fwd(x, w, strides, pads, precision):
        return plain(x, w, strides, pads, precision), (x, w)

    def bwd(strides, pads, precision, res, g):
        x, w = res
        (dx,) = jax.vjp(lambda a: plain(a, w, strides, pads, precision), x)[1](g)
        return dx, _weight_grad_by_matmuls(x, g, w.shape[:2], strides, pads, precision).astype(w.dtype)

    conv.defvjp(fwd, bwd)
    return conv


def matmul_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None,
                only_1x1: bool = False):
    """`lax.conv_general_dilated` with the matmul weight gradient for plain 2-D NHWC/HWIO convolutions
    (not grouped, not dilated; with `only_1x1`, 1x1 kernels only); anything else is lax's."""
    from jax import lax
    nhwc = dimension_numbers is not None and lhs.ndim == 4 and (
        lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        if not isinstance(dimension_numbers, lax.ConvDimensionNumbers) else dimension_numbers
    ) == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    plain = (nhwc and feature_group_count == 1 and batch_group_count == 1 and preferred_element_type is None
             and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
             and (not only_1x1 or rhs.shape[0] * rhs.shape[1] == 1))
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)
    pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
            if isinstance(padding, str) else padding)
    return _custom_conv()(lhs, rhs, tuple(int(s) for s in window_strides),
                          tuple((int(lo), int(hi)) for lo, hi in pads), precision)


def switch_flax_convs(mode: str) -> None:
    """Every flax `nn.Conv` traced from now on uses `matmul_conv` ("matmul", "matmul-1x1") or lax's ("xla")."""
    if mode == "xla":
        return
    import flax.linen.linear as linear
    from jax import lax
    proxy = types.SimpleNamespace(**{k: getattr(lax, k) for k in dir(lax) if not k.startswith("__")})
    proxy.conv_general_dilated = functools.partial(matmul_conv, only_1x1=(mode == "matmul-1x1"))
    linear.lax = proxy


def _time(f, *args, reps: int) -> float:
    import jax
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def micro(shapes, reps: int) -> list[dict]:
    """Per shape: ms (p50) of forward, input gradient, XLA's weight gradient and the matmul one; the
    matmul weight gradient's max |difference| / max |XLA's|."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    rows = []
    rng = np.random.default_rng(0)
    for (n, side, cin, cout, k, s) in shapes:
        x = jnp.asarray(rng.normal(size=(n, side, side, cin)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
        pads = tuple(lax.padtype_to_pads((side, side), (k, k), (s, s), "SAME"))

        def conv(a, b):
            return lax.conv_general_dilated(a, b, (s, s), pads, dimension_numbers=_NHWC)
        g = jnp.asarray(rng.normal(size=conv(x, w).shape), jnp.float32)
        fwd = jax.jit(conv)
        dx = jax.jit(lambda a, b, c: jax.vjp(lambda a_: conv(a_, b), a)[1](c)[0])
        dw_xla = jax.jit(lambda a, b, c: jax.vjp(lambda b_: conv(a, b_), b)[1](c)[0])
        dw_mm = jax.jit(lambda a, c: _weight_grad_by_matmuls(a, c, (k, k), (s, s), pads))
        ref, got = dw_xla(x, w, g), dw_mm(x, g)
        rows.append({"shape": (n, side, cin, cout, k, s), "fwd": _time(fwd, x, w, reps=reps),
                     "dx": _time(dx, x, w, g, reps=reps), "dw_xla": _time(dw_xla, x, w, g, reps=reps),
                     "dw_matmul": _time(dw_mm, x, g, reps=reps),
                     "rel_err": float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))})
    return rows


def step(mode: str, step_args: list[str]) -> float:
    """ms/step (mean) of benchmarks/train_step.py with `step_args`, in a fresh process, convs in `mode`."""
    proc = subprocess.run([sys.executable, __file__, "--run-step", mode, "--", *step_args], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"train step benchmark ({mode}) failed:\n{proc.stderr[-3000:]}")
    m = re.search(r"^ms/step mean: ([0-9.]+)", proc.stdout, re.M)
    return float(m.group(1))


def _section(args, rows, steps, reps: int) -> str:
    from benchmarks.train_step import cpu_cores, cpu_model
    import jax
    lines = [f"### {datetime.date.today().isoformat()} · {cpu_model()} ({cpu_cores()} cores) · "
             f"jax {jax.__version__}", "",
             f"`{shlex.join(['python', 'benchmarks/conv_grad.py', *args])}`", "",
             f"Single convolutions on {jax.device_count()} XLA {jax.devices()[0].platform} device(s) (p50 of "
             f"{reps} runs); the train step in a fresh process with stlib's devices (benchmarks/train_step.py's "
             "mean ms/step). Nothing else ran.", "",
             "| N, side, Cin, Cout, k, stride | fwd ms | input grad ms | weight grad ms (XLA) | weight grad ms "
             "(matmuls) | matmul / XLA | max rel. error |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {', '.join(map(str, r['shape']))} | {r['fwd']:.1f} | {r['dx']:.1f} | {r['dw_xla']:.1f} | "
                     f"{r['dw_matmul']:.1f} | {r['dw_matmul'] / r['dw_xla']:.2f} | {r['rel_err']:.1e} |")
    if steps:
        lines += ["", "| train step (`train_step.py " + " ".join(steps["args"]) + "`) | ms/step | / xla's |",
                  "|---|---|---|"]
        for mode, ms in steps["ms"].items():
            lines.append(f"| {mode} | {ms:.1f} | {ms / steps['ms']['xla']:.2f} |")
    return "\n".join(lines) + "\n"


def write_section(section: str, path: Path = RESULTS, heading: str = HEADING, script: str = "conv_grad.py") -> None:
    """Puts `section` (a "### date · machine" block) under `heading` in `path`, replacing the section
    with the same first line (a rerun on the same date and machine); the heading is made if missing."""
    text = path.read_text() if path.exists() else ""
    if heading not in text:
        text = text.rstrip("\n") + f"\n\n{heading}\n\nSections are written by `python benchmarks/{script} " \
               "--write`; each is one run on the machine in its heading (what is measured: the script's " \
               "docstring). A rerun on the same date and machine replaces its section.\n\n"
    head = section.splitlines()[0]
    parts = re.split(r"(?m)^(?=##+ )", text)   # every "## " heading and "### " section its own part
    start = next(i for i, p in enumerate(parts) if p.startswith(heading))
    end = next((i for i in range(start + 1, len(parts)) if parts[i].startswith("## ")), len(parts))
    # a rerun replaces its section (same first line) under this heading only: another benchmark's
    # section of the same date and machine stays
    kept = [p for p in parts[start + 1:end] if not p.startswith(head)]
    parts = parts[:start + 1] + kept + [section + "\n"] + parts[end:]
    path.write_text("".join(parts).rstrip("\n") + "\n")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-step"]:   # a child: switch the convs, then run train_step.py as a script
        mode, rest = argv[1], argv[3:]
        switch_flax_convs(mode)
        sys.argv = [str(REPO / "benchmarks/train_step.py"), *rest]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="", help="N,side,Cin,Cout,k,stride;... (default: the built-in list)")
    ap.add_argument("--reps", type=int, default=7, help="timed runs per op (p50 reported)")
    ap.add_argument("--step-modes", default="xla,matmul,matmul-1x1", help="train-step modes ('' skips the step)")
    ap.add_argument("--step-args", default="--model mini --steps 15",
                    help="arguments for benchmarks/train_step.py")
    ap.add_argument("--write", action="store_true", help=f"write a section into {RESULTS.relative_to(REPO)}")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")] if args.shapes else SHAPES
    rows = micro(shapes, args.reps)
    steps = None
    modes = [m for m in args.step_modes.split(",") if m]
    if modes:
        step_args = args.step_args.split()
        steps = {"args": step_args, "ms": {m: step(m, step_args) for m in ["xla", *[m for m in modes if m != "xla"]]}}
    section = _section(argv, rows, steps, args.reps)
    print(section)
    if args.write:
        write_section(section, args.results)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    raise SystemExit(main())
