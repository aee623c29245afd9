"""stlib.pseudo.quality on hand-made labels and ground truth with known answers."""
import json
import math

import numpy as np
import pytest

from stlib.pseudo import quality as q
from stlib.pseudo.labels import ImageLabels

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}]


def _ann(image_id, cat, x, y, w, h, **kw):
    return {"image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], **kw}


@pytest.fixture
def gt():
    """a.png: g1 (class 1, yxyx 0,0,10,10), g2 (class 2 = id 3, 20,20,30,30); b.png: g3 (class 1, 0,0,20,20);
    c.png: g4 (class 2)."""
    anns = [_ann(1, 1, 0, 0, 10, 10), _ann(1, 3, 20, 20, 10, 10), _ann(2, 1, 0, 0, 20, 20), _ann(3, 3, 5, 5, 10, 10)]
    for k, a in enumerate(anns):
        a["id"] = k + 1
    return {"images": [{"id": i + 1, "file_name": f"{n}.png", "height": 64, "width": 64}
                       for i, n in enumerate("abc")],
            "annotations": anns, "categories": [{"id": 3, "name": "square"}, {"id": 1, "name": "circle"}]}


def _lab(index, key, boxes=(), classes=(), scores=(), skipped=""):
    return ImageLabels(index, key, 64, 64, np.asarray(boxes, np.float32).reshape(-1, 4), classes, scores, skipped)


@pytest.fixture
def labels():
    return [
        # p2 (duplicate of p1, lower score) comes first: greedy goes by score, not input order
        _lab(0, "a.png", [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]],
             [1, 1, 1, 2], [0.6, 0.9, 0.8, 0.35]),
        _lab(1, "b.png", [[1, 1, 20, 20]], [1], [0.45]),               # IoU 0.9025 with g3
        _lab(2, "c.png", skipped="corrupt: truncated"),                 # left out: its g4 is not a miss
        _lab(3, "d.png", [[0, 0, 5, 5]], [2], [0.99]),                  # no GT entry: left out
    ]


def test_match_image_greedy_by_score_same_class_each_gt_once():
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    gt_classes = np.array([1, 2])
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [21, 21, 30, 30]], np.float32)
    classes = np.array([1, 1, 1, 2])
    scores = np.array([0.6, 0.9, 0.8, 0.5])
    tp, matched = q.match_image(boxes, classes, scores, gt_boxes, gt_classes)
    assert tp.tolist() == [False, True, False, True]  # duplicate FP, class mismatch FP, IoU .81 TP
    assert matched.tolist() == [True, True]
    tp, matched = q.match_image(boxes[3:], classes[3:], scores[3:], gt_boxes, gt_classes, iou_threshold=0.85)
    assert tp.tolist() == [False] and matched.tolist() == [False, False]
    tp, matched = q.match_image(np.zeros((0, 4)), [], [], gt_boxes, gt_classes)
    assert tp.shape == (0,) and matched.tolist() == [False, False]
    tp, matched = q.match_image(boxes, classes, scores, np.zeros((0, 4)), [])
    assert not tp.any() and matched.shape == (0,)


def test_match_image_prefers_highest_iou_unmatched_gt():
    gt_boxes = np.array([[0, 0, 10, 10], [0, 2, 10, 12]], np.float32)
    boxes = np.array([[0, 2, 10, 12], [0, 1, 10, 11]], np.float32)
    tp, matched = q.match_image(boxes, [1, 1], [0.9, 0.8], gt_boxes, [1, 1])
    assert tp.tolist() == [True, True] and matched.tolist() == [True, True]


@pytest.mark.parametrize("threshold,tp,fp,fn,pseudo", [
    (0.3, 2, 3, 1, 5), (0.4, 2, 2, 1, 4), (0.5, 1, 2, 2, 3), (0.7, 1, 1, 2, 2), (0.95, 0, 0, 3, 0)])
def test_quality_table_exact_counts(labels, gt, threshold, tp, fp, fn, pseudo):
    (row,) = q.quality_table(labels, gt, thresholds=(threshold,))
    assert (row["tp"], row["fp"], row["fn"], row["pseudo_boxes"]) == (tp, fp, fn, pseudo)
    assert row["true_boxes"] == 3 and row["images"] == 2 and row["skipped"] == 1 and row["no_gt"] == 1
    assert row["recall"] == pytest.approx(tp / 3)
    if pseudo:
        assert row["precision"] == pytest.approx(tp / (tp + fp))
    else:
        assert math.isnan(row["precision"])
    assert row["pseudo_per_image"] == pytest.approx(pseudo / 2) and row["true_per_image"] == pytest.approx(1.5)


