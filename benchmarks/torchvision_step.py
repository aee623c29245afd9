#!/usr/bin/env python
"""torchvision's RetinaNet-ResNet-50 train step on the CPU, and stlib's beside it (issue 20).

Run with a Python that has torch and torchvision (benchmarks/README.md says how to make
`.venv-torch/`), it times `torchvision.models.detection.retinanet_resnet50_fpn` training on
synthetic batches: the same work as stlib's `retinanet-resnet50` preset with Rand Init,
- no pretrained weights, so every layer trains and BatchNorm is the ordinary, batch-statistics
  kind (with ImageNet weights torchvision freezes the stem and layer1 and uses frozen
  BatchNorm, which skips much of the backward pass);
- images already at the size, and its transform told not to resize them (min = max = size);
- stlib's class count (80, COCO's), 4 random boxes per image, SGD with momentum, float32, torch's threads =
  the cores.

    .venv-torch/bin/python benchmarks/torchvision_step.py --size 512 --batch 2     # torchvision alone
    .venv/bin/python benchmarks/torchvision_step.py --compare --size 512 --batch 2 # both, one after the other
    .venv/bin/python benchmarks/torchvision_step.py --compare --write ...          # ... and a RESULTS.md section
    .venv-torch/bin/python benchmarks/torchvision_step.py --convs                  # torch's single convolutions

`--compare` runs benchmarks/train_step.py (`--model retinanet-resnet50`, float32) in this Python,
once per `--conv` value of STLIB_CONV (`stlib.models.convolution`), and this script in
`--torch-python`, each in a fresh process on the quiet machine, and prints them with the ratio
(stlib images/s / torchvision images/s) and stlib's first-step loss (the same either way).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/RESULTS.md"
HEADING = "## ResNet-50 RetinaNet train step against torchvision (`benchmarks/torchvision_step.py`)"


def _run_times(f, reps: int) -> list[float]:
    """Seconds of each of `reps` calls of `f`."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return times


