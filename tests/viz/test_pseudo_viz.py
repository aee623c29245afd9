"""stlib.viz.pseudo on tiny hand-made labels, and notebooks/pseudo_labels.ipynb on a fabricated store."""
import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from stlib.pseudo import quality as q  # noqa: E402
from stlib.pseudo.labels import ImageLabels  # noqa: E402
from stlib.viz import pseudo as pv  # noqa: E402

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def gt():
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [20, 20, 12, 8]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, 30, 20]}]
    return {"images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 40},
                       {"id": 2, "file_name": "b.png", "height": 32, "width": 64}],
            "annotations": anns, "categories": CATEGORIES}


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return {0: rng.integers(0, 255, (48, 40, 3), dtype=np.uint8), 1: rng.integers(0, 255, (32, 64, 3), dtype=np.uint8),
            2: rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)}


@pytest.fixture
def labels():
    return [ImageLabels(0, "a.png", 48, 40, [[2, 2, 12, 12], [20, 20, 28, 32], [30, 0, 40, 10]], [1, 1, 2],
                        [0.95, 0.7, 0.4]),
            ImageLabels(1, "b.png", 32, 64, [[5, 5, 25, 35]], [1], [0.55]),
            ImageLabels(2, "c.png", 20, 20, np.zeros((0, 4)), [], [], skipped="corrupt: bad png")]


def test_draw_gallery_any_sizes_with_and_without_gt(images, labels, gt):
    imgs = [images[lab.index] for lab in labels]
    fig = pv.draw_gallery(imgs, labels, 0.5, CATEGORIES, gt_boxes=q.ground_truth_for(labels, gt), ncols=2)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3
    assert len(panels[0].patches) == 2 + 2  # two GT (dashed) + two pseudo boxes >= 0.5
    assert any("circle 0.95" in t.get_text() for t in panels[0].texts)
    assert "skipped" in panels[2].get_title()
    assert len(fig.axes) > 4  # the colorbar
    fig = pv.draw_gallery(imgs[:2], labels[:2], 0.3, None)
    assert len([ax for ax in fig.axes if ax.images][0].patches) == 3
    assert isinstance(pv.draw_gallery([], [], 0.5, CATEGORIES), Figure)
    with pytest.raises(ValueError):
        pv.draw_gallery(imgs[:1], labels, 0.5, CATEGORIES)


def test_plot_quality_class_counts_and_worst(images, labels, gt, tmp_path):
    rows = q.quality_table(labels, gt)
    assert isinstance(pv.plot_quality(rows), Figure)
    assert isinstance(pv.plot_quality(q.threshold_counts(labels)), Figure)  # no GT
    report = q.quality_report(labels, gt, categories=CATEGORIES, thresholds=(0.5, 0.99))
    assert report["quality"][1]["precision"] is None
    assert isinstance(pv.plot_quality(report["quality"]), Figure)  # None (NaN) values
    fig = pv.plot_class_counts(q.per_class_counts(labels, CATEGORIES, 0.5, gt=gt))
    assert isinstance(fig, Figure)
    assert isinstance(pv.plot_class_counts(q.per_class_counts(labels, CATEGORIES, 0.5)), Figure)
    fps = q.worst_false_positives(labels, gt, 0.3)
    misses = q.worst_misses(labels, gt, 0.5)
    assert fps and misses
    fig = pv.plot_worst(images, fps, "false_positives", CATEGORIES)
    assert isinstance(fig, Figure) and len([ax for ax in fig.axes if ax.images]) == len(fps)
    assert isinstance(pv.plot_worst(images.__getitem__, misses, "misses"), Figure)
    assert isinstance(pv.plot_worst(images, [], "fp"), Figure)
    with pytest.raises(ValueError):
        pv.plot_worst(images, fps, "bogus")
    path = pv.save_figure(fig, tmp_path / "sub" / "worst.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["worst.png"]  # no temp file left


def test_threshold_explorer_redraws(images, labels, gt, monkeypatch):
    pytest.importorskip("ipywidgets")
    import ipywidgets
    loads = []
    box = pv.threshold_explorer(lambda i: loads.append(i) or images[i], labels, CATEGORIES, gt=gt, n=8, initial=0.5)
    assert isinstance(box, ipywidgets.VBox)
    assert isinstance(box.slider, ipywidgets.FloatSlider)
    assert (box.slider.min, box.slider.max, box.slider.step, box.slider.value) == (0.05, 0.95, 0.05, 0.5)
    assert loads == [0, 1]  # skipped images are not shown; images load once
    assert box.last_stats["pseudo_boxes"] == 3 and box.last_stats["tp"] == 2
    box.slider.value = 0.35
    assert box.last_stats["threshold"] == pytest.approx(0.35) and box.last_stats["pseudo_boxes"] == 4
    assert loads == [0, 1]
    no_gt = pv.threshold_explorer(images.__getitem__, labels, None, n=1, initial=0.9)
    no_gt.slider.value = 0.6
    assert no_gt.last_stats["pseudo_boxes"] == 2 and "precision" not in no_gt.last_stats


def test_pseudo_labels_notebook_on_a_fabricated_store(tmp_path):
    """The explorer notebook end to end through papermill, on pseudo labels made from the smoke
    world's hidden ground truth (jittered, with a few false boxes), world:scenes."""
    import nbformat

    from tests.conftest import REPO, notebook_errors, notebook_images, run_python
    from tests.viz.fabricated import fabricated_store

    store_dir = fabricated_store(tmp_path / "store")
    out_nb, out_dir = tmp_path / "pseudo_labels.ipynb", tmp_path / "explorer"
    params = {"STORE_DIR": str(store_dir), "OUT_DIR": str(out_dir), "THRESHOLD": 0.5, "NUM_IMAGES": 6,
              "WORLD_SCALE": "smoke", "WORLD_SEED": 0}
    code = (f"import papermill as pm; pm.execute_notebook({str(REPO / 'notebooks/pseudo_labels.ipynb')!r}, "
            f"{str(out_nb)!r}, parameters={params!r}, cwd={str(REPO)!r}, progress_bar=False, kernel_name='python3')")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    nb = nbformat.read(out_nb, as_version=4)
    assert not notebook_errors(nb)
    images = notebook_images(nb)
    assert len(images) >= 5
    saved = sorted(p.name for p in out_dir.glob("*.png"))
    assert saved == sorted(pv.FIGURE_FILES.values())
    report = json.loads((out_dir / "quality.json").read_text())
    assert report["has_ground_truth"] and report["summary"]["images"] == 16 and report["summary"]["skipped"] == 1
    row = next(r for r in report["quality"] if r["threshold"] == 0.5)
    assert row["images"] == 15 and 0.0 < row["precision"] <= 1.0 and 0.0 < row["recall"] <= 1.0
    assert report["ap"]["AP50"] > 0.3 and report["worst_false_positives"]
    assert out_nb.stat().st_size < 5_000_000
