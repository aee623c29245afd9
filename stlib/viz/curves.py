"""Training curves from a run's metrics.jsonl: loss and the validation metric over steps."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt


def plot_training_curves(run_dir, save: bool = True):
    """Loss (train) and the validation metrics (AP/AP50/AP75 for detection, mIoU for segmentation,
    top-1/top-5 for pre-training) against step; saved as curves.png in the run dir."""
    run_dir = Path(run_dir)
    entries = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = [e for e in entries if e["kind"] == "train"]
    evals = [e for e in entries if e["kind"] == "eval"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=72)
    a.plot([e["step"] for e in train], [e["loss"] for e in train], label="total")
    if train and "cls_loss" in train[0]:
        a.plot([e["step"] for e in train], [e["cls_loss"] for e in train], label="class (focal)")
    a.set_xlabel("step"), a.set_ylabel("loss"), a.set_title("training loss"), a.legend()
    first = evals[0] if evals else {}
    keys, ylabel = ((("AP", "AP50", "AP75"), "COCO metric") if "AP" in first else
                    (("mIoU",), "mean IoU") if "mIoU" in first else (("top1", "top5"), "accuracy"))
    for k in keys:
        b.plot([e["step"] for e in evals], [e.get(k) for e in evals], marker="o", label=k)
    b.set_xlabel("step"), b.set_ylabel(ylabel), b.set_title("validation")
    b.legend()
    b.set_ylim(0, 1)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    if save:
        fig.savefig(run_dir / "curves.png", dpi=90)
    return fig
