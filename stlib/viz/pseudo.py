"""Pictures of pseudo labels: galleries coloured by score, precision / recall vs threshold, the worst errors.

Pseudo labels are `stlib.pseudo.labels.ImageLabels` (boxes yxyx in the pixels of the original
image, contiguous classes 1..K); images are uint8 [H, W, 3] of any size. Figures are drawn at a
small dpi (72) for notebooks and saved as PNG at 110 dpi (`save_figure`). Used by
notebooks/pseudo_labels.ipynb through `explore_store`, which does all the non-interactive work.
"""
from __future__ import annotations

import io

import math
import os
from pathlib import Path

import matplotlib.patches as patches
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from stlib.io import write_json_atomic
from stlib.pseudo import quality as q
from stlib.pseudo.sources import parse_unlabeled
from stlib.pseudo.store import PseudoLabelStore

DPI = 72
SAVE_DPI = 110
CMAP = "viridis"
FP_COLOUR = "red"
MISS_COLOUR = "yellow"


def _names(categories) -> list[str]:
    return q.category_names(categories) if categories else []


def _name(names, c: int) -> str:
    return names[c - 1] if 0 < c <= len(names) else str(c)


def _rect(ax, box, **kw):
    y0, x0, y1, x1 = (float(v) for v in box)
    ax.add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, **kw))


def _none(v) -> float:
    return float("nan") if v is None else float(v)


# ----------------------------------------------------------------------------- gallery

def _gt_of(entry):
    """A gallery GT entry -> (boxes [m, 4], classes [m] or None)."""
    if entry is None:
        return np.zeros((0, 4), np.float32), None
    if isinstance(entry, dict):
        return np.asarray(entry["boxes"], np.float32).reshape(-1, 4), entry.get("classes")
    if isinstance(entry, (tuple, list)) and len(entry) == 2 and np.ndim(entry[0]) == 2:
        return np.asarray(entry[0], np.float32).reshape(-1, 4), entry[1]
    return np.asarray(entry, np.float32).reshape(-1, 4), None


def draw_pseudo_labels(ax, image, labels, threshold: float, names=(), gt_boxes=None, norm=None, cmap=CMAP,
                       title: bool = True):
    """One image with its pseudo boxes scoring >= `threshold` (colour = score), class + score text,
    and optional GT boxes (dashed white). Returns the number of boxes drawn."""
    norm = norm or Normalize(min(threshold, 0.99), 1.0)
    cmap = plt.get_cmap(cmap)
    ax.imshow(np.asarray(image), interpolation="nearest")
    gtb, _ = _gt_of(gt_boxes)
    for box in gtb:
        _rect(ax, box, ec="white", lw=1.0, ls="--")
    above = labels.scores >= threshold
    order = np.argsort(labels.scores[above], kind="stable")  # high scores drawn last (on top)
    boxes, classes, scores = labels.boxes[above][order], labels.classes[above][order], labels.scores[above][order]
    for box, c, s in zip(boxes, classes, scores):
        col = cmap(norm(float(s)))
        _rect(ax, box, ec=col, lw=1.4)
        ax.text(float(box[1]), float(box[0]), f"{_name(names, int(c))} {s:.2f}", color="white", fontsize=5,
                va="bottom", clip_on=True, bbox=dict(facecolor=col, alpha=0.75, pad=0.3, lw=0))
    if title:
        if labels.skipped:
            text = f"{labels.key}\nskipped: {labels.skipped[:40]}"
        else:
            text = f"{labels.key}\n{int(above.sum())} boxes" + (f", {len(gtb)} true" if gt_boxes is not None else "")
        ax.set_title(text, fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])
    return int(above.sum())


def _grid(n: int, ncols: int, ax_size: float, extra_w: float = 0.0):
    ncols = max(1, min(ncols, n))
    rows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(rows, ncols, figsize=(ax_size * ncols + extra_w, ax_size * rows + 0.4), squeeze=False,
                             dpi=DPI, layout="constrained")
    return fig, axes


