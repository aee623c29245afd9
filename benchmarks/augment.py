#!/usr/bin/env python
"""Augmentation benchmark: images/s of `stlib.augment.augment_batch` alone, per policy, mode and size,
and the share of the mini train step that augmentation takes.

For each image size in --sizes and each policy s1..s4 (s1 is always vmapped; s2..s4 in each of
--modes, "map" and "vmap"), jits `augment_batch` on the mesh the train step uses (batch sharded on
`data`) and times it on a realistic synthetic batch: random uint8 content of random size filling
most of the canvas, 4-6 random valid boxes per image, a semantic mask. Then (unless
--skip-train-step) times stlib's jitted mini train step at the first size with each policy
(`--set augment.policy=sN`) and mode, and once with augmentation replaced by normalization only,
on the same batch, and reports

    share alone   = augment-alone ms / step ms                      (same policy, mode, size, batch, mesh)
    share in step = (step ms - step-without-augmentation ms) / step ms

against the goal that augmentation takes at most 15% of a mini train step. See benchmarks/README.md.

    python benchmarks/augment.py                                  # 128 (mini) and 640, s1..s4, map and vmap
    python benchmarks/augment.py --sizes 128 --policies s4 --modes map
    python benchmarks/augment.py --write                          # add a dated section to RESULTS.md

Output is `key: value` lines and a table; the last line is always `images/s: <number>` (the first
size's s4 row in the train step's mode).
"""
from __future__ import annotations

# Only the standard library and numpy at module level: --devices must set XLA_FLAGS before
# jax (or stlib, which configures the host devices on import) is imported.
import argparse
import contextlib
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for p in (str(REPO), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

import train_step as ts  # noqa: E402  benchmarks/train_step.py: device forcing, presets, machine description

PRESET = ts.PRESETS["mini"]
RESULTS = REPO / "benchmarks/RESULTS.md"
POLICIES = ("s1", "s2", "s3", "s4")
MODES = ("map", "vmap")
GOAL_SHARE = 0.15  # the goal: augmentation takes at most 15% of a mini train step
LARGE_BATCH = 8      # default batch at sizes other than the preset's
LARGE_MAX_BOXES = 100  # COCO's max_boxes (params/paper) at sizes other than the preset's
PAPER_SIZE = 640     # pixel_scale = size / 640 at sizes other than the preset's (1.0 at the paper's 640)


def _csv(kind, allowed=None):
    def parse(text):
        vals = [kind(v.strip()) for v in text.split(",") if v.strip()]
        if not vals:
            raise argparse.ArgumentTypeError("empty list")
        if allowed is not None and any(v not in allowed for v in vals):
            raise argparse.ArgumentTypeError(f"{text!r}: each must be one of {', '.join(allowed)}")
        return list(dict.fromkeys(vals))
    return parse


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=_csv(int), default=[128, 640],
                    help="image sizes S, comma-separated (default 128,640); the first is the one the train step "
                         "runs at (multiple of 32)")
    ap.add_argument("--policies", type=_csv(str, POLICIES), default=list(POLICIES), help="default s1,s2,s3,s4")
    ap.add_argument("--modes", type=_csv(str, MODES), default=list(MODES),
                    help="augment_batch modes for s2..s4 (default map,vmap); s1 always runs vmap")
    ap.add_argument("--batch", type=int, default=None,
                    help=f"batch at every size (default: the mini preset's train.batch_size at its image size, "
                         f"{LARGE_BATCH} at other sizes)")
    ap.add_argument("--steps", type=int, default=10, help="timed batches per row and timed train steps (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs after the first (default 2)")
    ap.add_argument("--no-mask", dest="mask", action="store_false", help="leave the semantic mask out of the batch")
    ap.add_argument("--skip-train-step", action="store_true", help="time augmentation alone (no train steps, no shares)")
    ap.add_argument("--devices", type=int, default=None,
                    help="host (CPU) devices to force via XLA_FLAGS (default: stlib's, one per core)")
    ap.add_argument("--write", action="store_true", help=f"add a dated section to {RESULTS.relative_to(REPO)}")
    ap.add_argument("--results", type=Path, default=RESULTS, help="results file for --write")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    if args.devices is not None and args.devices < 1:
        ap.error("--devices must be >= 1")
    if args.batch is not None and args.batch < 1:
        ap.error("--batch must be >= 1")
    if any(s < 32 for s in args.sizes):
        ap.error("--sizes must be >= 32")
    if not args.skip_train_step and args.sizes[0] % 32:
        ap.error(f"the train step runs at the first size, which must be a multiple of 32 (got {args.sizes[0]})")
    return args


