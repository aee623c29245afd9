#!/usr/bin/env python
"""Train-step benchmark: compile time, ms/step, images/s and FLOP/s of stlib's real jitted train step.

No dataset is needed: the model, optimizer, state and jitted `stlib.tasks.detection.train_step` are
built from a params preset as `stlib.tasks.detection.DetectionTask` builds them (replicated state,
batch sharded on the mesh's `data` axis, state donated), and fed a synthetic batch with the
shapes and dtypes of `stlib.data.pipeline.DetectionData`. See benchmarks/README.md.

    python benchmarks/train_step.py --model retinanet-resnet50 --size 512 --batch 2
    python benchmarks/train_step.py --model mini
    python benchmarks/train_step.py --model mini --compare-devices
    python benchmarks/train_step.py --model mini --devices 1 --write

Output is `key: value` lines; the last line is always `images/s: <number>`.
"""
from __future__ import annotations

# Only the standard library and numpy at module level: --devices must set XLA_FLAGS before
# jax (or stlib, which configures the host devices on import) is imported.
import argparse
import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PRESETS = {
    "retinanet-resnet50": REPO / "params/paper/retinanet.yaml",  # + PRESET_OVERRIDES: ResNet-50, FPN 256, 4-conv heads
    "retinanet-b7": REPO / "params/paper/retinanet.yaml",        # the paper preset as it is: EfficientNet-B7, bfloat16
    "mini": REPO / "params/mini/retinanet.yaml",
    "smoke": REPO / "params/smoke/retinanet.yaml",
}
# What turns a params file into the preset named: the paper's RetinaNet file is EfficientNet-B7 in
# bfloat16 (Sec. 3.2); "retinanet-resnet50" is Table 4's ResNet-50 in float32, the model the CPU
# rows of RESULTS.md and torchvision's retinanet_resnet50_fpn measure. Flags (--dtype, --set) apply after.
PRESET_OVERRIDES = {
    "retinanet-resnet50": ["model.backbone=resnet50", "model.dtype=float32"],
}
RESULTS = REPO / "benchmarks/RESULTS.md"
DEVICE_FLAG = "--xla_force_host_platform_device_count"
COCO_CLASSES = 80  # num_classes for the coco/tfds sources (the world sources count their own)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini",
                    help=f"a preset ({', '.join(PRESETS)}) or a params YAML path (default: mini)")
    ap.add_argument("--size", type=int, default=None, help="image size S (default: the preset's data.image_size)")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default: the preset's train.batch_size)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after the first call (default 3)")
    ap.add_argument("--devices", type=int, default=None,
                    help="host (CPU) devices to force via XLA_FLAGS (default: stlib's, one per core)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="model compute dtype (default: the preset's model.dtype)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra params override, as in `stlib train --set` (repeatable)")
    ap.add_argument("--matmul-size", type=int, default=2048,
                    help="n of the float32 n x n @ n x n reference matmul (default 2048; 0 skips it)")
    ap.add_argument("--matmul-reps", type=int, default=10, help="timed reference matmuls (default 10)")
    ap.add_argument("--write", action="store_true", help=f"add a row to {RESULTS.relative_to(REPO)}")
    ap.add_argument("--results", type=Path, default=RESULTS, help="results file for --write")
    ap.add_argument("--compare-devices", action="store_true",
                    help="run this benchmark with 1 and with 2 forced host devices (subprocesses) and compare")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    if args.devices is not None and args.devices < 1:
        ap.error("--devices must be >= 1")
    if args.compare_devices and args.devices is not None:
        ap.error("--compare-devices chooses the device counts itself; drop --devices")
    return args


def set_host_devices(n: int) -> None:
    """Forces `n` XLA host devices (replacing any count already in XLA_FLAGS); call before importing jax."""
    flags = re.sub(rf"{DEVICE_FLAG}=\S*", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags.strip()} {DEVICE_FLAG}={n}".strip()


def preset_path(model: str) -> Path:
    path = PRESETS.get(model, Path(model))
    if not Path(path).is_file():
        raise SystemExit(f"--model {model!r}: not a preset ({', '.join(PRESETS)}) and not a params file")
    return Path(path)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine() or "unknown"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------
# One benchmark run (in this process)
# ----------------------------------------------------------------------------


def synthetic_batch(batch_size: int, size: int, max_boxes: int, num_classes: int, seed: int = 0) -> dict:
    """A host batch with the keys, shapes and dtypes of `DetectionData.train_batch`: random pixels and
    up to 4 random valid boxes per image (yxyx pixels, classes 1..K), the rest padding."""
    rng = np.random.default_rng(seed)
    b, s, m = batch_size, size, max_boxes
    n = min(4, m)
    hw = rng.uniform(0.1, 0.5, (b, n, 2)) * s
    y0 = rng.uniform(0, 1, (b, n)) * (s - hw[..., 0])
    x0 = rng.uniform(0, 1, (b, n)) * (s - hw[..., 1])
    boxes = np.zeros((b, m, 4), np.float32)
    boxes[:, :n] = np.stack([y0, x0, y0 + hw[..., 0], x0 + hw[..., 1]], -1)
    classes = np.zeros((b, m), np.int32)
    classes[:, :n] = rng.integers(1, num_classes + 1, (b, n))
    valid = np.zeros((b, m), bool)
    valid[:, :n] = True
    return {"image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
            "image_hw": np.full((b, 2), s, np.int32), "boxes": boxes, "classes": classes, "valid": valid,
            "image_id": np.arange(b, dtype=np.int64), "scale": np.ones((b,), np.float32),
            "example_valid": np.ones((b,), bool)}


def xla_flops(cost) -> float | None:
    """'flops' from `cost_analysis()`, which is a dict or (older jax) a list of dicts, or None."""
    if cost is None:
        return None
    if isinstance(cost, dict):
        cost = [cost]
    vals = [c.get("flops") for c in cost if c and c.get("flops") is not None]
    return float(sum(vals)) if vals else None


def matmul_flops_per_s(mesh, n: int, reps: int):
    """Measured float32 n x n @ n x n on `mesh` (rows of A sharded on `data`, B replicated).

    Returns (flop/s from 2·n³ and the p50 time, XLA's flop count of the compiled program
    summed over devices). Dividing the latter by n³ shows how XLA counts a multiply-add."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from stlib.train import sharding

    ndev = mesh.devices.size
    n = max(ndev, n - n % ndev)  # rows split evenly over the devices
    rows, rep = NamedSharding(mesh, P("data")), sharding.replicated(mesh)
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.jit(lambda: jax.random.normal(ka, (n, n), jnp.float32), out_shardings=rows)()
    b = jax.jit(lambda: jax.random.normal(kb, (n, n), jnp.float32), out_shardings=rep)()
    compiled = jax.jit(jnp.matmul, in_shardings=(rows, rep), out_shardings=rows).lower(a, b).compile()
    per_device = xla_flops(compiled.cost_analysis())
    for _ in range(2):
        compiled(a, b).block_until_ready()
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        compiled(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return n, 2 * n ** 3 / float(np.median(times)), (per_device * ndev if per_device is not None else None)


def run_benchmark(args) -> dict:
    import jax
    import jaxlib

    from stlib import config as cfg
    from stlib.data import world
    from stlib.models.depthwise import resolve_impl
    from stlib.train import sharding
    from stlib.tasks.detection import Detector
    from stlib.train.state import count_params

    path = preset_path(args.model)
    overrides = PRESET_OVERRIDES.get(args.model, []) + list(args.overrides)
    if args.size is not None:
        overrides.append(f"data.image_size={args.size}")
    if args.batch is not None:
        overrides.append(f"train.batch_size={args.batch}")
    if args.dtype is not None:
        overrides.append(f"model.dtype={args.dtype}")
    p = cfg.load_params(path, overrides)
    size, bs, mp = p.data.image_size, p.train.batch_size, p.model
    num_classes = len(world.detection_categories()) if p.data.source == "world" else COCO_CLASSES

    # The same Detector (model, anchors, optimizer, jitted steps) that stlib.tasks.detection.DetectionTask uses.
    mesh = sharding.create_mesh()
    try:
        sharding.check_batch_size(bs, mesh)
    except ValueError as e:
        raise SystemExit(f"{e}; pass --batch or --devices") from None
    ndev = mesh.devices.size
    detector = Detector(p, num_classes, mesh)
    jitted = detector.train_step
    state = detector.init_state()
    n_params = count_params(state.params)
    batch = sharding.shard_batch(synthetic_batch(bs, size, p.data.max_boxes, num_classes), mesh)

    # Compile: trace + lower + XLA compile (what the first call of the jitted step pays), then
    # run the compiled executable itself, so the step is compiled exactly once.
    t0 = time.perf_counter()
    lowered = jitted.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    t3 = time.perf_counter()
    loss = float(metrics["loss"])
    # The compiled (SPMD-partitioned) program is one device's share: sum over the devices.
    per_device_flops = xla_flops(compiled.cost_analysis())
    try:
        global_flops = xla_flops(lowered.cost_analysis())  # the unpartitioned program, a cross-check
    except Exception:  # noqa: BLE001 - optional; not every backend/version provides it
        global_flops = None
    step_flops = per_device_flops * ndev if per_device_flops is not None else None

    for _ in range(args.warmup):
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
    times = []
    for _ in range(args.steps):
        s0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - s0)
    del state, metrics, compiled
    times = np.asarray(times)
    mean = float(times.mean())
    p50, p90 = (float(x) for x in np.percentile(times, [50, 90]))

    mm = matmul_flops_per_s(mesh, args.matmul_size, args.matmul_reps) if args.matmul_size > 0 else None

    dev = jax.devices()[0]
    return {
        "model": args.model, "overrides": list(args.overrides), "params_file": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
        "backbone": mp.backbone, "fpn_channels": mp.fpn_channels, "head_convs": mp.head_convs,
        "head_channels": mp.head_channels, "num_classes": num_classes, "size": size, "batch": bs,
        "max_boxes": p.data.max_boxes, "dtype": mp.dtype, "depthwise": resolve_impl(), "devices": ndev, "device_kind": dev.device_kind,
        "platform": dev.platform, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu": cpu_model(), "cores": cpu_cores(),
        "params": n_params, "lower_s": t1 - t0, "compile_s": t2 - t0, "xla_compile_s": t2 - t1,
        "first_step_s": t3 - t2, "first_loss": loss, "steps": args.steps, "warmup": args.warmup,
        "ms_mean": mean * 1e3, "ms_p50": p50 * 1e3, "ms_p90": p90 * 1e3, "images_per_s": bs / mean,
        "flops_per_device": per_device_flops, "flops": step_flops, "flops_unpartitioned": global_flops,
        "achieved_flops_per_s": step_flops / mean if step_flops is not None else None,
        "matmul_n": mm[0] if mm else None, "matmul_flops_per_s": mm[1] if mm else None,
        "matmul_xla_flops": mm[2] if mm else None, "matmul_reps": args.matmul_reps,
    }


def _g(x, unit=1e9, fmt=None):
    """x / unit with 3 significant digits (no exponent), or `fmt`; 'n/a' for None."""
    if x is None:
        return "n/a"
    x /= unit
    if fmt is None:
        digits = 3 - (int(np.floor(np.log10(abs(x)))) + 1) if x else 0
        fmt = f"{{:.{max(0, digits)}f}}"
    return fmt.format(x)


def report(r: dict) -> str:
    """The `key: value` lines; the last one is `images/s: <number>`."""
    L = []
    add = lambda k, v: L.append(f"{k}: {v}")
    add("benchmark", "stlib.tasks.detection.train_step (jitted; synthetic batch; state replicated, batch sharded on 'data')")
    add("model", f"{r['model']} ({r['params_file']}: {r['backbone']}, FPN {r['fpn_channels']}, "
                 f"heads {r['head_convs']}x{r['head_channels']}, {r['num_classes']} classes)")
    add("image size", r["size"])
    add("batch", f"{r['batch']} (global; {r['batch'] // r['devices']} per device; max_boxes {r['max_boxes']})")
    add("dtype", r["dtype"])
    add("depthwise convolutions", f"{r.get('depthwise', 'n/a')} (stlib.models.depthwise; STLIB_DEPTHWISE chooses)")
    add("devices", f"{r['devices']} x {r['device_kind']}")
    add("platform", r["platform"])
    add("jax", f"{r['jax']} (jaxlib {r['jaxlib']})")
    add("XLA_FLAGS", r["xla_flags"] or "(none)")
    add("cpu", f"{r['cpu']} ({r['cores']} cores)")
    add("parameters", f"{r['params']:,}")
    add("compile s", f"{r['compile_s']:.2f} (trace+lower {r['lower_s']:.2f}, XLA compile {r['xla_compile_s']:.2f})")
    add("first step s", f"{r['first_step_s']:.3f} (loss {r['first_loss']:.4f})")
    add("timed steps", f"{r['steps']} (after {r['warmup']} warmup; block_until_ready each step)")
    add("ms/step mean", f"{r['ms_mean']:.2f}")
    add("ms/step p50", f"{r['ms_p50']:.2f}")
    add("ms/step p90", f"{r['ms_p90']:.2f}")
    unpart = "" if r["flops_unpartitioned"] is None else f"; unpartitioned program {_g(r['flops_unpartitioned'])}"
    add("GFLOP/step", f"{_g(r['flops'])} (XLA cost analysis of the compiled step: "
                      f"{_g(r['flops_per_device'])} per device x {r['devices']}{unpart})")
    add("achieved GFLOP/s", _g(r["achieved_flops_per_s"]))
    if r["matmul_flops_per_s"] is not None:
        n = r["matmul_n"]
        devs = f"{r['devices']} device{'s' if r['devices'] > 1 else ''}"
        add("matmul GFLOP/s", f"{_g(r['matmul_flops_per_s'])} (float32 {n}x{n} @ {n}x{n}, rows sharded over "
                              f"{devs}, 2*n^3 flops, p50 of {r['matmul_reps']})")
        ratio = (r["achieved_flops_per_s"] / r["matmul_flops_per_s"]) if r["achieved_flops_per_s"] else None
        add("achieved/matmul", "n/a" if ratio is None else f"{ratio:.3f}")
        if r["matmul_xla_flops"]:
            add("flop counting", f"XLA counts the {n}^3 matmul as {r['matmul_xla_flops'] / n ** 3:.2f}*n^3 flops "
                                 f"(2.00 = a multiply-add is 2 flops)")
    else:
        add("matmul GFLOP/s", "skipped (--matmul-size 0)")
        add("achieved/matmul", "n/a")
    add("images/s", f"{r['images_per_s']:.2f}")
    return "\n".join(L)


# ----------------------------------------------------------------------------
# benchmarks/RESULTS.md
# ----------------------------------------------------------------------------

COLUMNS = ["date", "machine", "devices", "model", "size", "batch", "dtype", "jax", "compile s", "ms/step",
           "images/s", "GFLOP/step", "achieved GFLOP/s", "matmul GFLOP/s"]
KEY_COLUMNS = 8  # date..jax: a rerun with the same key replaces its row; anything else adds one
RESULTS_HEADER = """\
# Train-step benchmark results

Rows are written by `python benchmarks/train_step.py ... --write` (how to run it and what each
number means: [README.md](README.md)). Every number is a measurement of one run on the machine,
devices and jax version named in its row, on the date given. None is an assertion about other
machines or later code: to know today's numbers, rerun the command. A rerun with the same date,
machine, devices, model, size, batch, dtype and jax replaces that row.

Columns: **machine** CPU model (from /proc/cpuinfo) and cores; **devices** XLA device count x kind
(on CPU, forced host devices sharing those cores); **model** preset and backbone (and any `--set` overrides); **size** image
side S; **batch** global batch; **dtype** model compute dtype; **compile s** trace + lower + XLA
compile of the train step; **ms/step** mean over the timed steps; **images/s** batch / mean step
time; **GFLOP/step** XLA cost analysis of the compiled step summed over devices (a multiply-add
counts 2); **achieved GFLOP/s** GFLOP/step / mean step time; **matmul GFLOP/s** a float32
2048x2048 matmul on the same devices (2n^3 flops / p50 time), the machine's practical peak.

"""


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def results_row(r: dict) -> list[str]:
    clean = lambda s: str(s).replace("|", "/")
    return [datetime.date.today().isoformat(), clean(f"{r['cpu']} ({r['cores']} cores)"),
            clean(f"{r['devices']}x {r['device_kind']}"), clean(f"{r['model']} ({r['backbone']}"
                                                           + "".join(f"; {o}" for o in r.get("overrides", [])) + ")"),
            str(r["size"]), str(r["batch"]), r["dtype"], r["jax"], f"{r['compile_s']:.1f}", f"{r['ms_mean']:.1f}",
            f"{r['images_per_s']:.2f}", _g(r["flops"]), _g(r["achieved_flops_per_s"], fmt="{:.1f}"),
            _g(r["matmul_flops_per_s"], fmt="{:.1f}")
            + (f" (n={r['matmul_n']})" if r["matmul_n"] not in (None, 2048) else "")]


def write_results(path: Path, r: dict) -> None:
    from stlib.io import write_text_atomic

    header_line = "| " + " | ".join(COLUMNS) + " |"
    sep_line = "|" + "|".join("---" for _ in COLUMNS) + "|"
    before, rows, after = RESULTS_HEADER, [], ""
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        start = next((i for i, l in enumerate(lines) if _cells(l) == COLUMNS), None)
        if start is None:
            raise SystemExit(f"{path}: no results table with the columns {COLUMNS}; move the file away or fix it")
        end = start + 2
        while end < len(lines) and lines[end].lstrip().startswith("|"):
            end += 1
        before, after = "".join(lines[:start]), "".join(lines[end:])
        rows = [_cells(l) for l in lines[start + 2:end]]
    new = results_row(r)
    rows = [row for row in rows if row[:KEY_COLUMNS] != new[:KEY_COLUMNS]] + [new]
    table = "\n".join([header_line, sep_line] + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
    write_text_atomic(path, before + table + after)


# ----------------------------------------------------------------------------
# --compare-devices
# ----------------------------------------------------------------------------


def child_argv(args, devices: int) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--devices", str(devices), "--matmul-size", str(args.matmul_size),
            "--matmul-reps", str(args.matmul_reps), "--results", str(args.results)]
    for flag, v in (("--size", args.size), ("--batch", args.batch), ("--dtype", args.dtype)):
        if v is not None:
            argv += [flag, str(v)]
    for o in args.overrides:
        argv += ["--set", o]
    return argv + (["--write"] if args.write else [])


def parse_report(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k] = v
    return out


def compare_devices(args, counts=(1, 2)) -> int:
    """Runs the benchmark in a fresh process per device count (XLA reads the flag once per process)."""
    if args.batch is not None and any(args.batch % n for n in counts):
        raise SystemExit(f"--batch {args.batch} must be a multiple of each device count {counts}")
    results = {}
    for n in counts:
        print(f"== {n} host device{'s' if n > 1 else ''} ==", flush=True)
        proc = subprocess.run(child_argv(args, n), cwd=REPO, capture_output=True, text=True)
        print(proc.stdout, end="", flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-5000:], file=sys.stderr)
            raise SystemExit(f"the {n}-device run failed (exit {proc.returncode})")
        results[n] = parse_report(proc.stdout)
    print("== comparison ==")
    cols = ["compile s", "ms/step mean", "ms/step p50", "achieved GFLOP/s", "matmul GFLOP/s", "images/s"]
    for n in counts:
        cells = ", ".join(f"{c} {results[n].get(c, 'n/a').split(' (')[0]}" for c in cols)
        print(f"devices {n}: {cells}")
    a, b = (float(results[n]["images/s"]) for n in (counts[0], counts[-1]))
    print(f"speedup {counts[-1]} vs {counts[0]} devices: {b / a:.3f}x images/s")
    print(f"images/s: {results[counts[-1]]['images/s']}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare_devices:
        return compare_devices(args)
    if args.devices is not None:
        set_host_devices(args.devices)  # before jax/stlib are imported
    r = run_benchmark(args)
    if args.write:
        write_results(args.results, r)
        print(f"wrote a row to {args.results}", file=sys.stderr)
    print(report(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
