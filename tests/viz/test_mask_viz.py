"""How right segmentation pseudo masks are (stlib.pseudo.masks.mask_counts / mask_quality), their
pictures (stlib.viz.masks) and notebooks/pseudo_masks.ipynb on a fabricated smoke store."""
import json

import numpy as np
import pytest
from PIL import Image

from stlib.data.coco import DataError
from stlib.data.segmentation import IGNORE_LABEL, SegmentationSource
from stlib.eval.miou import confusion_matrix, miou_from_confusion
from stlib.pseudo import masks as pm
from stlib.pseudo.labels import ImageLabels
from stlib.viz import masks as mv


def _source(tmp_path, truths):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i, t in enumerate(truths):
        Image.fromarray(np.zeros(t.shape + (3,), np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(t.astype(np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    return SegmentationSource.from_folders(tmp_path / "images", tmp_path / "masks", ["a", "b"], name="hand-made")


def _labels(preds, scores):
    return [ImageLabels(i, f"{i}.png", *p.shape, np.zeros((0, 4)), [], [], mask=p.astype(np.uint8),
                        mask_score=s.astype(np.uint8)) for i, (p, s) in enumerate(zip(preds, scores))]


def test_mask_quality_by_hand(tmp_path):
    """Five labelled pixels (one void): at 0 all kept, 4 right, IoUs 1, 1/2, 1/2; at 0.5 (level 128)
    the two pixels stored at 100 and 127 go, the three left are right."""
    truth = _source(tmp_path, [np.array([[1, 1, 0], [0, 2, 255]])])
    labels = _labels([np.array([[1, 2, 0], [0, 2, 1]])], [np.array([[255, 100, 200], [128, 127, 255]])])
    counted = pm.mask_counts(labels, truth)
    assert counted["images"] == 1 and counted["skipped"] == 0 and counted["counts"].sum() == 5
    at0, at5 = pm.mask_quality(counted["counts"], (0.0, 0.5))
    assert at0 == {"threshold": 0.0, "pixels": 5, "covered": 1.0, "accuracy": 0.8, "mIoU": pytest.approx(2 / 3)}
    assert at5 == {"threshold": 0.5, "pixels": 3, "covered": 0.6, "accuracy": 1.0, "mIoU": 1.0}
    iou = pm.class_iou(pm.confusion_at(counted["counts"], 0.0))
    np.testing.assert_allclose(iou, [1.0, 0.5, 0.5])
    assert np.isnan(pm.class_iou(pm.confusion_at(counted["counts"], 0.5))[2])


def test_mask_quality_matches_the_evaluation_miou_at_every_threshold(tmp_path):
    """Random masks on three images of different sizes: the counts' numbers at each threshold are
    what `stlib.eval.miou` gives on the pixels `apply_threshold` keeps."""
    rng = np.random.default_rng(1)
    shapes = [(7, 9), (12, 5), (6, 6)]
    truths = [np.where(rng.random(s) < 0.1, 255, rng.integers(0, 3, s)) for s in shapes]
    preds = [np.where(rng.random(s) < 0.6, t % 255 % 3, rng.integers(0, 3, s)) for t, s in zip(truths, shapes)]
    scores = [rng.integers(0, 256, s) for s in shapes]
    truth = _source(tmp_path, truths)
    labels = _labels(preds, scores)
    counts = pm.mask_counts(labels, truth)["counts"]
    for row in pm.mask_quality(counts, (0.0, 0.3, 0.5, 0.77)):
        kept = [pm.apply_threshold(lab, row["threshold"]) for lab in labels]
        t = np.concatenate([x.ravel() for x in truths])
        p = np.concatenate([x.ravel() for x in kept])
        keep = (p != IGNORE_LABEL) & (t != IGNORE_LABEL)
        mean, _ = miou_from_confusion(confusion_matrix(p[keep], t[keep], 3))
        assert row["pixels"] == keep.sum()
        assert row["covered"] == pytest.approx(keep.sum() / (t != IGNORE_LABEL).sum())
        assert row["accuracy"] == pytest.approx((p[keep] == t[keep]).mean())
        assert row["mIoU"] == pytest.approx(float(mean), rel=1e-6)


def test_mask_counts_refuses_a_store_of_other_images(tmp_path):
    truth = _source(tmp_path, [np.zeros((3, 3))])
    lab = ImageLabels(0, "other.png", 3, 3, np.zeros((0, 4)), [], [], mask=np.zeros((3, 3), np.uint8))
    with pytest.raises(DataError, match="'other.png'.*'0.png'"):
        pm.mask_counts([lab], truth)


def test_threshold_slider_redraws_and_counts(tmp_path):
    truth = _source(tmp_path, [np.array([[1, 1, 0], [0, 2, 255]])])
    labels = _labels([np.array([[1, 2, 0], [0, 2, 1]])], [np.array([[255, 100, 200], [128, 127, 255]])])
    counts = pm.mask_counts(labels, truth)["counts"]
    image = np.zeros((2, 3, 3), np.uint8)
    box = mv.mask_threshold_explorer([image], labels, [truth.load_mask(0, (2, 3))], counts, 3, initial=0.5)
    assert box.last_stats["covered"] == 0.6 and bytes(box.children[2].value)[:4] == b"\x89PNG"
    box.slider.value = 0.3
    assert box.last_stats["threshold"] == pytest.approx(0.3) and box.last_stats["covered"] == 1.0
    box.slider.value = 0.95
    assert box.last_stats["covered"] == pytest.approx(0.2)     # only the 255 on a labelled pixel
    no_truth = mv.mask_threshold_explorer([image], labels, [None], None, 3, initial=0.5)
    assert no_truth.last_stats["ignored_shown"] == pytest.approx(2 / 6)


def test_pseudo_masks_notebook_on_a_fabricated_store(tmp_path):
    """notebooks/pseudo_masks.ipynb through papermill on pseudo masks made from the smoke world's
    hidden aug truth, their unsure pixels scrambled: the saved figures, and a quality table where
    a higher threshold keeps fewer, more accurate pixels."""
    import nbformat

    from tests.conftest import REPO, notebook_errors, notebook_images, run_python
    from tests.viz.fabricated import fabricated_mask_store

    store_dir = fabricated_mask_store(tmp_path / "store")
    out_nb, out_dir = tmp_path / "pseudo_masks.ipynb", tmp_path / "explorer"
    params = {"STORE_DIR": str(store_dir), "OUT_DIR": str(out_dir), "THRESHOLD": 0.5, "NUM_IMAGES": 4,
              "WORLD_SCALE": "smoke", "WORLD_SEED": 0}
    code = (f"import papermill as pm; pm.execute_notebook({str(REPO / 'notebooks/pseudo_masks.ipynb')!r}, "
            f"{str(out_nb)!r}, parameters={params!r}, cwd={str(REPO)!r}, progress_bar=False, kernel_name='python3')")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    nb = nbformat.read(out_nb, as_version=4)
    assert not notebook_errors(nb)
    assert len(notebook_images(nb)) >= 3          # quality, class IoU, gallery
    assert sorted(p.name for p in out_dir.glob("*.png")) == sorted(mv.FIGURE_FILES.values())
    report = json.loads((out_dir / "quality.json").read_text())
    assert report["images"] == 28 and report["skipped"] == 1 and report["images_measured"] == 27
    assert report["truth"] == "world smoke aug (truth)" and not report["notes"]
    rows = {r["threshold"]: r for r in report["quality"]}
    assert rows[0.0]["covered"] == 1.0 and rows[0.5]["accuracy"] == 1.0      # the sure pixels are the truth
    assert rows[0.0]["accuracy"] < 0.9 and 0.2 < rows[0.5]["covered"] < 0.8
    assert rows[0.9]["covered"] < rows[0.5]["covered"]
    assert len(report["class_iou"]) == len(report["classes"]) and report["class_iou"][0] == 1.0
    with pytest.raises(ValueError, match="pseudo_labels.ipynb"):
        from tests.viz.fabricated import fabricated_store
        mv.explore_mask_store(fabricated_store(tmp_path / "boxes"))