# ----------------------------------------------------------------------------
# The batch
# ----------------------------------------------------------------------------


def realistic_batch(batch_size: int, size: int, max_boxes: int, num_classes: int, mask: bool = True,
                    seed: int = 0) -> dict:
    """A host batch with the keys, shapes and dtypes of `DetectionData.train_batch` (plus `mask`).

    Like the pipeline's canvases, each image's content has its long side = `size` and the short
    side U(0.6, 1.0) x size (random orientation), in the top-left corner, zeros around it; the
    content is random uint8 pixels. 4-6 valid boxes per image (at most `max_boxes`), sides
    U(0.08, 0.5) x the content's, inside the content; classes 1..K; the rest padding. `mask`:
    the boxes' classes painted on background 0 inside the content, 255 (ignore) outside.
    """
    rng = np.random.default_rng(seed)
    b, s, m = batch_size, size, max_boxes
    short = np.round(rng.uniform(0.6, 1.0, b) * s).astype(np.int32)
    tall = rng.random(b) < 0.5
    hw = np.stack([np.where(tall, s, short), np.where(tall, short, s)], -1).astype(np.int32)
    image = np.zeros((b, s, s, 3), np.uint8)
    sem = np.full((b, s, s), 255, np.uint8)
    boxes = np.zeros((b, m, 4), np.float32)
    classes = np.zeros((b, m), np.int32)
    valid = np.zeros((b, m), bool)
    for i in range(b):
        h, w = hw[i]
        image[i, :h, :w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        sem[i, :h, :w] = 0
        n = min(int(rng.integers(4, 7)), m)
        bh = rng.uniform(0.08, 0.5, n) * h
        bw = rng.uniform(0.08, 0.5, n) * w
        y0 = rng.uniform(0, 1, n) * (h - bh)
        x0 = rng.uniform(0, 1, n) * (w - bw)
        boxes[i, :n] = np.stack([y0, x0, y0 + bh, x0 + bw], -1)
        classes[i, :n] = rng.integers(1, num_classes + 1, n)
        valid[i, :n] = True
        for (by0, bx0, by1, bx1), c in zip(boxes[i, :n], classes[i, :n]):
            sem[i, int(by0):int(np.ceil(by1)), int(bx0):int(np.ceil(bx1))] = min(int(c), 254)
    out = {"image": image, "image_hw": hw, "boxes": boxes, "classes": classes, "valid": valid,
           "image_id": np.arange(b, dtype=np.int64), "scale": np.ones((b,), np.float32),
           "example_valid": np.ones((b,), bool)}
    if mask:
        out["mask"] = sem
    return out


# ----------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------


def size_params(args, size: int, policy: str):
    """The mini preset's params at `size` with `policy` (and the size's batch, max_boxes, pixel_scale)."""
    from stlib import config as cfg

    base = cfg.load_params(PRESET, [])
    native = size == base.data.image_size
    batch = args.batch if args.batch is not None else (base.train.batch_size if native else LARGE_BATCH)
    max_boxes = base.data.max_boxes if native else LARGE_MAX_BOXES
    pixel_scale = base.augment.pixel_scale if native else size / PAPER_SIZE
    return cfg.load_params(PRESET, [f"augment.policy={policy}", f"data.image_size={size}",
                                    f"train.batch_size={batch}", f"data.max_boxes={max_boxes}",
                                    f"augment.pixel_scale={pixel_scale!r}"])


def _time(fn, steps: int, warmup: int, start: int = 1):
    """Runs fn(i) for warmup then timed steps (block_until_ready each); returns the times in seconds."""
    import jax

    i = start
    for _ in range(warmup):
        jax.block_until_ready(fn(i))
        i += 1
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(i))
        times.append(time.perf_counter() - t0)
        i += 1
    return np.asarray(times)