def test_quality_table_default_thresholds_and_iou(labels, gt):
    rows = q.quality_table(labels, gt)
    assert [r["threshold"] for r in rows] == list(q.DEFAULT_THRESHOLDS)
    assert [r["pseudo_boxes"] for r in rows] == sorted([r["pseudo_boxes"] for r in rows], reverse=True)
    (strict,) = q.quality_table(labels, gt, thresholds=(0.3,), iou_threshold=0.95)
    assert (strict["tp"], strict["fp"]) == (1, 4)  # p5 (IoU 0.9025) no longer matches


def test_gt_from_path_and_crowd_boxes_are_ignored(tmp_path, gt):
    gt["annotations"].append(_ann(2, 1, 40, 40, 20, 20, iscrowd=1, id=99))
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert q.load_gt(path) == gt and q.load_gt(str(path)) == gt
    labels = [_lab(1, "b.png", [[0, 0, 20, 20], [42, 42, 58, 58], [42, 42, 58, 58]], [1, 1, 2], [0.9, 0.8, 0.7])]
    (row,) = q.quality_table(labels, path, thresholds=(0.5,))
    # the crowd region is not a true box; a class-1 box on it is neither TP nor FP, a class-2 one is an FP
    assert (row["tp"], row["fp"], row["fn"], row["true_boxes"], row["pseudo_boxes"]) == (1, 1, 0, 1, 3)


def test_per_class_counts(labels, gt):
    rows = q.per_class_counts(labels, CATEGORIES, 0.5, gt=gt)
    assert rows == [{"class": 1, "name": "circle", "pseudo": 3, "true": 2, "tp": 1},
                    {"class": 2, "name": "square", "pseudo": 0, "true": 1, "tp": 0}]
    # without GT: every non-skipped image (d.png included), no "true"
    rows = q.per_class_counts(labels, CATEGORIES, 0.5)
    assert rows == [{"class": 1, "name": "circle", "pseudo": 3}, {"class": 2, "name": "square", "pseudo": 1}]
    # names from the GT's categories (sorted by id) when none are given
    assert [r["name"] for r in q.per_class_counts(labels, None, 0.5, gt=gt)] == ["circle", "square"]


def test_worst_false_positives_ordered_by_score(labels, gt):
    fps = q.worst_false_positives(labels, gt, 0.3)
    assert [(e["key"], e["score"]) for e in fps] == [("a.png", pytest.approx(0.8)), ("a.png", pytest.approx(0.6)),
                                                     ("a.png", pytest.approx(0.35))]
    assert fps[0]["box"] == [20, 20, 30, 30] and fps[0]["class"] == 1
    assert fps[0]["best_iou"] == pytest.approx(1.0) and fps[0]["best_iou_class"] == 2  # a class confusion
    assert fps[1]["best_iou"] == pytest.approx(1.0) and fps[1]["best_iou_class"] == 1  # a duplicate
    assert fps[2]["best_iou"] == 0.0 and fps[2]["index"] == 0
    assert len(q.worst_false_positives(labels, gt, 0.3, n=2)) == 2
    assert [e["score"] for e in q.worst_false_positives(labels, gt, 0.7)] == [pytest.approx(0.8)]


def test_worst_misses_largest_first(labels, gt):
    misses = q.worst_misses(labels, gt, 0.5)
    assert [(e["key"], e["box"], e["class"]) for e in misses] == [("b.png", [0, 0, 20, 20], 1),
                                                                  ("a.png", [20, 20, 30, 30], 2)]
    assert misses[0]["area"] == 400 and misses[0]["best_score_overlapping"] == pytest.approx(0.45)
    assert misses[1]["best_score_overlapping"] == 0.0
    assert misses[1]["best_score_other_class"] == pytest.approx(0.8)
    assert [e["key"] for e in q.worst_misses(labels, gt, 0.3)] == ["a.png"]
    assert len(q.worst_misses(labels, gt, 0.5, n=1)) == 1