def draw_gallery(images, labels, threshold: float = q.PAPER_THRESHOLD, categories=None, gt_boxes=None,
                 ncols: int = 4, ax_size: float = 2.5, title: str | None = None):
    """A gallery of images with their pseudo boxes scoring >= `threshold`.

    Args:
      images: uint8 [H, W, 3] each (any sizes; boxes are in their pixels).
      labels: `ImageLabels`, one per image.
      threshold: the hard score threshold; boxes are coloured by score on a viridis scale
        over [threshold, 1] (colorbar on the right).
      categories: [{"id", "name"}] in contiguous order, plain names, or None (class numbers).
      gt_boxes: optional, per image: boxes yxyx [m, 4], a (boxes, classes) pair, a dict with
        "boxes", or None; drawn dashed white.
      ncols, ax_size: grid columns and inches per panel.
    Returns:
      The figure.
    """
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if gt_boxes is not None and len(gt_boxes) != len(labels):
        raise ValueError(f"{len(gt_boxes)} GT entries but {len(labels)} labels")
    names = _names(categories)
    norm = Normalize(min(float(threshold), 0.99), 1.0)
    fig, axes = _grid(max(1, len(images)), ncols, ax_size, extra_w=0.8)
    for k, (image, lab) in enumerate(zip(images, labels)):
        draw_pseudo_labels(axes.flat[k], image, lab, threshold, names,
                           None if gt_boxes is None else (gt_boxes[k] if gt_boxes[k] is not None else np.zeros((0, 4))),
                           norm)
    for ax in axes.flat[len(images):]:
        ax.set_axis_off()
    if not images:
        axes.flat[0].text(0.5, 0.5, "no images", ha="center", va="center", transform=axes.flat[0].transAxes)
    sm = ScalarMappable(norm=norm, cmap=plt.get_cmap(CMAP))
    cb = fig.colorbar(sm, ax=axes, shrink=0.8, pad=0.01)
    cb.set_label("teacher score", fontsize=7)
    cb.ax.tick_params(labelsize=6)
    head = title or f"pseudo labels scoring >= {threshold:.2f}"
    if gt_boxes is not None:
        head += " (true boxes dashed white)"
    fig.suptitle(head, fontsize=9)
    return fig


# ----------------------------------------------------------------------------- curves and counts

