"""How good are the pseudo labels? Precision / recall / AP of a pseudo-label store against hidden ground truth.

The embedded world keeps the ground truth of its unlabeled pools out of training:
``hidden/scenes.json`` (COCO, for ``pools/scenes``) and ``hidden/objects.json`` (one label per
object-centric image of ``pools/objects``). This module scores `ImageLabels` (boxes yxyx in
original pixels, contiguous classes ``1..K``) against them, so one can see what the paper's
hard threshold of 0.5 (Sec. 3.2) keeps and throws away.

Conventions:

* GT boxes come from COCO ``[x, y, w, h]`` as ``[y, x, y + h, x + w]``; the contiguous class of a
  category id is its rank among the sorted category ids, plus one (as `stlib.data.coco`).
* GT is joined to labels by ``file_name == key`` (falling back to the base name of the key).
  Skipped images, and images whose key has no GT entry, are left out and counted.
* Matching is COCO style: pseudo boxes in descending score order, each takes the unmatched GT
  box of the same class with the highest IoU >= ``iou_threshold``; each GT box is matched at most
  once, so a duplicate box on one object is one TP and one FP. Crowd GT boxes (``iscrowd``) are
  not counted as GT; a pseudo box left unmatched that lies on one (intersection over its own
  area >= ``iou_threshold``) is ignored (neither TP nor FP).
* Because matching is greedy by score, matching the boxes scoring >= t is the prefix of the
  matching of all boxes: everything is matched once and read off at each threshold.

Ratios with a zero denominator are NaN (``quality_report`` returns them as None, JSON's null).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os

import numpy as np

from stlib.config import SelfTrainParams
from stlib.eval.coco_eval import evaluate_coco
from stlib.io import to_jsonable

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PAPER_THRESHOLD = SelfTrainParams().score_threshold   # Sec. 3.2's hard threshold (cited there)


# ----------------------------------------------------------------------------- ground truth

def load_gt(gt) -> dict:
    """A COCO ground-truth dict from a path (str / Path), a dict, or a pycocotools `COCO` (its dataset)."""
    if gt is None:
        raise ValueError("no ground truth given")
    if isinstance(gt, dict):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        with open(gt) as f:
            return json.load(f)
    if hasattr(gt, "dataset") and isinstance(gt.dataset, dict):
        return gt.dataset
    raise TypeError(f"ground truth must be a path, a COCO dict or a pycocotools COCO, got {type(gt).__name__}")


def category_ids(gt) -> list[int]:
    """The sorted category ids of `gt`: contiguous class k is ``category_ids(gt)[k - 1]``."""
    return sorted(int(c["id"]) for c in load_gt(gt).get("categories", []))


def category_names(categories=None, gt=None) -> list[str]:
    """Names by contiguous class (item k-1 names class k): from `categories` ([{"id", "name"}] in
    contiguous order, or plain names), else from `gt`'s categories sorted by id; [] if neither."""
    if categories:
        return [c["name"] if isinstance(c, dict) else str(c) for c in categories]
    if gt is not None:
        cats = sorted(load_gt(gt).get("categories", []), key=lambda c: int(c["id"]))
        return [str(c.get("name", c["id"])) for c in cats]
    return []


@dataclasses.dataclass
class _GTImage:
    image_id: int
    boxes: np.ndarray     # float32 [m, 4] yxyx (not crowd)
    classes: np.ndarray   # int32 [m] contiguous
    crowd_boxes: np.ndarray
    crowd_classes: np.ndarray


def _xywh_to_yxyx(bbox) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [y, x, y + h, x + w]


def _index_gt(gt) -> dict[str, _GTImage]:
    """file_name -> the image's GT (boxes yxyx, contiguous classes), crowd boxes apart."""
    gt = load_gt(gt)
    rank = {cid: k + 1 for k, cid in enumerate(category_ids(gt))}
    per_image: dict[int, list] = {int(im["id"]): [] for im in gt.get("images", [])}
    for ann in gt.get("annotations", []):
        if int(ann["category_id"]) in rank and int(ann["image_id"]) in per_image:
            per_image[int(ann["image_id"])].append(ann)
    out = {}
    for im in gt.get("images", []):
        anns = per_image[int(im["id"])]
        crowd = [bool(a.get("iscrowd", 0)) for a in anns]

        def arrays(want):
            sel = [a for a, c in zip(anns, crowd) if c == want]
            return (np.asarray([_xywh_to_yxyx(a["bbox"]) for a in sel], np.float32).reshape(-1, 4),
                    np.asarray([rank[int(a["category_id"])] for a in sel], np.int32))

        boxes, classes = arrays(False)
        cboxes, cclasses = arrays(True)
        out[str(im["file_name"])] = _GTImage(int(im["id"]), boxes, classes, cboxes, cclasses)
    return out


