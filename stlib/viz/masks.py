"""Pictures of segmentation pseudo masks (Appendix G): image, pseudo mask, the teacher's confidence
and the hidden truth side by side; per-class IoU; what the ignore threshold trades.

A store of pseudo masks (`stlib.pseudo.masks.label_masks`) keeps each pixel's most probable class
and that probability, so the threshold stays open: at threshold t a pixel whose probability is
below t is ignored (Sec. 3.2 uses 0.5). `explore_mask_store` does the non-interactive work of
notebooks/pseudo_masks.ipynb (figures saved as PNG, everything measured in `quality.json`);
`mask_threshold_explorer` is its slider. Colours: one per class (tab20), ignored pixels white.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from stlib import config as cfg
from stlib.data.segmentation import IGNORE_LABEL, segmentation_source_identity, segmentation_truth
from stlib.data.segmentation import segmentation_unlabeled
from stlib.io import write_json_atomic
from stlib.pseudo import masks as pm
from stlib.pseudo.store import PseudoLabelStore
from stlib.viz.pseudo import save_figure

DPI = 72
FIGURE_FILES = {"quality": "quality.png", "class_iou": "class_iou.png", "gallery": "gallery.png"}   # as the box explorer's


def colour_mask(mask, num_classes: int) -> np.ndarray:
    """float RGB [H, W, 3] of a class mask: class k a tab20 colour (background 0 included), ignored white."""
    mask = np.asarray(mask)
    cmap = plt.get_cmap("tab20", max(num_classes, 2))
    rgb = cmap(np.clip(mask, 0, num_classes - 1) % cmap.N)[..., :3]
    rgb[mask == IGNORE_LABEL] = 1.0
    return rgb


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def draw_mask_gallery(images, labels, truths, threshold: float, num_classes: int, ax_size: float = 1.9):
    """One row per image: the image, its pseudo mask at `threshold` (white: ignored), the teacher's
    confidence (the stored probability; red where below `threshold`) and the truth (white: void).
    `truths` may hold None where no truth is known."""
    n = len(images)
    fig, axes = plt.subplots(max(n, 1), 4, figsize=(4 * ax_size, ax_size * max(n, 1)), squeeze=False, dpi=DPI)
    for r, (image, lab, truth) in enumerate(zip(images, labels, truths)):
        mask = pm.apply_threshold(lab, threshold)
        score = (np.ones(mask.shape, np.float32) if lab.mask_score is None
                 else np.asarray(lab.mask_score, np.float32) / 255.0)
        conf = np.repeat(score[..., None], 3, axis=-1)              # grey: the probability
        low = mask == IGNORE_LABEL
        conf[low] = np.stack([0.5 + 0.5 * score[low], 0.25 * score[low], 0.25 * score[low]], -1)
        panels = (image, colour_mask(mask, num_classes), conf,
                  colour_mask(truth, num_classes) if truth is not None else None)
        titles = (lab.key, f"pseudo mask at {threshold:.2f}: {low.mean():.0%} ignored", "confidence (white: sure; red: ignored)",
                  "truth" if truth is not None else "no truth")
        for ax, panel, title in zip(axes[r], panels, titles):
            if panel is not None:
                ax.imshow(panel, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(title, fontsize=7)
    if n == 0:
        for ax in axes[0]:
            ax.set_axis_off()
        axes[0][0].text(0.5, 0.5, "no pseudo masks", ha="center", va="center")
    fig.tight_layout()
    return fig


def plot_mask_quality(rows, paper_threshold: float = pm.THRESHOLD, title: str | None = None):
    """`stlib.pseudo.masks.mask_quality` rows: covered pixels, their accuracy and mIoU against the
    threshold, Sec. 3.2's 0.5 marked."""
    import seaborn as sns
    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=DPI)
    t = [r["threshold"] for r in rows]
    for key, label in (("covered", "pixels kept (share of labelled)"), ("accuracy", "accuracy of kept pixels"),
                       ("mIoU", "mIoU of kept pixels")):
        v = [np.nan if r[key] is None else r[key] for r in rows]
        sns.lineplot(x=t, y=v, marker="o", label=label, ax=ax)
    ax.axvline(paper_threshold, color="grey", linestyle="--", linewidth=1)
    ax.text(paper_threshold, 0.02, " Sec. 3.2", color="grey", fontsize=7)
    ax.set_xlabel("ignore threshold (teacher's probability)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_class_iou(iou, class_names, threshold: float):
    """Per-class IoU of the pseudo masks against the truth at `threshold` (over the kept pixels);
    a class absent from both is left blank."""
    names = ["background"] + list(class_names)
    iou = np.asarray(iou, np.float64)
    fig, ax = plt.subplots(figsize=(5.2, 0.25 * len(names) + 0.9), dpi=DPI)
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(iou, nan=0.0), color=plt.get_cmap("tab20", max(len(names), 2))(y % 20))
    for i, v in enumerate(iou):
        ax.text((0 if np.isnan(v) else v) + 0.01, i, "absent" if np.isnan(v) else f"{v:.2f}", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"IoU of the pseudo masks at threshold {threshold:.2f}")
    fig.tight_layout()
    return fig