def plot_quality(rows, paper_threshold: float = q.PAPER_THRESHOLD, title: str | None = None):
    """Precision and recall vs threshold (left) and pseudo vs true boxes per image (right), the paper's
    0.5 marked. `rows`: `quality_table` rows, or `threshold_counts` rows (no GT: boxes per image only)."""
    rows = sorted(rows, key=lambda r: r["threshold"])
    t = np.asarray([r["threshold"] for r in rows], np.float64)
    with_gt = bool(rows) and "precision" in rows[0]
    if with_gt:
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=DPI, layout="constrained")
        for key, marker in (("precision", "o"), ("recall", "s")):
            a.plot(t, [_none(r[key]) for r in rows], marker=marker, label=key)
        a.set_ylim(0, 1.02)
        a.set_xlabel("score threshold"), a.set_ylabel("vs hidden ground truth")
        a.set_title("precision / recall of the pseudo boxes (IoU >= 0.5)", fontsize=9)
        a.axvline(paper_threshold, color="grey", ls=":", lw=1, label=f"paper ({paper_threshold:g})")
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    else:
        fig, b = plt.subplots(1, 1, figsize=(4.8, 3.4), dpi=DPI, layout="constrained")
    b.plot(t, [_none(r["pseudo_per_image"]) for r in rows], marker="o", label="pseudo boxes / image")
    if with_gt:
        b.plot(t, [_none(r["true_per_image"]) for r in rows], ls="--", color="k", label="true boxes / image")
    b.axvline(paper_threshold, color="grey", ls=":", lw=1, label=f"paper ({paper_threshold:g})")
    b.set_ylim(bottom=0)
    b.set_xlabel("score threshold"), b.set_ylabel("boxes per image")
    b.set_title("boxes kept per image", fontsize=9)
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_class_counts(rows, title: str | None = None):
    """Per-class pseudo boxes vs true boxes (`per_class_counts` rows); the matched (TP) part of the
    pseudo bar is drawn darker when the rows have it."""
    rows = list(rows)
    x = np.arange(len(rows))
    with_gt = bool(rows) and "true" in rows[0]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(rows) + 1.5), 3.2), dpi=DPI, layout="constrained")
    w = 0.4 if with_gt else 0.7
    pseudo = [r["pseudo"] for r in rows]
    ax.bar(x - (w / 2 if with_gt else 0), pseudo, w, color="tab:blue", alpha=0.45 if with_gt else 0.9,
           label="pseudo boxes")
    if with_gt:
        ax.bar(x - w / 2, [r.get("tp", 0) for r in rows], w, color="tab:blue", label="of which true positives")
        ax.bar(x + w / 2, [r["true"] for r in rows], w, color="tab:orange", label="true boxes")
    ax.set_xticks(x)
    ax.set_xticklabels([r["name"] for r in rows], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("boxes")
    ax.legend(fontsize=7)
    ax.set_title(title or "boxes per class", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- worst errors

def _is_miss(kind: str) -> bool:
    k = kind.lower().replace("-", "_").replace(" ", "_")
    if k in ("fp", "fps", "false_positive", "false_positives", "worst_false_positives"):
        return False
    if k in ("miss", "misses", "fn", "false_negatives", "worst_misses"):
        return True
    raise ValueError(f"kind must be 'false_positives' or 'misses', got {kind!r}")


def plot_worst(images_by_index, entries, kind: str, categories=None, ncols: int = 4, ax_size: float = 2.2,
               title: str | None = None):
    """A gallery of the worst false positives (kind "false_positives" / "fp") or misses ("misses" / "fn").

    Args:
      images_by_index: {source index: uint8 image} or a callable index -> image.
      entries: `worst_false_positives` / `worst_misses` items ("index", "key", "box", "class", ...).
      kind: which list the entries are; false positives are drawn solid red with score and the
        best IoU with any true box, misses dashed yellow with the best score of a same-class pseudo box on them.
    Returns:
      The figure (one panel per entry, the whole image with the box highlighted).
    """
    miss = _is_miss(kind)
    names = _names(categories)
    get = images_by_index if callable(images_by_index) else images_by_index.__getitem__
    entries = list(entries)
    fig, axes = _grid(max(1, len(entries)), ncols, ax_size)
    for ax, e in zip(axes.flat, entries):
        ax.imshow(np.asarray(get(int(e["index"]))), interpolation="nearest")
        if miss:
            _rect(ax, e["box"], ec=MISS_COLOUR, lw=1.6, ls="--")
            text = f"missed {_name(names, int(e['class']))}\nbest score {e.get('best_score_overlapping', 0):.2f}"
        else:
            _rect(ax, e["box"], ec=FP_COLOUR, lw=1.6)
            text = (f"{_name(names, int(e['class']))} {e['score']:.2f}\n"
                    f"best IoU {e.get('best_iou', 0):.2f}")
            if e.get("best_iou", 0) > 0 and e.get("best_iou_class"):
                text += f" ({_name(names, int(e['best_iou_class']))})"
        ax.set_title(f"{e['key']}: {text}", fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(entries):]:
        ax.set_axis_off()
    if not entries:
        axes.flat[0].text(0.5, 0.5, "none", ha="center", va="center", transform=axes.flat[0].transAxes)
    fig.suptitle(title or ("worst misses (largest unmatched true boxes)" if miss
                           else "worst false positives (highest-scoring unmatched pseudo boxes)"), fontsize=9)
    return fig


# ----------------------------------------------------------------------------- saving

def save_figure(fig, path, dpi: int = SAVE_DPI) -> Path:
    """Saves `fig` as PNG at `path` (temporary file in the same folder, then os.replace); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ----------------------------------------------------------------------------- interactive

def _stats_line(threshold: float, row: dict) -> str:
    line = (f"threshold {threshold:.2f}: {row['pseudo_boxes']} pseudo boxes on {row['images']} images "
            f"({row['pseudo_per_image']:.2f} / image)")
    if "precision" in row:
        line += (f"; {row['true_boxes']} true boxes ({row['true_per_image']:.2f} / image); precision "
                 f"{q._fmt(row['precision'])}, recall {q._fmt(row['recall'])} "
                 f"(TP {row['tp']}, FP {row['fp']}, FN {row['fn']})")
    return line


def threshold_explorer(load_image, labels, categories=None, gt=None, n: int = 8, initial: float = q.PAPER_THRESHOLD,
                       ncols: int = 4, ax_size: float = 2.5):
    """An ipywidgets VBox: a threshold slider (0.05..0.95, step 0.05) over a gallery of the first `n`
    non-skipped images and the counts (and, with `gt`, precision / recall) at that threshold.

    Args:
      load_image: index in the source -> uint8 image (e.g. `source.load_image`).
      labels: all the store's `ImageLabels` (the counts are over all of them).
      categories: see `draw_gallery`.
      gt: COCO ground truth (path or dict) or None.
      n: images in the gallery (loaded once).
      initial: the slider's first value.
    The box has `.slider`, `.output`, `.redraw()` and `.last_stats` (the row at the current threshold).
    Raises ImportError (saying `pip install ipywidgets`) without ipywidgets.
    """
    try:
        import ipywidgets as widgets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("threshold_explorer needs ipywidgets: pip install ipywidgets") from e

    labels = list(labels)
    shown = [lab for lab in labels if not lab.skipped][:max(0, int(n))]
    images = [load_image(int(lab.index)) for lab in shown]
    if gt is not None:
        gt = q.load_gt(gt)
        matched, counts = q._match_all(labels, gt, 0.5)
        gt_shown = [g if g is not None else np.zeros((0, 4), np.float32) for g in q.ground_truth_for(shown, gt)]
    else:
        matched = counts = gt_shown = None

    def row_at(t: float) -> dict:
        if gt is not None:
            return q._table(matched, counts, (t,))[0]
        return q.threshold_counts(labels, (t,))[0]

    slider = widgets.FloatSlider(value=float(min(max(initial, 0.05), 0.95)), min=0.05, max=0.95, step=0.05,
                                 description="threshold", continuous_update=False, readout_format=".2f")
    # The counts and the gallery are plain value widgets (text, PNG bytes), not an Output widget
    # capturing display(): that capture hung some papermill runs at this cell (no frontend).
    stats = widgets.HTML()
    picture = widgets.Image(format="png")
    box = widgets.VBox([slider, stats, picture])

    def redraw(change=None):
        t = float(slider.value)
        row = row_at(t)
        box.last_stats = row
        fig = draw_gallery(images, shown, t, categories, gt_shown, ncols=ncols, ax_size=ax_size)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        stats.value = f"<pre>{_stats_line(t, row)}</pre>"
        picture.value = buf.getvalue()

    slider.observe(redraw, names="value")
    box.slider, box.output, box.redraw = slider, picture, redraw
    redraw()
    return box


# ----------------------------------------------------------------------------- the explorer notebook

FIGURE_FILES = {"quality": "quality.png", "class_counts": "class_counts.png", "gallery": "gallery.png",
                "worst_false_positives": "worst_false_positives.png", "worst_misses": "worst_misses.png"}


def explore_store(store_dir, out_dir=None, threshold: float = q.PAPER_THRESHOLD, num_images: int = 8,
                  world_scale: str = "mini", world_seed: int = 0, thresholds=q.DEFAULT_THRESHOLDS,
                  worst: int = 12) -> dict:
    """Everything notebooks/pseudo_labels.ipynb shows, but the interactive explorer.

    Opens the pseudo-label store at `store_dir` (a partial store too), rebuilds its unlabeled
    source (`parse_unlabeled(meta["source"], world_scale, world_seed)`) for images and hidden
    ground truth, computes `quality_report`, writes `<out_dir>/quality.json` (out_dir default
    `<store_dir>/explorer`) and draws (and saves as PNG) the figures that apply: "quality",
    "class_counts", "gallery" (first `num_images` non-skipped images at `threshold`), and with
    hidden GT "worst_false_positives" and "worst_misses". Figures are closed (display them with
    IPython's `display`).

    Returns {"store", "meta", "summary", "labels", "source", "hidden_gt", "hidden_labels",
    "report", "figures", "paths", "out_dir", "notes"}; "notes" says what was left out and why.
    """

    if not str(store_dir or "").strip():
        raise ValueError("no pseudo-label store given: set STORE_DIR to a store folder (the one holding store.json)")
    store_dir = Path(store_dir)
    out_dir = Path(out_dir) if out_dir else store_dir / "explorer"
    store = PseudoLabelStore.open(store_dir)
    meta = dict(store.meta)
    if meta.get("kind") == "segmentation":
        raise ValueError(f"{store_dir}: a store of pseudo masks, not boxes: open it with notebooks/pseudo_masks.ipynb")
    notes = []
    complete = getattr(store, "complete", meta.get("complete", False))
    meta["complete"] = bool(complete)
    if not complete:
        notes.append("the store is not complete (not every shard written, or not marked complete): "
                     "showing what is there")
    labels = store.load(min_score=0.0, allow_partial=True)
    try:
        summary = store.summary(threshold)
    except Exception as e:  # the summary is informative only
        summary = None
        notes.append(f"store summary unavailable: {type(e).__name__}: {e}")
    categories = meta.get("categories") or None

    source = None
    try:
        source = parse_unlabeled(meta["source"], world_scale, world_seed)
    except Exception as e:
        notes.append(f"cannot rebuild the source {meta.get('source')!r} ({type(e).__name__}: {e}): no images")
    hidden_gt = hidden_labels = None
    if source is not None:
        if meta.get("num_images") is not None and len(source) != int(meta["num_images"]):
            notes.append(f"the rebuilt source has {len(source)} images but the store {meta['num_images']}: "
                         f"is WORLD_SCALE / WORLD_SEED the one the store was labelled from?")
        bad = [lab.key for lab in labels[:64] if lab.index < len(source) and source.key(int(lab.index)) != lab.key]
        if bad:
            notes.append(f"store keys differ from the source's (e.g. {bad[0]!r}): images and GT may not match")
        hidden_gt = getattr(source, "hidden_gt", None)
        hidden_labels = getattr(source, "hidden_labels", None)
        hidden_gt = hidden_gt if hidden_gt is not None and Path(hidden_gt).is_file() else None
        hidden_labels = hidden_labels if hidden_labels is not None and Path(hidden_labels).is_file() else None
    if hidden_gt is None:
        notes.append("no hidden box ground truth for this source: precision, recall, AP and the worst lists are "
                     "skipped" + (" (the object pool's hidden labels give the agreement above)"
                                  if hidden_labels is not None and categories else ""))

    report = q.quality_report(labels, hidden_gt, hidden_labels, categories, thresholds, threshold, worst=worst)
    report["store"] = {k: meta.get(k) for k in ("source", "teacher", "min_score", "num_images", "complete")}
    report["store"]["dir"] = str(store_dir)
    report["world"] = {"scale": world_scale, "seed": world_seed}
    report["notes"] = list(notes)
    paths = {"quality.json": out_dir / "quality.json"}
    write_json_atomic(paths["quality.json"], report)

    figures = {}
    name = meta.get("source", store_dir.name)
    figures["quality"] = plot_quality(report["quality"] if hidden_gt is not None else report["counts"],
                                      title=f"{name}: {len(labels)} images")
    figures["class_counts"] = plot_class_counts(report["per_class"],
                                                title=f"boxes per class at threshold {threshold:.2f}")
    if source is not None:
        shown = [lab for lab in labels if not lab.skipped][:max(0, int(num_images))]
        gt_shown = None
        if hidden_gt is not None:
            gt_shown = q.ground_truth_for(shown, hidden_gt)
        figures["gallery"] = draw_gallery([source.load_image(int(lab.index)) for lab in shown], shown, threshold,
                                          categories, gt_shown)
        if hidden_gt is not None:
            for key in ("worst_false_positives", "worst_misses"):
                entries = report[key]
                cache = {i: source.load_image(i) for i in sorted({int(e["index"]) for e in entries})}
                figures[key] = plot_worst(cache, entries, key, categories)
    for key, fig in figures.items():
        paths[key] = save_figure(fig, out_dir / FIGURE_FILES[key])
        plt.close(fig)
    return {"store": store, "meta": meta, "summary": summary, "labels": labels, "source": source,
            "hidden_gt": hidden_gt, "hidden_labels": hidden_labels, "report": report, "figures": figures,
            "paths": paths, "out_dir": out_dir, "notes": notes}


def print_overview(ex: dict) -> None:
    """Prints what `explore_store` found: the store's meta and summary, AP, object-pool agreement, notes."""
    meta = ex["meta"]
    for k in ("source", "teacher", "min_score", "num_images", "complete"):
        print(f"{k:>12}: {meta.get(k)}")
    cats = meta.get("categories") or []
    print(f"{'categories':>12}: {len(cats)} ({', '.join(c.get('name', '?') for c in cats[:12])}"
          f"{', ...' if len(cats) > 12 else ''})")
    s = ex["report"]["summary"]
    print(f"{'labels':>12}: {s['images']} images ({s['skipped']} skipped), {s['stored_boxes']} stored boxes, "
          f"median score {q._fmt(s['score_p50'])}")
    summ = ex.get("summary")
    if summ is not None:
        short = {k: v for k, v in summ.items() if not isinstance(v, dict)}
        print(f"{'summary':>12}: (score >= {ex['report']['threshold']:.2f}) "
              + ", ".join(f"{k} {q._fmt(v)}" for k, v in short.items() if k != "min_score"))
        if isinstance(summ.get("per_class"), dict):
            print(f"{'per class':>12}: " + ", ".join(f"{k} {v}" for k, v in summ["per_class"].items()))
    if "ap" in ex["report"]:
        ap = ex["report"]["ap"]
        print(f"{'pseudo AP':>12}: AP {q._fmt(ap['AP'])}, AP50 {q._fmt(ap['AP50'])}, AP75 {q._fmt(ap['AP75'])} "
              f"over {ap['images']} images (all stored scores, vs hidden GT)")
    if "object_pool" in ex["report"]:
        o = ex["report"]["object_pool"]
        print(f"{'object pool':>12}: in-vocabulary images with a box {q._fmt(o['in_vocab_with_box_share'])}, "
              f"top box right {q._fmt(o['in_vocab_top_correct_share'])} ({o['in_vocab_images']} images); "
              f"out-of-vocabulary with a box {q._fmt(o['oov_false_alarm_share'])} ({o['oov_images']} images)")
    for note in ex["notes"]:
        print("note:", note)
    print(f"{'saved to':>12}: {ex['out_dir']}")


def show_figure(ex: dict, name: str) -> None:
    """Displays `explore_store`'s figure `name` (see FIGURE_FILES), or prints why it was not drawn."""
    fig = ex["figures"].get(name)
    if fig is None:
        if ex["source"] is None:
            why = "the source's images are unavailable"
        elif ex["hidden_gt"] is None:
            why = "the source has no hidden ground truth"
        else:
            why = "nothing to draw"
        print(f"{name.replace('_', ' ')}: not drawn ({why})")
        return
    from IPython.display import display
    display(fig)


def explorer_widget(ex: dict, num_images: int = 8, threshold: float = q.PAPER_THRESHOLD):
    """`threshold_explorer` over `explore_store`'s result, or None (with a printed note) when its
    images are unavailable or ipywidgets is not installed."""
    if ex["source"] is None:
        print("no images to explore (the source could not be rebuilt)")
        return None
    try:
        return threshold_explorer(ex["source"].load_image, ex["labels"], ex["meta"].get("categories"),
                                  ex["hidden_gt"], n=num_images, initial=threshold)
    except ImportError as e:
        print(e)
        return None
