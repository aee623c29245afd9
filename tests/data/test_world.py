"""Tests for the embedded world generator (smoke preset, generated under tmp_path)."""

import hashlib
import json
import math
import os
import subprocess

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from stlib.data import shapes
from stlib.data import world as W

# pycocotools' RLE decoder trips a numpy-2 copy-keyword deprecation warning on every call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _digest(root):
    """Hash of every file (relative path and bytes) under ``root``."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    spec = W.world_spec("smoke")
    root = W.generate_world(spec, cache_dir=cache, workers=1, progress=False)
    return spec, cache, root


def test_layout_and_manifest(smoke):
    spec, cache, root = smoke
    assert root == W.world_root(spec, cache)
    assert root.name.startswith(f"v{W.WORLD_VERSION}-smoke-s0-")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["version"] == W.WORLD_VERSION and manifest["seed"] == 0 and manifest["scale"] == "smoke"
    assert manifest["spec"]["image_size"] == 64
    counts = manifest["counts"]
    assert counts["detection/train"]["images"] == spec.num_train
    assert counts["detection/val"]["images"] == spec.num_val
    assert counts["pools/scenes"]["images"] == spec.num_pool_scenes
    assert counts["classification/train"]["images"] == spec.num_cls_train_per_class * spec.num_cls_categories
    assert counts["classification/val"]["images"] == spec.num_cls_val_per_class * spec.num_cls_categories
    assert counts["pools/objects"]["images"] == spec.num_pool_objects
    for rel, n in [("detection/train/images", spec.num_train), ("detection/train/masks", spec.num_train),
                   ("detection/val/images", spec.num_val), ("pools/scenes/images", spec.num_pool_scenes),
                   ("pools/objects/images", spec.num_pool_objects),
                   ("classification/train/images", counts["classification/train"]["images"])]:
        assert len(list((root / rel).iterdir())) == n, rel
    img = Image.open(root / "detection/train/images/000000.png")
    assert img.mode == "RGB" and img.size == (64, 64)
    assert Image.open(root / "detection/train/masks/000000.png").mode == "L"
    assert Image.open(root / "classification/train/images/000000.png").size == (32, 32)
    # pools are unlabeled: only images next to them; ground truth lives in hidden/
    for pool in ("pools/scenes", "pools/objects"):
        assert [p.name for p in (root / pool).iterdir()] == ["images"]
        assert {p.suffix for p in (root / pool / "images").iterdir()} == {".png"}
    assert (root / "hidden/scenes.json").is_file() and (root / "hidden/objects.json").is_file()
    assert not list(root.parent.glob(".*tmp*"))


def test_determinism_workers_and_seed(smoke, tmp_path):
    spec, _, root = smoke
    again = W.generate_world(spec, cache_dir=tmp_path / "a", workers=2, progress=False)
    assert again != root and _digest(again) == _digest(root)
    other = W.generate_world(W.world_spec("smoke", seed=1), cache_dir=tmp_path / "b", workers=1, progress=False)
    assert other.name != root.name
    a = (root / "detection/train/images/000000.png").read_bytes()
    assert a != (other / "detection/train/images/000000.png").read_bytes()
    assert (root / "hidden/scenes.json").read_bytes() != (other / "hidden/scenes.json").read_bytes()


def test_cache_hit(smoke, monkeypatch):
    spec, cache, root = smoke
    mtime = (root / "manifest.json").stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("regenerated a cached world")

    monkeypatch.setattr(W, "_generate_into", boom)
    assert W.generate_world(spec, cache_dir=cache, progress=False) == root
    assert W.ensure_world("smoke", cache_dir=cache, progress=False) == root
    assert (root / "manifest.json").stat().st_mtime_ns == mtime


def test_interrupted_generation_leaves_nothing_complete(tmp_path, monkeypatch):
    spec = W.world_spec("smoke", seed=3)
    root = W.world_root(spec, tmp_path)
    real = W._render_chunk
    calls = []

    def flaky(task):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(W, "_render_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        W.generate_world(spec, cache_dir=tmp_path, workers=1, progress=False)
    assert not root.exists()
    assert list(root.parent.iterdir()) == []
    monkeypatch.setattr(W, "_render_chunk", real)

    # A leftover temp dir (even one holding a manifest) and a root without a manifest are not worlds.
    # Temp dirs of dead processes are cleaned up; those of live ones (maybe still generating) are kept.
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = root.parent / f".{root.name}.tmp-{finished.pid}-0000"
    alive = root.parent / f".{root.name}.tmp-{os.getpid()}-1111"
    for stale in (dead, alive):
        stale.mkdir()
        (stale / "manifest.json").write_text(json.dumps({"version": W.WORLD_VERSION}))
    root.mkdir()
    (root / "junk.txt").write_text("half a world")
    assert W.generate_world(spec, cache_dir=tmp_path, workers=1, progress=False) == root
    assert (root / "manifest.json").is_file() and not (root / "junk.txt").exists()
    assert not dead.exists() and alive.exists()


@pytest.mark.parametrize("split", ["train", "val", "hidden"])
def test_coco_annotations(smoke, split):
    spec, _, root = smoke
    if split == "hidden":
        coco, image_dir, mask_dir = COCO(str(root / "hidden/scenes.json")), root / "pools/scenes/images", None
    else:
        coco = COCO(str(root / f"detection/annotations/{split}.json"))
        image_dir, mask_dir = root / f"detection/{split}/images", root / f"detection/{split}/masks"
    cats = coco.dataset["categories"]
    assert [c["id"] for c in cats] == [2 * k + 1 for k in range(len(W.DETECTION_NAMES))]
    assert all(c["supercategory"] == "shape" for c in cats)
    contiguous = {c["id"]: k + 1 for k, c in enumerate(cats)}
    size = spec.image_size
    assert len(coco.getAnnIds()) > 0
    for img_id, info in coco.imgs.items():
        assert (image_dir / info["file_name"]).is_file()
        assert info["width"] == info["height"] == size
        semantic = np.zeros((size, size), np.uint8)
        covered = np.zeros((size, size), bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= size and y + h <= size
            assert ann["iscrowd"] == 0 and ann["category_id"] in contiguous
            assert isinstance(ann["segmentation"]["counts"], str)
            m = coco.annToMask(ann).astype(bool)
            assert ann["area"] == m.sum() >= spec.min_visible_area
            assert list(mask_utils.toBbox(coco.annToRLE(ann))) == [x, y, w, h]
            assert not (covered & m).any(), "visible masks must be disjoint"
            covered |= m
            semantic[m] = contiguous[ann["category_id"]]
        if mask_dir is not None:
            stored = np.array(Image.open(mask_dir / info["file_name"]))
            assert stored.max() <= len(cats)
            np.testing.assert_array_equal(stored, semantic)


def test_classification_sets(smoke):
    spec, _, root = smoke
    manifest = json.loads((root / "manifest.json").read_text())
    cls_names = [c["name"] for c in manifest["classification_categories"]]
    det_names = [c["name"] for c in manifest["detection_categories"]]
    assert len(cls_names) == spec.num_cls_categories >= 40 and len(set(cls_names)) == len(cls_names)
    assert cls_names[: len(det_names)] == det_names == list(W.DETECTION_NAMES)
    for det_id, cls_index in manifest["detection_to_classification"].items():
        det_name = next(c["name"] for c in manifest["detection_categories"] if c["id"] == int(det_id))
        assert cls_names[cls_index] == det_name
    for split, per_class in [("train", spec.num_cls_train_per_class), ("val", spec.num_cls_val_per_class)]:
        data = json.loads((root / f"classification/{split}.json").read_text())
        assert data["categories"] == manifest["classification_categories"]
        labels = [im["label"] for im in data["images"]]
        assert np.bincount(labels, minlength=len(cls_names)).tolist() == [per_class] * len(cls_names)
        assert all((root / f"classification/{split}/images" / im["file_name"]).is_file() for im in data["images"])
    hidden = json.loads((root / "hidden/objects.json").read_text())
    assert len(hidden["images"]) == spec.num_pool_objects
    assert all(0 <= im["label"] < len(cls_names) for im in hidden["images"])
    assert all((root / "pools/objects/images" / im["file_name"]).is_file() for im in hidden["images"])


def test_label_subset():
    ids = list(range(1, 101))
    subsets = {f: W.label_subset(ids, f, seed=7) for f in (0.1, 0.2, 0.5, 1.0)}
    assert [len(s) for s in subsets.values()] == [10, 20, 50, 100]
    assert set(subsets[0.1]) <= set(subsets[0.2]) <= set(subsets[0.5]) <= set(subsets[1.0]) == set(ids)
    assert subsets[0.2] == sorted(subsets[0.2]) == W.label_subset(list(reversed(ids)), 0.2, seed=7)
    assert W.label_subset(ids, 0.2, seed=8) != subsets[0.2]
    assert len(W.label_subset(range(7), 0.5, seed=0)) == 4  # rounds half up
    assert len(W.label_subset(range(7), 0.01, seed=0)) == 1
    for bad in (0, 0.0, -0.2, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="fraction"):
            W.label_subset(ids, bad, seed=0)
    with pytest.raises(ValueError, match="1.5"):
        W.label_subset(ids, 1.5, seed=0)


def test_world_spec_and_paths(tmp_path, monkeypatch):
    mini = W.world_spec()
    assert (mini.image_size, mini.num_train, mini.num_val, mini.num_pool_scenes) == (128, 1200, 500, 8000)
    assert (mini.num_cls_categories, mini.num_cls_train_per_class, mini.num_cls_val_per_class) == (40, 150, 30)
    smoke = W.world_spec("smoke", seed=2, num_train=5, objects_per_scene=[1, 3])
    assert (smoke.seed, smoke.image_size, smoke.num_train, smoke.objects_per_scene) == (2, 64, 5, (1, 3))
    with pytest.raises(ValueError, match="huge"):
        W.world_spec("huge")
    with pytest.raises(ValueError, match="num_trian"):
        W.world_spec("smoke", num_trian=3)
    with pytest.raises(ValueError, match="num_cls_categories"):
        W.world_spec("smoke", num_cls_categories=len(shapes.SHAPE_NAMES) + 1)
    assert W.world_root(smoke, tmp_path) != W.world_root(W.world_spec("smoke", seed=2), tmp_path)
    assert W.world_root(smoke, tmp_path).parent == tmp_path / "world"
    monkeypatch.setenv("STLIB_CACHE", str(tmp_path / "env"))
    assert W.world_cache_dir() == tmp_path / "env"
    assert W.world_root(smoke).parent == tmp_path / "env" / "world"
    monkeypatch.delenv("STLIB_CACHE")
    default = W.world_cache_dir()
    assert default.name == ".cache" and (default.parent / "stlib" / "data" / "world.py").is_file()


def test_categories_differ_in_shape():
    """Every pair of shapes has IoU < 0.8 even after the best of 24 relative rotations."""
    size, rots = 48, np.arange(24) * (2 * math.pi / 24)

    def masks(inside, angles):
        out = np.zeros((len(angles), size * size), np.float32)
        for i, a in enumerate(angles):
            y0, x0, alpha = shapes.rasterize(inside, size / 2, size / 2, size / 2 - 2, 1.0, a, size, size)
            m = np.zeros((size, size), bool)
            m[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]] = alpha >= 0.5
            out[i] = m.ravel()
        return out

    upright = np.concatenate([masks(f, [0.0]) for f in shapes.SHAPES.values()])
    rotated = np.stack([masks(f, rots) for f in shapes.SHAPES.values()])  # (shape, rotation, pixels)
    assert (upright.sum(1) > 0.1 * size * size).all()
    inter = np.einsum("ap,brp->abr", upright, rotated)
    union = upright.sum(1)[:, None, None] + rotated.sum(2)[None] - inter
    iou = (inter / union).max(axis=2)
    np.fill_diagonal(iou, 0)
    worst = np.unravel_index(iou.argmax(), iou.shape)
    names = shapes.SHAPE_NAMES
    assert iou.max() < 0.8, (names[worst[0]], names[worst[1]], float(iou.max()))


def test_shapes_fit_unit_disc():
    g = np.linspace(-1.5, 1.5, 301, dtype=np.float32)
    x, y = np.meshgrid(g, g)
    outside = np.hypot(x, y) > 1.0
    for name, inside in shapes.SHAPES.items():
        assert not (inside(x, y) & outside).any(), name


def test_scene_rendering_is_pure():
    spec = W.world_spec("smoke")
    a, b = W.render_scene(spec, "detection/train", 5), W.render_scene(spec, "detection/train", 5)
    np.testing.assert_array_equal(a.image, b.image)
    c = W.render_scene(spec, "pools/scenes", 5)
    assert not np.array_equal(a.image, c.image)
    image, label = W.render_object_image(spec, "classification/train", 43)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and label == 43 % spec.num_cls_categories