def _lookup(index: dict, key: str):
    if key in index:
        return index[key]
    return index.get(os.path.basename(key))


def ground_truth_for(labels, gt) -> list:
    """Per label: (boxes yxyx float32 [m, 4], classes int32 [m]) of its GT (non-crowd), or None if it has none."""
    index = _index_gt(gt)
    out = []
    for lab in labels:
        g = _lookup(index, lab.key)
        out.append(None if g is None else (g.boxes, g.classes))
    return out


# ----------------------------------------------------------------------------- matching

def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU of yxyx boxes a [n, 4] and b [m, 4] -> [n, m]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    inter = _intersection(a, b)
    area_a = _area(a)[:, None]
    area_b = _area(b)[None, :]
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    y0 = np.maximum(a[:, None, 0], b[None, :, 0])
    x0 = np.maximum(a[:, None, 1], b[None, :, 1])
    y1 = np.minimum(a[:, None, 2], b[None, :, 2])
    x1 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)


def _match(pred_boxes, pred_classes, pred_scores, gt_boxes, gt_classes, iou_threshold,
           crowd_boxes=None, crowd_classes=None):
    """Greedy COCO-style matching. Returns (tp [n], ignored [n], gt_match [m] = matching pred or -1, iou [n, m])."""
    pred_boxes = np.asarray(pred_boxes, np.float32).reshape(-1, 4)
    pred_classes = np.asarray(pred_classes).reshape(-1)
    pred_scores = np.asarray(pred_scores, np.float32).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    gt_classes = np.asarray(gt_classes).reshape(-1)
    n, m = len(pred_boxes), len(gt_boxes)
    tp = np.zeros(n, bool)
    ignored = np.zeros(n, bool)
    gt_match = np.full(m, -1, np.int64)
    iou = box_iou(pred_boxes, gt_boxes)
    same = pred_classes[:, None] == gt_classes[None, :]
    if m:
        free = np.ones(m, bool)
        for i in np.argsort(-pred_scores, kind="stable"):
            cand = np.where(same[i] & free, iou[i], -1.0)
            j = int(cand.argmax())
            if cand[j] >= iou_threshold:
                gt_match[j] = i
                free[j] = False
                tp[i] = True
                if not free.any():
                    break
    if crowd_boxes is not None and len(crowd_boxes) and n:
        crowd_boxes = np.asarray(crowd_boxes, np.float64).reshape(-1, 4)
        ioa = _intersection(pred_boxes.astype(np.float64), crowd_boxes) / np.maximum(
            _area(pred_boxes.astype(np.float64)), 1e-12)[:, None]
        on_crowd = ((pred_classes[:, None] == np.asarray(crowd_classes).reshape(-1)[None, :])
                    & (ioa >= iou_threshold)).any(1)
        ignored = ~tp & on_crowd
    return tp, ignored, gt_match, iou


def match_image(pred_boxes, pred_classes, pred_scores, gt_boxes, gt_classes, iou_threshold: float = 0.5):
    """Matches one image's pseudo boxes to its GT boxes (all yxyx, same pixels).

    Greedy by descending score (ties: input order), same class only, each GT box matched at
    most once to the unmatched one with the highest IoU >= `iou_threshold` (COCO style).
    Returns (tp_mask bool [n], matched_gt bool [m]).
    """
    tp, _, gt_match, _ = _match(pred_boxes, pred_classes, pred_scores, gt_boxes, gt_classes, iou_threshold)
    return tp, gt_match >= 0


@dataclasses.dataclass
class _Matched:
    """One labelled image matched (all its stored boxes) to its GT."""
    labels: object            # ImageLabels
    gt: _GTImage
    tp: np.ndarray            # [n]
    ignored: np.ndarray       # [n]
    gt_match_score: np.ndarray  # [m] score of the pred matching each GT box, -inf if none
    iou: np.ndarray           # [n, m]