def test_object_pool_agreement_counts():
    hidden = {"categories": [{"index": i, "name": f"c{i}"} for i in range(5)],
              "images": [{"file_name": f"{i}.png", "label": lab} for i, lab in enumerate([0, 2, 1, 4, 3, 0])]}
    labels = [
        _lab(0, "0.png", [[0, 0, 9, 9]], [1], [0.9]),                        # in vocab, top right
        _lab(1, "1.png", [[0, 0, 9, 9], [1, 1, 9, 9]], [1, 3], [0.7, 0.6]),   # in vocab, top wrong
        _lab(2, "2.png", [[0, 0, 9, 9]], [2], [0.3]),                         # in vocab, nothing >= 0.5
        _lab(3, "3.png", [[0, 0, 9, 9]], [1], [0.55]),                        # out of vocab: a false alarm
        _lab(4, "4.png"),                                                     # out of vocab, no box
        _lab(5, "5.png", skipped="corrupt"),
        _lab(6, "6.png", [[0, 0, 9, 9]], [1], [0.9]),                         # no hidden label
    ]
    out = q.object_pool_agreement(labels, hidden, num_detection_classes=3, threshold=0.5)
    assert (out["in_vocab_images"], out["in_vocab_with_box"], out["in_vocab_top_correct"]) == (3, 2, 1)
    assert (out["oov_images"], out["oov_with_box"], out["skipped"], out["no_label"]) == (2, 1, 1, 1)
    assert out["in_vocab_with_box_share"] == pytest.approx(2 / 3)
    assert out["in_vocab_top_correct_share"] == pytest.approx(1 / 3)
    assert out["in_vocab_top_correct_given_box"] == pytest.approx(1 / 2)
    assert out["oov_false_alarm_share"] == pytest.approx(1 / 2)
    low = q.object_pool_agreement(labels, hidden, 3, threshold=0.25)
    assert low["in_vocab_with_box"] == 3 and low["in_vocab_top_correct"] == 2


def test_pseudo_ap_perfect_and_empty(gt):
    perfect = [_lab(0, "a.png", [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], [1.0, 1.0]),
               _lab(1, "b.png", [[0, 0, 20, 20]], [1], [1.0]),
               _lab(2, "c.png", [[5, 5, 15, 15]], [2], [1.0])]
    ap = q.pseudo_ap(perfect, gt)
    assert ap["AP"] == pytest.approx(1.0) and ap["AP50"] == pytest.approx(1.0) and ap["AP75"] == pytest.approx(1.0)
    assert ap["images"] == 3
    # only the scored images count: c.png skipped, so its true box is no miss
    partial = perfect[:2] + [_lab(2, "c.png", skipped="corrupt")]
    assert q.pseudo_ap(partial, gt)["AP"] == pytest.approx(1.0) and q.pseudo_ap(partial, gt)["images"] == 2
    assert q.pseudo_ap([_lab(0, "a.png")], gt)["AP"] == 0.0
    wrong = [_lab(0, "a.png", [[0, 0, 10, 10], [20, 20, 30, 30]], [2, 1], [1.0, 1.0])]
    assert q.pseudo_ap(wrong, gt)["AP"] == 0.0


def test_quality_report_is_json_and_table_markdown(labels, gt):
    hidden = {"images": [{"file_name": "a.png", "label": 0}, {"file_name": "b.png", "label": 7}]}
    report = q.quality_report(labels, gt, hidden, CATEGORIES, thresholds=(0.3, 0.5, 0.95))
    json.dumps(report, allow_nan=False)
    assert report["has_ground_truth"] and report["summary"]["images"] == 4 and report["summary"]["skipped"] == 1
    assert [r["tp"] for r in report["quality"]] == [2, 1, 0]
    assert report["quality"][2]["precision"] is None  # NaN -> null
    assert report["per_class"][0]["true"] == 2 and report["ap"]["images"] == 2
    assert len(report["worst_false_positives"]) == 2 and len(report["worst_misses"]) == 2
    assert report["object_pool"]["in_vocab_images"] == 1 and report["object_pool"]["oov_images"] == 1
    table = q.format_quality_table(report["quality"])
    lines = table.splitlines()
    assert len(lines) == 5 and "precision" in lines[0] and "0.50 (paper)" in table and "—" in lines[4]

    bare = q.quality_report(labels)
    json.dumps(bare, allow_nan=False)
    assert not bare["has_ground_truth"] and "quality" not in bare and "object_pool" not in bare
    assert [r["pseudo_boxes"] for r in bare["counts"]][:3] == [6, 5, 4]  # d.png counts without GT
    assert "pseudo boxes" in q.format_quality_table(bare["counts"])