def stats_line(row: dict, images: int) -> str:
    return (f"threshold {row['threshold']:.2f} on {images} images: {_fmt(row['covered'])} of the labelled pixels "
            f"kept, {_fmt(row['accuracy'])} of them right, mIoU {_fmt(row['mIoU'])}")


def mask_threshold_explorer(images, labels, truths, counts, num_classes: int, initial: float = pm.THRESHOLD,
                            images_measured: int | None = None):
    """An ipywidgets VBox: a threshold slider (0.05..0.95, step 0.05) over the gallery of `images`
    / `labels` / `truths` and the kept share, accuracy and mIoU of all the measured pixels (`counts`
    from `stlib.pseudo.masks.mask_counts`, None without truth). The box has `.slider`, `.redraw()`
    and `.last_stats`. Raises ImportError (saying `pip install ipywidgets`) without ipywidgets."""
    try:
        import ipywidgets as widgets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("mask_threshold_explorer needs ipywidgets: pip install ipywidgets") from e
    slider = widgets.FloatSlider(value=float(min(max(initial, 0.05), 0.95)), min=0.05, max=0.95, step=0.05,
                                 description="threshold", continuous_update=False, readout_format=".2f")
    # plain value widgets (text, PNG bytes), as the box explorer: an Output widget hung papermill
    stats, picture = widgets.HTML(), widgets.Image(format="png")
    box = widgets.VBox([slider, stats, picture])

    def redraw(change=None):
        t = float(slider.value)
        if counts is not None:
            row = pm.mask_quality(counts, (t,))[0]
            text = stats_line(row, images_measured if images_measured is not None else len(labels))
        else:
            ignored = [float((pm.apply_threshold(lab, t) == IGNORE_LABEL).mean()) for lab in labels]
            row = {"threshold": t, "ignored_shown": float(np.mean(ignored)) if ignored else None}
            text = f"threshold {t:.2f}: {_fmt(row['ignored_shown'])} of the shown pixels ignored (no truth)"
        box.last_stats = row
        fig = draw_mask_gallery(images, labels, truths, t, num_classes)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
        plt.close(fig)
        stats.value = f"<pre>{text}</pre>"
        picture.value = buf.getvalue()

    slider.observe(redraw, names="value")
    box.slider, box.redraw = slider, redraw
    redraw()
    return box