def _match_all(labels, gt, iou_threshold: float):
    """Every non-skipped label with GT, matched. Returns (matched list, counts dict)."""
    index = _index_gt(gt)
    matched, skipped, no_gt = [], 0, 0
    for lab in labels:
        if lab.skipped:
            skipped += 1
            continue
        g = _lookup(index, lab.key)
        if g is None:
            no_gt += 1
            continue
        tp, ign, gt_match, iou = _match(lab.boxes, lab.classes, lab.scores, g.boxes, g.classes, iou_threshold,
                                        g.crowd_boxes, g.crowd_classes)
        score = np.where(gt_match >= 0, lab.scores[np.maximum(gt_match, 0)] if len(lab.scores) else 0.0,
                         -np.inf).astype(np.float64)
        matched.append(_Matched(lab, g, tp, ign, score, iou))
    return matched, {"images": len(matched), "skipped": skipped, "no_gt": no_gt}


def _ratio(a, b) -> float:
    return float(a) / float(b) if b else float("nan")


# ----------------------------------------------------------------------------- tables

def threshold_counts(labels, thresholds=DEFAULT_THRESHOLDS) -> list[dict]:
    """Without ground truth: per threshold {"threshold", "pseudo_boxes", "pseudo_per_image",
    "images_with_boxes", "images", "skipped"} over the non-skipped images."""
    kept = [lab for lab in labels if not lab.skipped]
    rows = []
    for t in thresholds:
        counts = [int((lab.scores >= t).sum()) for lab in kept]
        rows.append({"threshold": float(t), "pseudo_boxes": int(sum(counts)),
                     "pseudo_per_image": _ratio(sum(counts), len(kept)),
                     "images_with_boxes": int(sum(c > 0 for c in counts)), "images": len(kept),
                     "skipped": len(labels) - len(kept)})
    return rows


def _table(matched, counts, thresholds) -> list[dict]:
    rows = []
    true_boxes = int(sum(len(m.gt.boxes) for m in matched))
    images = counts["images"]
    for t in thresholds:
        tp = fp = pseudo = 0
        for m in matched:
            above = m.labels.scores >= t
            pseudo += int(above.sum())
            tp += int((above & m.tp).sum())
            fp += int((above & ~m.tp & ~m.ignored).sum())
        fn = true_boxes - tp
        rows.append({"threshold": float(t), "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, true_boxes),
                     "tp": tp, "fp": fp, "fn": fn, "pseudo_boxes": pseudo, "true_boxes": true_boxes,
                     "pseudo_per_image": _ratio(pseudo, images), "true_per_image": _ratio(true_boxes, images),
                     "images": images, "skipped": counts["skipped"], "no_gt": counts["no_gt"]})
    return rows


def quality_table(labels, gt, thresholds=DEFAULT_THRESHOLDS, iou_threshold: float = 0.5) -> list[dict]:
    """Precision and recall of the pseudo boxes scoring >= each threshold against `gt`.

    One row per threshold: {"threshold", "precision", "recall", "tp", "fp", "fn", "pseudo_boxes",
    "true_boxes", "pseudo_per_image", "true_per_image", "images", "skipped", "no_gt"}; "images"
    counts the images scored (not skipped, with a GT entry), "skipped" the skipped ones and
    "no_gt" those whose key is not in `gt`, both left out.
    """
    matched, counts = _match_all(labels, gt, iou_threshold)
    return _table(matched, counts, thresholds)


