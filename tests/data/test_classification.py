"""Classification sources and batches: checked labels, counted corrupt files, (seed, step)-pure batches."""
import json
import shutil

import numpy as np
import pytest

from stlib.data.classification import ClassificationData, ClassificationSource, build_classification_sources
from stlib.data.coco import DataError
from stlib.data.world import ensure_world


@pytest.fixture(scope="module")
def sources():
    ensure_world("smoke", 0, progress=False)
    return build_classification_sources("smoke", 0)


@pytest.fixture(scope="module")
def data(sources):
    return ClassificationData(sources["train"], 32)


def test_world_sources(sources):
    root = ensure_world("smoke", 0, progress=False)
    train, val, pool = sources["train"], sources["val"], sources["pool"]
    with open(root / "classification/train.json") as f:
        raw = json.load(f)
    assert train.categories == raw["categories"] and val.categories == train.categories
    assert [c["index"] for c in train.categories] == list(range(train.num_classes))
    np.testing.assert_array_equal(train.labels, [im["label"] for im in raw["images"]])
    assert train.labels.dtype == np.int32 and len(train) == len(raw["images"])
    for s in (train, val):
        assert s.labels.min() >= 0 and s.labels.max() < s.num_classes
    assert pool.categories == [] and (pool.labels == -1).all() and len(pool) > 0
    assert pool.files == sorted(pool.files)
    img = train.load_image_or_none(0)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    sub = train.subset([3, 1])
    assert sub.files == [train.files[3], train.files[1]] and sub.labels.tolist() == train.labels[[3, 1]].tolist()
    with pytest.raises(DataError, match="outside"):
        train.subset([len(train)])


def _labelled_folder(tmp_path, images=None):
    d = tmp_path / "split" / "images"
    d.mkdir(parents=True)
    from PIL import Image
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    data = {"categories": [{"index": 0, "name": "a"}, {"index": 1, "name": "b"}],
            "images": images if images is not None else [{"file_name": f"{i}.png", "label": i % 2} for i in range(3)]}
    path = tmp_path / "split.json"
    path.write_text(json.dumps(data))
    return path, d


@pytest.mark.parametrize("images, match", [
    ([{"file_name": "0.png"}], r"images\[0\] is missing 'label'"),
    ([{"label": 0}], r"images\[0\] is missing 'file_name'"),
    ([{"file_name": "0.png", "label": 0}, {"file_name": "1.png", "label": 2}], r"images\[1\] \(1.png\) has label=2"),
    ([{"file_name": "nope.png", "label": 0}], r"images\[0\] file_name='nope.png'.*not found"),
])
def test_bad_json_entries_are_named(tmp_path, images, match):
    path, d = _labelled_folder(tmp_path, images)
    with pytest.raises(DataError, match=match) as e:
        ClassificationSource(path, d)
    assert str(path) in str(e.value)


def test_bad_json_files(tmp_path):
    path, d = _labelled_folder(tmp_path)
    src = ClassificationSource(path)  # images_dir defaults to <stem>/images
    assert len(src) == 3 and src.labels.tolist() == [0, 1, 0] and src.name == "split"
    with pytest.raises(DataError, match="not found.*missing.json"):
        ClassificationSource(tmp_path / "missing.json", d)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        ClassificationSource(path, d)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="missing required key 'categories'"):
        ClassificationSource(path, d)


def test_pool_skips_and_counts_bad_files(tmp_path, sources):
    pool = sources["pool"]
    d = tmp_path / "images"
    d.mkdir()
    for f in pool.files[:4]:
        shutil.copy(f, d)
    (d / "zzz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (d / "notes.txt").write_text("not an image")
    src = ClassificationSource(None, d)
    assert len(src) == 5 and src.stats["files_ignored"] == 1
    data = ClassificationData(src, 16)
    assert len(data) == 4 and src.stats["images_corrupt"] == 1
    b = data.train_batch(0, 8, seed=0)
    assert b["image"].shape == (8, 16, 16, 3) and (b["label"] == -1).all() and (b["index"] < 4).all()
    # Decoded lazily, the corrupt image is met in a batch: replaced by the next one and counted.
    lazy_src = ClassificationSource(None, d)
    lazy = ClassificationData(lazy_src, 16, cache_images=False)
    assert len(lazy) == 5
    b = lazy.train_batch(0, 5, seed=0)
    assert (b["index"] != 4).all() and lazy_src.stats["images_corrupt"] == 1


def test_shapes_and_dtypes(data, sources):
    b = data.train_batch(0, 6, seed=0)
    assert b["image"].shape == (6, 32, 32, 3) and b["image"].dtype == np.uint8
    assert b["label"].dtype == np.int32 and b["index"].dtype == np.int32 and b["example_valid"].all()
    np.testing.assert_array_equal(b["label"], sources["train"].labels[b["index"]])
    small = ClassificationData(sources["train"], 16, cache_images=False).train_batch(0, 2, seed=0)
    assert small["image"].shape == (2, 16, 16, 3)


def test_batches_are_a_pure_function_of_step(data, sources):
    a = data.train_batch(7, 8, seed=3)
    b = ClassificationData(sources["train"], 32).train_batch(7, 8, seed=3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["index"], data.train_batch(8, 8, seed=3)["index"])
    assert not np.array_equal(a["index"], data.train_batch(7, 8, seed=4)["index"])
    n, bs = len(data), 8  # one epoch visits every example once
    seen = np.concatenate([data.train_batch(s, bs, seed=1)["index"] for s in range(n // bs)])
    assert len(set(seen.tolist())) == len(seen) == (n // bs) * bs


def test_process_slices_concatenate(data):
    full = data.train_batch(3, 8, seed=2)
    parts = [data.train_batch(3, 8, seed=2, process_index=p, process_count=2) for p in range(2)]
    for k in full:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once(sources, process_count):
    data = ClassificationData(sources["val"], 32)
    bs = 16 if len(data) % 16 else 12  # so the last batch needs padding
    assert len(data) % bs
    seen, pads = [], 0
    for p in range(process_count):
        for b in data.eval_batches(bs, p, process_count):
            assert b["image"].shape == (bs // process_count, 32, 32, 3)
            seen += b["index"][b["example_valid"]].tolist()
            pads += int((~b["example_valid"]).sum())
            np.testing.assert_array_equal(b["label"][b["example_valid"]],
                                          sources["val"].labels[b["index"][b["example_valid"]]])
    assert sorted(seen) == list(range(len(data)))
    assert pads == -len(data) % bs