def torch_rate(size: int, batch: int, steps: int, warmup: int, num_classes: int = 80) -> dict:
    import numpy as np
    import torch
    from torchvision.models.detection import retinanet_resnet50_fpn
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                   min_size=size, max_size=size)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)

    def batch_data():
        images = [torch.rand(3, size, size) for _ in range(batch)]
        targets = []
        for _ in range(batch):
            y0, x0 = rng.uniform(0, size * 0.6, 2), rng.uniform(0, size * 0.6, 2)
            boxes = [[x0[k % 2], y0[k % 2], x0[k % 2] + size * 0.3, y0[k % 2] + size * 0.3] for k in range(4)]
            targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                            "labels": torch.tensor(rng.integers(1, num_classes, 4), dtype=torch.int64)})
        return images, targets

    def step():
        images, targets = batch_data()
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    for _ in range(warmup):
        step()
    times = _run_times(step, steps)
    ms = 1000 * sum(times) / len(times)
    return {"params": sum(p.numel() for p in model.parameters()), "ms/step": ms, "images/s": batch / (ms / 1000),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def torch_convs(reps: int = 7) -> list[str]:
    """torch's single convolutions at benchmarks/conv_grad.py's shapes: forward, input gradient and
    weight gradient ms (p50), to set beside XLA's in that script's section."""
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    sys.path.insert(0, str(REPO))
    from benchmarks.conv_grad import SHAPES

    def p50(f):
        f()
        return 1000 * sorted(_run_times(f, reps))[reps // 2]

    lines = []
    for n, side, cin, cout, k, s in SHAPES:
        x, w = torch.randn(n, cin, side, side), torch.randn(cout, cin, k, k)
        y = torch.nn.functional.conv2d(x, w, stride=s, padding=k // 2)
        g = torch.randn_like(y)

        def grad(which):
            return lambda: torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [k // 2, k // 2], [1, 1],
                                                               False, [0, 0], 1, which)
        fwd = p50(lambda: torch.nn.functional.conv2d(x, w, stride=s, padding=k // 2))
        lines.append(f"{n}, {side}, {cin}, {cout}, {k}, {s}: forward {fwd:.1f} ms, input grad "
                     f"{p50(grad([True, False, False])):.1f}, weight grad {p50(grad([False, True, False])):.1f}")
    return lines


def _stlib_rate(size: int, batch: int, steps: int, warmup: int, conv: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/train_step.py"), "--model", "retinanet-resnet50",
                           "--size", str(size), "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup),
                           "--matmul-size", "0"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "STLIB_CONV": conv})
    if proc.returncode:
        raise SystemExit(f"benchmarks/train_step.py failed:\n{proc.stderr[-3000:]}")
    out = dict(re.findall(r"^([\w /.-]+): (.+)$", proc.stdout, re.M))
    ms = float(out["ms/step mean"])
    classes = int(re.search(r"(\d+) classes", out["model"]).group(1))
    return {"ms/step": ms, "images/s": batch / (ms / 1000), "classes": classes, "raw": out}


def _torch_via(python: str, size: int, batch: int, steps: int, warmup: int, classes: int) -> dict:
    proc = subprocess.run([python, __file__, "--size", str(size), "--batch", str(batch), "--steps", str(steps),
                           "--warmup", str(warmup), "--classes", str(classes)], cwd=REPO, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"{python} {__file__} failed (make .venv-torch: benchmarks/README.md):\n{proc.stderr[-3000:]}")
    out = dict(re.findall(r"^([\w /.-]+): (.+)$", proc.stdout, re.M))
    return {"ms/step": float(out["ms/step"]), "images/s": float(out["images/s"]), "params": int(out["params"]),
            "torch": out["torch"], "threads": out["threads"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--classes", type=int, default=80, help="torchvision's num_classes (--compare: stlib's)")
    ap.add_argument("--compare", action="store_true", help="stlib (this Python) and torchvision (--torch-python)")
    ap.add_argument("--torch-python", default=str(REPO / ".venv-torch/bin/python"))
    ap.add_argument("--conv", default="xla,matmul", help="STLIB_CONV values to time stlib with (--compare)")
    ap.add_argument("--convs", action="store_true", help="torch's single convolutions at conv_grad.py's shapes")
    ap.add_argument("--note", default="", help="what else ran, for the section")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.convs:
        print("\n".join(torch_convs()))
        return 0
    if not args.compare:
        r = torch_rate(args.size, args.batch, args.steps, args.warmup, args.classes)
        for k, v in r.items():
            print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
        return 0
    sys.path.insert(0, str(REPO))
    from benchmarks.conv_grad import write_section
    from stlib.io import machine
    stlib = {c: _stlib_rate(args.size, args.batch, args.steps, args.warmup, c) for c in args.conv.split(",")}
    first = next(iter(stlib.values()))
    t = _torch_via(args.torch_python, args.size, args.batch, args.steps, args.warmup, first["classes"])
    m = machine()
    rows = []
    for conv, s in stlib.items():
        raw = s["raw"]
        rows.append(f"| stlib, STLIB_CONV={conv} (jax {raw.get('jax', '?').split()[0]}, {raw.get('devices', '?')} "
                    f"devices) | {int(raw.get('parameters', '0').replace(',', '')) / 1e6:.1f}M | {s['ms/step']:.0f} | "
                    f"{s['images/s']:.3f} | {s['images/s'] / t['images/s']:.2f} | {raw['first step s'].split('(')[-1][:-1]} |")
    text = "\n".join([
        f"### {m['date']} · {m['cpu']} ({m['cores']} cores, {m.get('simd', '?')})", "",
        f"RetinaNet-ResNet-50, {args.size} px, batch {args.batch}, float32, Rand Init (every layer trained, "
        f"batch-statistics BatchNorm), mean of {args.steps} steps after {args.warmup}, one process each, one after "
        f"the other. {args.note}".rstrip(), "",
        "| | params | ms/step | images/s | / torchvision | first step |", "|---|---|---|---|---|---|", *rows,
        f"| torchvision (torch {t['torch']}, {t['threads']} threads) | {t['params'] / 1e6:.1f}M | {t['ms/step']:.0f} | "
        f"{t['images/s']:.3f} | 1.00 | |"]) + "\n"
    print(text)
    if args.write:
        write_section(text.rstrip("\n"), args.results, HEADING, "torchvision_step.py --compare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