def pseudo_ap(labels, gt) -> dict:
    """COCO box AP/AP50/AP75/APs/APm/APl of the pseudo boxes (every stored score) against `gt`,
    over the images scored (not skipped, with a GT entry); "images" adds their count."""
    from pycocotools.coco import COCO


    data = load_gt(gt)
    ids = category_ids(data)
    anns = []
    for k, a in enumerate(data.get("annotations", [])):
        a = dict(a)
        a.setdefault("id", k + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
        anns.append(a)
    dataset = {"info": data.get("info", {}), "licenses": data.get("licenses", []), "images": data["images"],
               "annotations": anns, "categories": data["categories"]}
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    index = _index_gt(data)
    results, image_ids = [], []
    for lab in labels:
        g = None if lab.skipped else _lookup(index, lab.key)
        if g is None:
            continue
        image_ids.append(g.image_id)
        for (y0, x0, y1, x1), c, s in zip(lab.boxes.tolist(), lab.classes.tolist(), lab.scores.tolist()):
            if not 1 <= c <= len(ids):
                continue
            results.append({"image_id": g.image_id, "category_id": ids[c - 1], "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": s})
    if not image_ids:
        out = {k: float("nan") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    else:
        out = evaluate_coco(coco, results, image_ids)
    out["images"] = len(image_ids)
    return out


def per_class_counts(labels, categories, threshold: float = PAPER_THRESHOLD, gt=None,
                     iou_threshold: float = 0.5) -> list[dict]:
    """Per contiguous class: {"class", "name", "pseudo"} (boxes scoring >= `threshold`), and with
    `gt` also "true" (GT boxes) and "tp" (pseudo boxes matching one), counted over the scored images only.

    `categories`: [{"id", "name"}] in contiguous order (a store's meta), plain names, or None
    (names from `gt`, else the class numbers).
    """
    if gt is not None:
        matched, _ = _match_all(labels, gt, iou_threshold)
        return _per_class(category_names(categories, gt), [(m.labels, m) for m in matched], threshold,
                          True)
    return _per_class(category_names(categories), [(lab, None) for lab in labels if not lab.skipped], threshold,
                      False)


def _per_class(names, items, threshold, with_gt: bool) -> list[dict]:
    k = len(names)
    for lab, m in items:
        if len(lab.classes):
            k = max(k, int(lab.classes.max()))
        if m is not None and len(m.gt.classes):
            k = max(k, int(m.gt.classes.max()))
    rows = [{"class": c, "name": names[c - 1] if c <= len(names) else str(c), "pseudo": 0} for c in range(1, k + 1)]
    if with_gt:
        for r in rows:
            r["true"] = 0
            r["tp"] = 0
    for lab, m in items:
        above = lab.scores >= threshold
        for c in lab.classes[above]:
            if c >= 1:
                rows[c - 1]["pseudo"] += 1
        if m is not None:
            for c in m.gt.classes:
                rows[c - 1]["true"] += 1
            for c in lab.classes[above & m.tp]:
                rows[c - 1]["tp"] += 1
    return rows


def _box(b) -> list[float]:
    return [round(float(v), 2) for v in b]


def worst_false_positives(labels, gt, threshold: float = PAPER_THRESHOLD, n: int = 12,
                          iou_threshold: float = 0.5) -> list[dict]:
    """The `n` highest-scoring pseudo boxes (scoring >= `threshold`) that match no GT box.

    Each: {"index", "key", "box" (yxyx), "class", "score", "best_iou" (with any GT box, any
    class), "best_iou_class" (that GT box's class, 0 if none)}: a high best_iou with another
    class is a confusion, a mid one a poor localisation or a duplicate, ~0 a hallucination.
    """
    return _worst_fps(_match_all(labels, gt, iou_threshold)[0], threshold, n)


def _worst_fps(matched, threshold, n) -> list[dict]:
    out = []
    for m in matched:
        lab = m.labels
        for i in np.nonzero((lab.scores >= threshold) & ~m.tp & ~m.ignored)[0]:
            if m.iou.shape[1]:
                j = int(m.iou[i].argmax())
                best, best_cls = float(m.iou[i, j]), int(m.gt.classes[j])
            else:
                best, best_cls = 0.0, 0
            out.append({"index": int(lab.index), "key": lab.key, "box": _box(lab.boxes[i]),
                        "class": int(lab.classes[i]), "score": float(lab.scores[i]), "best_iou": round(best, 4),
                        "best_iou_class": best_cls})
    out.sort(key=lambda e: (-e["score"], e["index"]))
    return out[:n]


def worst_misses(labels, gt, threshold: float = PAPER_THRESHOLD, n: int = 12, iou_threshold: float = 0.5) -> list[dict]:
    """The `n` largest GT boxes (by box area) that no pseudo box scoring >= `threshold` matches.

    Each: {"index", "key", "box" (yxyx), "class", "area", "best_score_overlapping" (highest score
    of a stored pseudo box of the same class with IoU >= `iou_threshold`, any score; 0 if none:
    what threshold would have kept it), "best_score_other_class" (same, other classes)}.
    """
    return _worst_misses(_match_all(labels, gt, iou_threshold)[0], threshold, n, iou_threshold)


def _worst_misses(matched, threshold, n, iou_threshold) -> list[dict]:
    out = []
    for m in matched:
        lab = m.labels
        for j in np.nonzero(~(m.gt_match_score >= threshold))[0]:
            overlap = m.iou[:, j] >= iou_threshold if len(lab.scores) else np.zeros(0, bool)
            same = overlap & (lab.classes == m.gt.classes[j])
            other = overlap & (lab.classes != m.gt.classes[j])
            y0, x0, y1, x1 = m.gt.boxes[j]
            out.append({"index": int(lab.index), "key": lab.key, "box": _box(m.gt.boxes[j]),
                        "class": int(m.gt.classes[j]), "area": round(float((y1 - y0) * (x1 - x0)), 2),
                        "best_score_overlapping": float(lab.scores[same].max()) if same.any() else 0.0,
                        "best_score_other_class": float(lab.scores[other].max()) if other.any() else 0.0})
    out.sort(key=lambda e: (-e["area"], e["index"]))
    return out[:n]


# ----------------------------------------------------------------------------- object pool

def _load_hidden_labels(hidden_labels) -> dict:
    if isinstance(hidden_labels, dict):
        return hidden_labels
    with open(hidden_labels) as f:
        return json.load(f)


def object_pool_agreement(labels, hidden_labels, num_detection_classes: int,
                          threshold: float = PAPER_THRESHOLD) -> dict:
    """Detection pseudo labels on the ImageNet-analogue pool (one dominant object per image).

    `hidden_labels`: path or dict {"categories", "images": [{"file_name", "label"}]} with
    0-based labels whose first `num_detection_classes` are the detection classes (label l is
    detection class l + 1), or with each image's "detection_class" (1..K, 0 for none: the
    second-version world, whose fine-grained labels map many to one), joined to labels by
    file_name == key. In a second-version world the out-of-vocabulary images may hold smaller
    detection-class objects too, so there the false-alarm share is an upper bound; the pool's
    boxed truth (`hidden/objects_boxes.json`, `quality_table`) is the exact measure. Over the images whose
    label is a detection class ("in vocabulary"): the share with >= 1 box scoring >=
    `threshold` and the share whose top-scoring box has the image's class; over the others
    ("out of vocabulary"): the share with >= 1 box (false alarms). Skipped images and keys
    without a hidden label are left out and counted.
    """
    data = _load_hidden_labels(hidden_labels)
    # a second-version world names each image's detection class (1..K, 0 = none); the first one's
    # labels below num_detection_classes are the detection classes themselves
    by_name = {str(im["file_name"]): (int(im["detection_class"]) - 1 if "detection_class" in im else
                                      int(im["label"]) if int(im["label"]) < num_detection_classes else -1)
               for im in data.get("images", [])}
    inv = inv_box = inv_top = oov = oov_box = skipped = unknown = 0
    for lab in labels:
        if lab.skipped:
            skipped += 1
            continue
        label = by_name.get(lab.key, by_name.get(os.path.basename(lab.key)))
        if label is None:
            unknown += 1
            continue
        above = lab.scores >= threshold
        has_box = bool(above.any())
        if label >= 0:
            inv += 1
            inv_box += has_box
            if has_box:
                top = int(np.argmax(np.where(above, lab.scores, -np.inf)))
                inv_top += int(lab.classes[top]) == label + 1
        else:
            oov += 1
            oov_box += has_box
    return {"threshold": float(threshold), "num_detection_classes": int(num_detection_classes),
            "images": inv + oov, "skipped": skipped, "no_label": unknown,
            "in_vocab_images": inv, "in_vocab_with_box": int(inv_box), "in_vocab_top_correct": int(inv_top),
            "in_vocab_with_box_share": _ratio(inv_box, inv), "in_vocab_top_correct_share": _ratio(inv_top, inv),
            "in_vocab_top_correct_given_box": _ratio(inv_top, inv_box),
            "oov_images": oov, "oov_with_box": int(oov_box), "oov_false_alarm_share": _ratio(oov_box, oov)}


# ----------------------------------------------------------------------------- report

def score_summary(labels) -> dict:
    """Counts over all labels: images, skipped, stored boxes, and score quantiles of the stored boxes."""
    kept = [lab for lab in labels if not lab.skipped]
    scores = np.concatenate([lab.scores for lab in kept]) if kept else np.zeros(0, np.float32)
    q = {f"score_p{p}": (float(np.percentile(scores, p)) if len(scores) else float("nan")) for p in (10, 50, 90)}
    return {"images": len(labels), "skipped": len(labels) - len(kept), "stored_boxes": int(len(scores)),
            "min_stored_score": float(scores.min()) if len(scores) else float("nan"), **q}


def quality_report(labels, source_hidden_gt=None, source_hidden_labels=None, categories=None,
                   thresholds=DEFAULT_THRESHOLDS, threshold: float = PAPER_THRESHOLD, iou_threshold: float = 0.5,
                   worst: int = 12) -> dict:
    """Everything above that applies, as one JSON-able dict (NaN as None).

    Always: "summary" (`score_summary`), "threshold", "counts" (`threshold_counts`),
    "has_ground_truth". With `source_hidden_gt` (COCO path or dict): "quality"
    (`quality_table`), "ap" (`pseudo_ap`), "per_class" (at `threshold`),
    "worst_false_positives", "worst_misses". Without it, "per_class" has pseudo counts only.
    With `source_hidden_labels` and `categories` (the number of detection classes):
    "object_pool" (`object_pool_agreement`).
    """

    labels = list(labels)
    thresholds = tuple(float(t) for t in thresholds)
    report = {"summary": score_summary(labels), "threshold": float(threshold), "iou_threshold": float(iou_threshold),
              "thresholds": list(thresholds), "counts": threshold_counts(labels, thresholds),
              "has_ground_truth": source_hidden_gt is not None, "has_hidden_labels": source_hidden_labels is not None}
    if categories:
        report["categories"] = [dict(c) if isinstance(c, dict) else {"name": str(c)} for c in categories]
    if source_hidden_gt is not None:
        gt = load_gt(source_hidden_gt)
        matched, counts = _match_all(labels, gt, iou_threshold)
        report["quality"] = _table(matched, counts, thresholds)
        report["ap"] = pseudo_ap(labels, gt)
        report["per_class"] = _per_class(category_names(categories, gt), [(m.labels, m) for m in matched],
                                         threshold, True)
        report["worst_false_positives"] = _worst_fps(matched, threshold, worst)
        report["worst_misses"] = _worst_misses(matched, threshold, worst, iou_threshold)
        if isinstance(source_hidden_gt, (str, os.PathLike)):
            report["hidden_gt"] = str(source_hidden_gt)
    else:
        report["per_class"] = per_class_counts(labels, categories, threshold)
    if source_hidden_labels is not None and categories:
        report["object_pool"] = object_pool_agreement(labels, source_hidden_labels, len(categories), threshold)
        if isinstance(source_hidden_labels, (str, os.PathLike)):
            report["hidden_labels"] = str(source_hidden_labels)
    return to_jsonable(report)


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_quality_table(rows) -> str:
    """`quality_table` rows (or `threshold_counts` rows, without GT) as a small markdown table;
    the paper's threshold (0.5) is marked."""
    rows = list(rows)
    with_gt = bool(rows) and "precision" in rows[0]
    if with_gt:
        head = ["threshold", "precision", "recall", "TP", "FP", "FN", "pseudo / image", "true / image"]
        keys = ["precision", "recall", "tp", "fp", "fn", "pseudo_per_image", "true_per_image"]
    else:
        head = ["threshold", "pseudo boxes", "pseudo / image", "images with boxes"]
        keys = ["pseudo_boxes", "pseudo_per_image", "images_with_boxes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        t = f"{r['threshold']:.2f}" + (" (paper)" if abs(r["threshold"] - PAPER_THRESHOLD) < 1e-9 else "")
        lines.append("| " + " | ".join([t] + [_fmt(r.get(k)) for k in keys]) + " |")
    return "\n".join(lines)