def explore_mask_store(store_dir, out_dir=None, threshold: float = pm.THRESHOLD, num_images: int = 6,
                       world_scale: str = "mini", world_seed: int = 0, voc_root: str = "") -> dict:
    """Everything notebooks/pseudo_masks.ipynb shows but the slider.

    Opens the segmentation pseudo-label store at `store_dir` (a partial one too), rebuilds its
    images from the store's source (`world:aug` of `world_scale` / `world_seed`, or `voc:<split>`
    under `voc_root`) and the truth they are measured against (`segmentation_truth`: the aug
    split's hidden precise masks for `world:aug`), counts every labelled pixel by (truth, pseudo
    class, probability), writes `<out_dir>/quality.json` (out_dir default `<store_dir>/explorer`)
    and saves the figures of `FIGURE_FILES`. Returns {"meta", "labels", "images", "truth",
    "counts", "report", "figures", "paths", "out_dir", "notes", "num_classes"}.
    """
    if not str(store_dir or "").strip():
        raise ValueError("no pseudo-mask store given: set STORE_DIR to a store folder (the one holding store.json)")
    store_dir = Path(store_dir)
    out_dir = Path(out_dir) if out_dir else store_dir / "explorer"
    store = PseudoLabelStore.open(store_dir)
    meta = dict(store.meta)
    if meta.get("kind") != "segmentation":
        raise ValueError(f"{store_dir}: a store of boxes, not of masks: open it with notebooks/pseudo_labels.ipynb")
    notes = []
    if not store.complete:
        notes.append("the store is not complete (a labelling in progress or killed): showing what is there")
    labels = store.load(allow_partial=True)
    categories = meta.get("categories") or []
    class_names = [c["name"] for c in categories]
    num_classes = len(class_names) + 1
    dp = cfg.DataParams(world_scale=world_scale, world_seed=world_seed, voc_root=voc_root)
    images = truth = counts = None
    try:
        images = segmentation_unlabeled(meta["source"], dp)
        if meta.get("source_identity") and segmentation_source_identity(images) != meta["source_identity"]:
            notes.append(f"the rebuilt source {images.name} holds other images than the store was labelled from "
                         f"(is WORLD_SCALE / WORLD_SEED / VOC_ROOT the one it was made with?)")
            images = None
    except Exception as e:
        notes.append(f"cannot rebuild the source {meta.get('source')!r} ({type(e).__name__}: {e}): no images")
    if images is not None:
        truth = segmentation_truth(meta["source"], dp)
        counted = pm.mask_counts(labels, truth)
        counts = counted["counts"]
    report = {"store": {"dir": str(store_dir), **{k: meta.get(k) for k in ("source", "teacher", "scales")},
                        "complete": bool(store.complete)},
              "world": {"scale": world_scale, "seed": world_seed}, "threshold": float(threshold),
              "images": len(labels), "skipped": sum(1 for lab in labels if lab.skipped or lab.mask is None),
              "truth": truth.name if truth is not None else None, "classes": ["background"] + class_names}
    if counts is not None:
        report["quality"] = pm.mask_quality(counts, sorted(set(pm.QUALITY_THRESHOLDS) | {float(threshold)}))
        report["class_iou"] = [None if np.isnan(v) else float(v)
                               for v in pm.class_iou(pm.confusion_at(counts, threshold))]
        report["images_measured"] = counted["images"]
    report["notes"] = notes
    paths = {"quality.json": out_dir / "quality.json"}
    write_json_atomic(paths["quality.json"], report)

    figures = {}
    if counts is not None:
        figures["quality"] = plot_mask_quality(report["quality"], title=f"{meta.get('source')}: "
                                               f"{counted['images']} images against {truth.name}")
        figures["class_iou"] = plot_class_iou(report["class_iou"], class_names, threshold)
    shown = [lab for lab in labels if not (lab.skipped or lab.mask is None)][:max(0, int(num_images))]
    gallery = None
    if images is not None:
        gallery = {"images": [images.load_image(int(lab.index)) for lab in shown], "labels": shown,
                   "truths": [truth.load_mask(int(lab.index), np.asarray(lab.mask).shape) for lab in shown]}
        figures["gallery"] = draw_mask_gallery(gallery["images"], shown, gallery["truths"], threshold, num_classes)
    for key, fig in figures.items():
        paths[key] = save_figure(fig, out_dir / FIGURE_FILES[key])
        plt.close(fig)
    return {"meta": meta, "labels": labels, "images": images, "truth": truth, "counts": counts,
            "report": report, "figures": figures, "paths": paths, "out_dir": out_dir, "notes": notes,
            "num_classes": num_classes, "gallery": gallery}


def quality_markdown(rows) -> str:
    """The threshold table of `mask_quality` rows as markdown."""
    lines = ["| threshold | pixels kept | accuracy of kept | mIoU of kept |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['threshold']:.2f} | {_fmt(r['covered'])} | {_fmt(r['accuracy'])} | {_fmt(r['mIoU'])} |"
              for r in rows]
    return "\n".join(lines)


def print_mask_overview(ex: dict) -> None:
    """What `explore_mask_store` found: the store, the images measured, the row at its threshold."""
    r = ex["report"]
    for k, v in r["store"].items():
        print(f"{k:>10}: {v}")
    print(f"{'images':>10}: {r['images']} ({r['skipped']} skipped); truth: {r['truth'] or 'none'}")
    if "quality" in r:
        row = next(x for x in r["quality"] if x["threshold"] == r["threshold"])
        print(f"{'measured':>10}: " + stats_line(row, r["images_measured"]))
    for note in ex["notes"]:
        print("note:", note)
    print(f"{'saved to':>10}: {ex['out_dir']}")


def show(ex: dict, name: str) -> None:
    """Displays `explore_mask_store`'s figure `name` (see FIGURE_FILES), or says why it was not drawn."""
    fig = ex["figures"].get(name)
    if fig is None:
        print(f"{name.replace('_', ' ')}: not drawn (the store's images or their truth are unavailable)")
        return
    from IPython.display import display
    display(fig)


def explorer_widget(ex: dict, threshold: float = pm.THRESHOLD):
    """`mask_threshold_explorer` over `explore_mask_store`'s result, or None (saying why)."""
    if ex["gallery"] is None:
        print("no images to explore (the source could not be rebuilt)")
        return None
    try:
        g = ex["gallery"]
        return mask_threshold_explorer(g["images"], g["labels"], g["truths"], ex["counts"], ex["num_classes"],
                                       initial=threshold, images_measured=ex["report"].get("images_measured"))
    except ImportError as e:
        print(e)
        return None