def time_augment(p, mode: str, batch: dict, mesh, steps: int, warmup: int) -> dict:
    """augment_batch alone, jitted with the train step's shardings (batch on `data`), a new key per run."""
    import jax

    from stlib.augment import augment_batch
    from stlib.train import sharding

    rep, bat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    aug = p.augment

    def fn(step, batch):
        return augment_batch(jax.random.fold_in(jax.random.PRNGKey(0), step), batch, aug, mode, mesh=mesh)

    jitted = jax.jit(fn, in_shardings=(rep, bat), out_shardings=bat)
    n_keys = 1 + warmup + steps
    keys = [jax.device_put(np.int32(i), rep) for i in range(n_keys)]
    t0 = time.perf_counter()
    compiled = jitted.lower(keys[0], batch).compile()
    t1 = time.perf_counter()
    jax.block_until_ready(compiled(keys[0], batch))
    t2 = time.perf_counter()
    times = _time(lambda i: compiled(keys[i], batch), steps, warmup)
    mean = float(times.mean())
    return {"compile_s": t1 - t0, "first_s": t2 - t1, "ms": mean * 1e3,
            "ms_p50": float(np.median(times)) * 1e3, "images_per_s": batch["image"].shape[0] / mean}


@contextlib.contextmanager
def step_augmentation(kind: str | None):
    """Swaps the augmentation inside `stlib.tasks.detection.train_step` while a step is traced.

    None: the real step, untouched. "map"/"vmap": `augment_batch` forced to that mode. "none":
    augmentation replaced by normalization only (`prepare_eval_batch`), the no-augmentation
    baseline. Patches the name `train_step` calls (`stlib.tasks.detection.augment_batch`); yields a
    list that gets an entry per call, so a step that no longer calls it is caught.
    """
    import stlib.tasks.detection as step_mod
    from stlib.augment import prepare_eval_batch

    calls = []
    if kind is None:
        yield None
        return
    orig = step_mod.augment_batch

    def patched(key, batch, aug, *unused, mesh=None, **unused_kw):
        calls.append(kind)
        return prepare_eval_batch(batch) if kind == "none" else orig(key, batch, aug, mode=kind, mesh=mesh)

    step_mod.augment_batch = patched
    try:
        yield calls
    finally:
        step_mod.augment_batch = orig


def time_train_step(p, host_batch: dict, mesh, num_classes: int, steps: int, warmup: int,
                    augmentation: str | None = None) -> dict:
    """stlib's jitted train step (`Detector.train_step`, as train_step.py times it) on `host_batch`;
    `augmentation` as in `step_augmentation` (None = the real step)."""
    import jax

    from stlib.train import sharding
    from stlib.tasks.detection import Detector

    batch = sharding.shard_batch(host_batch, mesh)
    with step_augmentation(augmentation) as calls:
        detector = Detector(p, num_classes, mesh)
        state = detector.init_state()
        t0 = time.perf_counter()
        compiled = detector.train_step.lower(state, batch).compile()
        t1 = time.perf_counter()
    if calls is not None and not calls:
        raise SystemExit("stlib.tasks.detection.train_step no longer calls stlib.tasks.detection.augment_batch; "
                         "update benchmarks/augment.py's step_augmentation")
    holder = {"state": state}

    def step(_):
        holder["state"], metrics = compiled(holder["state"], batch)  # the state is donated: carry it on
        return holder["state"], metrics

    jax.block_until_ready(step(0))
    times = _time(step, steps, warmup)
    mean = float(times.mean())
    return {"compile_s": t1 - t0, "ms": mean * 1e3, "ms_p50": float(np.median(times)) * 1e3,
            "images_per_s": p.train.batch_size / mean}


def train_step_mode(image_size: int) -> str:
    """The mode `stlib.tasks.detection.train_step` augments with: it calls augment_batch without one, so the
    default, which `batch_mode` resolves for this platform and image size."""
    import inspect

    from stlib.augment import augment_batch, batch_mode
    return batch_mode(inspect.signature(augment_batch).parameters["mode"].default, image_size)


def row_modes(policy: str, modes: list[str]) -> list[str]:
    return ["vmap"] if policy == "s1" else modes


