"""stlib.viz.augment on two tiny synthetic scenes: figure layouts and the level -> argument table."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from stlib.augment.flip_crop import normalize_image  # noqa: E402
from stlib.augment.ops import DETECTION_OPS, OPS  # noqa: E402
from stlib.config import AugmentParams  # noqa: E402
from stlib.viz import augment as av  # noqa: E402

S = 64


def _example(seed: int, h: int, w: int) -> dict:
    rng = np.random.default_rng(seed)
    image = np.zeros((S, S, 3), np.uint8)
    image[:h, :w] = rng.integers(0, 255, (h, w, 3))
    mask = np.full((S, S), 255, np.uint8)
    mask[:h, :w] = 0
    boxes = np.zeros((4, 4), np.float32)
    boxes[0] = (4, 6, 20, 30)
    boxes[1] = (24, 10, 40, 22)
    for k, (y0, x0, y1, x1) in enumerate(boxes[:2].astype(int)):
        mask[y0:y1, x0:x1] = k + 1
    return {"image": image, "image_hw": np.array([h, w], np.int32), "boxes": boxes,
            "classes": np.array([1, 2, 0, 0], np.int32), "valid": np.array([True, True, False, False]),
            "mask": mask}


@pytest.fixture(scope="module")
def examples():
    return [_example(0, 64, 64), _example(1, 48, 60)]


def test_op_gallery_grid(examples):
    names = ["Invert", "TranslateX_BBox", "Flip_Only_BBoxes"]
    fig = av.op_gallery(examples, names, levels=(0, 5, 10), constants=av.AUTOAUGMENT_CONSTANTS, seed=0,
                        class_names=["a", "b"], title="t")
    assert len(fig.axes) == len(names) * len(examples) * 3
    assert fig.axes[3].get_title().startswith("Invert")  # row 2 = Invert on example 2
    assert fig.axes[6].get_title().startswith("TranslateX_BBox")
    plt.close(fig)


def test_policy_gallery_grid(examples):
    aug = AugmentParams(pixel_scale=0.1, autoaugment_policy="test")  # one sub-policy: a quick compile
    fig = av.policy_gallery(examples, ("s1", "s2"), aug=aug, samples=2, seed=0)
    assert len(fig.axes) == len(examples) * (1 + 2 * 2)
    assert fig.axes[0].get_title() == "original"
    assert [a.get_title() for a in fig.axes[1:5]] == ["s1 #1", "s1 #2", "s2 #1", "s2 #2"]
    plt.close(fig)


def test_draw_example_uint8_and_normalized(examples, tmp_path):
    normalized = dict(examples[0], image=np.asarray(normalize_image(examples[0]["image"], examples[0]["image_hw"])))
    fig, axes = plt.subplots(1, 2)
    av.draw_example(axes[0], examples[0], "raw", class_names={1: "a", 2: "b"})
    av.draw_example(axes[1], normalized, "normalized")
    assert len(axes[0].patches) == 2  # the two valid boxes
    shown = axes[1].images[0].get_array()
    assert shown.dtype != np.uint8 and 0.0 <= shown.min() and shown.max() <= 1.0  # un-normalized
    overlay = av.mask_overlay(examples[1]["mask"])
    assert overlay[63, 63, 3] > 0 and overlay[45, 50, 3] == 0  # ignore shown, background clear
    assert av.save_figure(fig, tmp_path, "x").is_file() and av.save_figure(fig, "", "x") is None
    plt.close(fig)


def test_op_selection_and_groups():
    assert av.select_ops("all") == DETECTION_OPS + ("Invert",)
    assert av.select_ops("Equalize, Cutout") == ("Equalize", "Cutout")
    with pytest.raises(ValueError):
        av.select_ops("Equalise")
    grouped = [n for names in av.op_groups().values() for n in names]
    assert sorted(grouped) == sorted(OPS)
    assert av.op_prob("Flip_Only_BBoxes") == 3.0 and av.op_prob("Rotate_BBox") == 1.0


def test_fidelity_table():
    rows = av.fidelity_table()
    assert [r["op"] for r in rows] == list(av.ALL_OPS) and len(rows) == 26
    by_op = {r["op"]: r for r in rows}
    assert by_op["Posterize"]["args"] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4]
    assert by_op["TranslateX_BBox"]["args"][10] == 250 and by_op["TranslateX_BBox"]["signed"]
    md = av.fidelity_markdown(rows)
    assert md.count("\n") == 26 + 1 and "| Rotate_BBox (±) |" in md
