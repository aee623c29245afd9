"""Images with predicted vs true boxes (and a segmenter's predicted vs true masks)."""
from __future__ import annotations

import functools
from pathlib import Path

import matplotlib.patches as patches
import matplotlib.pyplot as plt
import numpy as np

from stlib.viz.masks import colour_mask


def draw_detections(ax, image, gt_boxes=(), gt_classes=(), boxes=(), scores=(), classes=(), names=None,
                    score_threshold: float = 0.3):
    """Draws true boxes (green, dashed) and predictions (red, with class and score) on `ax`."""
    ax.imshow(image)
    ax.set_axis_off()
    label = (lambda c: names[int(c) - 1]) if names else (lambda c: str(int(c)))
    for (y0, x0, y1, x1), c in zip(gt_boxes, gt_classes):
        ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.2, ls="--"))
    for (y0, x0, y1, x1), s, c in zip(boxes, scores, classes):
        if s < score_threshold:
            continue
        ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.2))
        ax.text(x0, y0, f"{label(c)} {s:.2f}", color="white", fontsize=6, va="bottom",
                bbox=dict(facecolor="red", alpha=0.6, pad=0.5, lw=0))


def show_predictions(exp, state, n: int = 8, score_threshold: float = 0.3, save_to=None):
    """Predictions of `state` on the first `n` validation images next to their ground truth
    (for a segmentation run: image, predicted mask, true mask; `show_masks`)."""
    if hasattr(exp, "predict_masks"):
        return show_masks(exp, state, n, save_to)
    dets = exp.predict(state, limit=n)
    names = [c["name"] for c in exp.train_source.categories]
    cols = min(n, 3 if n % 4 else 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False, dpi=72)
    k = 0
    for det in dets:
        for b in range(len(det["image_id"])):
            if k >= n or not det["example_valid"][b]:
                continue
            ex = exp.val_data.example(int(exp.val_data.indices[k]))
            h, w = ex["image_hw"]
            v = det["valid"][b]
            draw_detections(axes.flat[k], ex["image"][:h, :w], ex["boxes"][ex["valid"]], ex["classes"][ex["valid"]],
                            det["boxes"][b][v], det["scores"][b][v], det["classes"][b][v], names, score_threshold)
            k += 1
    for ax in axes.flat[k:]:
        ax.set_axis_off()
    fig.suptitle(f"predictions (red, score >= {score_threshold}) vs ground truth (green)")
    fig.tight_layout()
    if save_to:
        fig.savefig(Path(save_to), dpi=72)
    return fig


def show_masks(exp, state, n: int = 6, save_to=None):
    """Segmentation predictions: per validation image, the image, the predicted classes and the
    true ones (ignored pixels white), one colour per class."""
    examples = exp.predict_masks(state, n)
    colour = functools.partial(colour_mask, num_classes=exp.num_classes)
    fig, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.5 * max(len(examples), 1)), squeeze=False, dpi=72)
    for row, ex in zip(axes, examples):
        h, w = ex["image_hw"]
        for ax, img, title in zip(row, (ex["image"][:h, :w], colour(ex["pred"][:h, :w]), colour(ex["mask"][:h, :w])),
                                  ("image", "predicted", "truth (white: ignored)")):
            ax.imshow(img)
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    if save_to:
        fig.savefig(Path(save_to), dpi=72)
    return fig