def is_step_mode(policy: str, mode: str, step_mode: str) -> bool:
    """Whether the real train step runs `policy` in `mode` (s1 is always vmap)."""
    return mode == ("vmap" if policy == "s1" else step_mode)


def _note(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def run_benchmark(args) -> dict:
    import jax
    import jaxlib

    from stlib.data import world
    from stlib.train import sharding

    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    mesh = sharding.create_mesh()
    ndev = mesh.devices.size
    step_mode = train_step_mode(args.sizes[0])
    rows, steps, batches = [], {}, {}
    for size in args.sizes:
        p0 = size_params(args, size, "s1")
        try:
            sharding.check_batch_size(p0.train.batch_size, mesh)
        except ValueError as e:
            raise SystemExit(f"size {size}: {e}; pass --batch or --devices") from None
        num_classes = len(world.detection_categories()) if p0.data.source == "world" else ts.COCO_CLASSES
        host = realistic_batch(p0.train.batch_size, size, p0.data.max_boxes, num_classes, args.mask)
        batches[size] = (host, num_classes)
        dev_batch = sharding.shard_batch(host, mesh)
        for policy in args.policies:
            p = size_params(args, size, policy)
            for mode in row_modes(policy, args.modes):
                r = time_augment(p, mode, dev_batch, mesh, args.steps, args.warmup)
                r.update(policy=policy, mode=mode, size=size, batch=p.train.batch_size,
                         max_boxes=p.data.max_boxes, pixel_scale=p.augment.pixel_scale)
                rows.append(r)
                _note(f"{policy} {mode} {size}: {r['ms']:.2f} ms/batch, {r['images_per_s']:.1f} images/s, "
                      f"compile {r['compile_s']:.2f} s")
        del dev_batch
    step_size = args.sizes[0]
    if not args.skip_train_step:
        host, num_classes = batches[step_size]
        for policy in args.policies:
            p = size_params(args, step_size, policy)
            for mode in row_modes(policy, args.modes):
                real = is_step_mode(policy, mode, step_mode)
                st = time_train_step(p, host, mesh, num_classes, args.steps, args.warmup,
                                     augmentation=None if real else mode)
                st["real"] = real
                steps[(policy, mode)] = st
                _note(f"train step {policy} {mode}{'' if real else ' (patched)'} {step_size}: {st['ms']:.2f} ms/step, "
                      f"compile {st['compile_s']:.2f} s")
        # The baseline: the same step with augmentation replaced by normalization only. Timed last, on
        # warm devices: on an H200, timed first, it read slower than the s1 step, which does more work.
        steps["none"] = time_train_step(size_params(args, step_size, "s1"), host, mesh, num_classes, args.steps,
                                        args.warmup, augmentation="none")
        _note(f"train step, no augmentation, {step_size}: {steps['none']['ms']:.2f} ms/step, "
              f"compile {steps['none']['compile_s']:.2f} s")
    base = steps.get("none")
    for r in rows:
        st = steps.get((r["policy"], r["mode"])) if r["size"] == step_size else None
        r["step_ms"] = st["ms"] if st else None
        r["share"] = r["ms"] / st["ms"] if st else None  # augmentation alone / the step
        r["share_in_step"] = (st["ms"] - base["ms"]) / st["ms"] if st and base else None

    dev = jax.devices()[0]
    return {"rows": rows, "train_steps": steps, "step_size": step_size, "step_mode": step_mode,
            "devices": ndev, "device_kind": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu": ts.cpu_model(),
            "cores": ts.cpu_cores(), "steps": args.steps, "warmup": args.warmup, "mask": args.mask,
            "load_start": load_start, "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------

TABLE_COLUMNS = ["policy", "mode", "size", "batch", "compile s", "ms/batch", "images/s", "step ms",
                 "share alone", "share in step", "<= 15%"]


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def verdict_share(r: dict):
    """The share the goal is judged on: in the step where measured, else augmentation alone / the step."""
    return r["share_in_step"] if r["share_in_step"] is not None else r["share"]


def table_rows(res: dict) -> list[list[str]]:
    out = []
    for r in res["rows"]:
        mode = r["mode"] + ("*" if is_step_mode(r["policy"], r["mode"], res["step_mode"]) else "")
        share = verdict_share(r)
        out.append([r["policy"], mode, str(r["size"]), str(r["batch"]), f"{r['compile_s']:.1f}", f"{r['ms']:.1f}",
                    f"{r['images_per_s']:.1f}", "n/a" if r["step_ms"] is None else f"{r['step_ms']:.1f}",
                    _pct(r["share"]), _pct(r["share_in_step"]),
                    "n/a" if share is None else ("yes" if share <= GOAL_SHARE else "no")])
    return out


def markdown_table(res: dict) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(res)]
    return "\n".join(lines)


def headline(res: dict) -> dict:
    """The row the last line reports: first size, s4 (else the last policy run), the train step's mode."""
    rows = [r for r in res["rows"] if r["size"] == res["step_size"]]
    policy = "s4" if any(r["policy"] == "s4" for r in rows) else rows[-1]["policy"]
    rows = [r for r in rows if r["policy"] == policy]
    return next((r for r in rows if is_step_mode(policy, r["mode"], res["step_mode"])), rows[0])


def goal_lines(res: dict) -> list[str]:
    """One line per policy: the share of the step in each mode, and whether it meets the 15% goal."""
    out = []
    for policy in dict.fromkeys(r["policy"] for r in res["rows"]):
        rows = [r for r in res["rows"] if r["policy"] == policy and r["size"] == res["step_size"]
                and verdict_share(r) is not None]
        parts = []
        for r in rows:
            share = verdict_share(r)
            how = "in step" if r["share_in_step"] is not None else "alone"
            star = ", the train step's mode" if is_step_mode(policy, r["mode"], res["step_mode"]) else ""
            parts.append(f"{r['mode']} ({how}{star}) {100 * share:.1f}% {'meets' if share <= GOAL_SHARE else 'misses'}")
        if parts:
            out.append(f"goal {policy}: " + "; ".join(parts))
    return out


def load_text(res: dict) -> str:
    return (f"{res['load_start']:.2f} at the start, {res['load']:.2f} at the end (1 min; the end counts this "
            f"benchmark's own threads)")


def report(res: dict) -> str:
    L = []
    add = lambda k, v: L.append(f"{k}: {v}")
    add("benchmark", "stlib.augment.augment_batch alone (jitted; batch sharded on 'data'; new key per run) "
                     "and its share of the mini train step")
    add("batch content", "random uint8 content, long side = S, short side U(0.6,1)*S; 4-6 valid boxes, sides "
                         "U(0.08,0.5) of the content; " + ("semantic mask" if res["mask"] else "no mask"))
    add("sizes", ", ".join(f"{r['size']} (batch {r['batch']}, max_boxes {r['max_boxes']}, pixel_scale "
                           f"{r['pixel_scale']:g})" for r in {r["size"]: r for r in res["rows"]}.values()))
    add("devices", f"{res['devices']} x {res['device_kind']}")
    add("platform", res["platform"])
    add("jax", f"{res['jax']} (jaxlib {res['jaxlib']})")
    add("XLA_FLAGS", res["xla_flags"] or "(none)")
    add("cpu", f"{res['cpu']} ({res['cores']} cores)")
    if res["load"] is not None:
        add("load average", load_text(res))
    add("timed runs", f"{res['steps']} per row and per step (after {res['warmup']} warmup; block_until_ready each)")
    add("train step mode", f"{res['step_mode']} (augment_batch's default; s1 always vmap); * marks it below")
    steps = res["train_steps"]
    if steps:
        add("train step", f"params/mini/retinanet.yaml at {res['step_size']}, --set augment.policy=sN: " + ", ".join(
            f"{k[0]} {k[1]}{'' if v['real'] else ' (patched)'} {v['ms']:.1f} ms (compile {v['compile_s']:.1f} s)"
            for k, v in steps.items() if k != "none"))
        add("train step without augmentation", f"{steps['none']['ms']:.1f} ms (compile {steps['none']['compile_s']:.1f} s; "
                                               "augment_batch replaced by normalization only)")
        add("share alone", "augmentation-alone ms/batch / step ms, same policy, mode, size, batch and mesh")
        add("share in step", "(step ms - step without augmentation ms) / step ms; the goal is judged on this one")
    else:
        add("train step", "skipped (--skip-train-step)")
    L.append("")
    L.append(markdown_table(res))
    L.append("")
    for line in goal_lines(res):
        L.append(line)
    h = headline(res)
    add("headline", f"{h['policy']} {h['mode']} at {h['size']}")
    add("images/s", f"{h['images_per_s']:.2f}")
    return "\n".join(L)


# ----------------------------------------------------------------------------
# benchmarks/RESULTS.md
# ----------------------------------------------------------------------------

SECTION = "## Augmentation benchmark (`benchmarks/augment.py`)"
SECTION_INTRO = """\
Sections are written by `python benchmarks/augment.py ... --write` (how to run it and what each
number means: [README.md](README.md)), one per run: the date, machine, devices and jax in its
heading and the command under it. Every number is a measurement of that run, not an assertion
about other machines or later code. A rerun of the same command on the same date, machine,
devices and jax replaces its section.

Columns: **mode** `augment_batch`'s mode (`*` = the one the real train step runs; s1 is always
vmap); **compile s** trace + lower + XLA compile of the jitted `augment_batch`; **ms/batch** mean
over the timed runs; **images/s** batch / ms/batch; **step ms** the mini train step with that
policy and mode (first size only; the mode without `*` forced by the benchmark); **share alone**
ms/batch / step ms; **share in step** (step ms - the same step without augmentation) / step ms;
**<= 15%** the issue's goal, judged on the share in step (else the share alone).
"""


def section_text(res: dict, command: str) -> tuple[str, str]:
    clean = lambda s: str(s).replace("|", "/")
    heading = (f"### {datetime.date.today().isoformat()} · {clean(res['cpu'])} ({res['cores']} cores) · "
               f"{res['devices']}x {clean(res['device_kind'])} · jax {res['jax']}")
    body = [f"`{command}`", ""]
    if res["load"] is not None:
        body += [f"Load average: {load_text(res)}.", ""]
    if "none" in res["train_steps"]:
        body += [f"Train step without augmentation: {res['train_steps']['none']['ms']:.1f} ms.", ""]
    body += [markdown_table(res), ""] + [f"- {line}" for line in goal_lines(res)]
    return heading, "\n".join(body).rstrip() + "\n"


def write_results(path: Path, res: dict, command: str) -> None:
    """Adds this run's section under SECTION (created at the end if missing); replaces an identical rerun."""
    from stlib.io import write_text_atomic

    heading, body = section_text(res, command)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip("\n") == SECTION), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + SECTION + "\n\n" + SECTION_INTRO
        lines = text.splitlines(keepends=True)
        start = next(i for i, l in enumerate(lines) if l.rstrip("\n") == SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    # Split the section into its intro and the runs (each from its "### " heading to the next).
    runs, cur, intro = [], None, []
    for l in lines[start + 1:end]:
        if l.startswith("### "):
            cur = [l]
            runs.append(cur)
        elif cur is None:
            intro.append(l)
        else:
            cur.append(l)
    cmd_line = f"`{command}`"
    same = lambda run: run[0].rstrip("\n") == heading and any(l.rstrip("\n") == cmd_line for l in run[1:3])
    runs = [r for r in runs if not same(r)]
    blocks = ["".join(intro).rstrip("\n") + "\n"] + ["".join(r).rstrip("\n") + "\n" for r in runs]
    blocks.append(heading + "\n\n" + body)
    section = SECTION + "\n" + "\n".join(blocks)
    after = "".join(lines[end:])
    out = "".join(lines[:start]) + section + ("\n" + after if after else "")
    write_text_atomic(path, out)


def command_line(argv) -> str:
    args = [a for a in argv if a != "--write"]
    skip = {"--results"}
    out, drop = [], False
    for a in args:
        if drop:
            drop = False
            continue
        if a in skip:
            drop = True
            continue
        if a.startswith("--results="):
            continue
        out.append(a)
    return " ".join(["python benchmarks/augment.py"] + [shlex.quote(a) for a in out])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.devices is not None:
        ts.set_host_devices(args.devices)  # before jax/stlib are imported
    res = run_benchmark(args)
    if args.write:
        write_results(args.results, res, command_line(argv))
        print(f"wrote a section to {args.results}", file=sys.stderr)
    print(report(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
