"""Tests for stlib.pseudo.sources: folder, world pool and tfds unlabeled sources, and parse_unlabeled."""

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from stlib.data.coco import CorruptImageError, DataError
from stlib.pseudo.sources import FolderSource, TfdsImageSource, WorldPoolSource, parse_unlabeled


from tests.conftest import png_bytes as _png, random_pixels as _pixels  # noqa: E402


# relative path -> (height, width, seed); a corrupt one is added separately
IMAGES = {"a.png": (6, 7, 1), "b/c.PNG": (5, 5, 2), "b/a.png": (4, 9, 3), "z/y/x.png": (8, 3, 4)}


@pytest.fixture()
def folder(tmp_path):
    for rel, (h, w, seed) in IMAGES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(_png(_pixels(h, w, seed)))
    Image.fromarray(_pixels(10, 12, 5)).save(tmp_path / "b" / "photo.JPG", format="JPEG")
    (tmp_path / "b" / "broken.png").write_bytes(np.random.default_rng(0).bytes(64))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "labels.csv").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(_png(_pixels(2, 2, 0)))
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "thumb.png").write_bytes(_png(_pixels(2, 2, 0)))
    return tmp_path


KEYS = ["a.png", "b/a.png", "b/broken.png", "b/c.PNG", "b/photo.JPG", "z/y/x.png"]


def test_folder_listing(folder):
    src = FolderSource(folder)
    assert len(src) == 6
    assert [src.key(i) for i in range(len(src))] == KEYS
    assert src.stats == {"images": 6, "non_image_files": 2, "images_corrupt": 0}
    assert src.non_image_examples == ["b/labels.csv", "notes.txt"]
    assert src.name == f"folder:{folder.as_posix()}" and src.spec == src.name
    assert src.hidden_gt is None and src.hidden_labels is None
    with pytest.raises(IndexError, match="outside 0..5"):
        src.key(6)


def test_folder_images_in_order_with_corrupt(folder, caplog):
    src = FolderSource(folder)
    with caplog.at_level(logging.WARNING):
        got = list(src.images(0, len(src), workers=3))
    assert [i for i, _ in got] == list(range(6))
    assert got[2][1] is None
    assert src.stats["images_corrupt"] == 1
    assert "broken.png" in caplog.text
    for i, image in got:
        if KEYS[i] in IMAGES:
            h, w, seed = IMAGES[KEYS[i]]
            np.testing.assert_array_equal(image, _pixels(h, w, seed))
    jpg = got[4][1]
    assert jpg.dtype == np.uint8 and jpg.shape == (10, 12, 3)
    # a sub-range, single-threaded
    assert [i for i, _ in src.images(3, 5, workers=1)] == [3, 4]
    with pytest.raises(CorruptImageError, match="broken.png"):
        src.load_image(2)
    assert src.load_image_or_none(2) is None
    assert src.stats["images_corrupt"] == 2
    with pytest.raises(IndexError):
        list(src.images(4, 7))


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'} does not exist"):
        FolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'empty'} holds no image file"):
        FolderSource(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"holds no image file.*1 non-image file\(s\), e.g. \['a.txt'\]"):
        FolderSource(tmp_path / "text")


def test_parse_unlabeled_folder_forms(folder):
    src = parse_unlabeled(f"folder:{folder}")
    assert isinstance(src, FolderSource) and len(src) == 6 and src.spec == f"folder:{folder}"
    plain = parse_unlabeled(str(folder))
    assert isinstance(plain, FolderSource) and plain.spec == str(folder)
    assert [plain.key(i) for i in range(6)] == KEYS


@pytest.mark.parametrize("spec, match", [
    ("", "empty"),
    ("world:classification", "unknown world pool 'classification'"),
    ("tfds:imagenet2012", r"need 'tfds:<name>:<split>'"),
    ("s3:bucket/images", "unknown kind 's3'"),
    ("folder:", "names no folder"),
])
def test_parse_unlabeled_errors(spec, match):
    with pytest.raises(DataError, match=match) as e:
        parse_unlabeled(spec)
    assert "folder:<path>" in str(e.value) and "tfds:<name>:<split>" in str(e.value)


@pytest.fixture(scope="module")
def smoke_world():
    from stlib.data.world import ensure_world
    return ensure_world("smoke", 0, progress=False)


def test_world_scenes_pool(smoke_world):
    src = parse_unlabeled("world:scenes", world_scale="smoke", world_seed=0)
    assert isinstance(src, WorldPoolSource)
    assert src.name == "world-smoke/pools/scenes" and src.spec == "world:scenes"
    assert len(src) == 16 and src.stats["non_image_files"] == 0
    assert src.hidden_gt == smoke_world / "hidden" / "scenes.json" and src.hidden_gt.is_file()
    assert src.hidden_labels is None
    gt = json.loads(src.hidden_gt.read_text())
    by_name = {im["file_name"]: im for im in gt["images"]}
    for i in range(len(src)):
        assert by_name[src.key(i)]["id"] == i + 1  # store exports use id = index + 1
    (i, image), = src.images(0, 1)
    assert image.shape == (by_name[src.key(0)]["height"], by_name[src.key(0)]["width"], 3)


def test_world_objects_pool(smoke_world):
    src = WorldPoolSource(smoke_world, "objects", scale="smoke", seed=3)
    assert src.name == "world-smoke-s3/pools/objects"
    assert len(src) == 16 and src.hidden_gt is None
    labels = json.loads(src.hidden_labels.read_text())
    assert [im["file_name"] for im in labels["images"]] == [src.key(i) for i in range(len(src))]
    with pytest.raises(DataError, match="unknown world pool"):
        WorldPoolSource(smoke_world, "train")


# ----------------------------------------------------------------------------- tfds

N_TFDS = 7
CORRUPT_TFDS = 3


def _tfds_image(i):
    return _pixels(4 + i, 5, 100 + i)


@pytest.fixture(scope="module")
def tfds_dirs(tmp_path_factory):
    """A real (tiny) prepared tfds dataset, so num_examples and split slicing are tfds' own: prepared
    as TFRecord (tfds' default) and as array_record (random access)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    tfds.disable_progress_bar()

    class StlibTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        # A one-part module name keeps tfds from resolving the class's package with
        # `importlib_resources`, which this environment does not install.
        __module__ = "stlib_tiny_images"

        def _info(self):
            # disable_shuffling: examples stay in generation order, so index i is example i.
            return tfds.core.DatasetInfo(builder=self, disable_shuffling=True, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(), "photo": tfds.features.Image(),
                "label": tfds.features.ClassLabel(num_classes=3)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(N_TFDS)}

        def _generate_examples(self, n):
            for i in range(n):
                data = b"not an image" if i == CORRUPT_TFDS else _png(_tfds_image(i))
                yield i, {"image": io.BytesIO(data), "photo": _pixels(2, 3, i), "label": i % 3}

    data_dir = tmp_path_factory.mktemp("tfds")
    StlibTinyImages(data_dir=str(data_dir)).download_and_prepare()
    random_access_dir = tmp_path_factory.mktemp("tfds-array-record")  # the same, prepared for random access
    StlibTinyImages(data_dir=str(random_access_dir), file_format="array_record").download_and_prepare()
    return data_dir, random_access_dir


@pytest.fixture(scope="module")
def tfds_dir(tfds_dirs):
    return tfds_dirs[0]


def test_tfds_source_reads_an_array_record_split_one_image_at_a_time(tfds_dirs, monkeypatch):
    """Prepared as array_record, `load_image` reads the one example from disk, no tf.data pipeline."""
    import tensorflow_datasets as tfds
    tfds_dir, random_access_dir = tfds_dirs
    src = parse_unlabeled("tfds:stlib_tiny_images:train", tfds_data_dir=str(random_access_dir))
    assert src.random_access and not TfdsImageSource("stlib_tiny_images", "train", tfds_dir).random_access

    def no_pipeline(*a, **k):
        raise AssertionError("random access builds no tf.data pipeline")
    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", no_pipeline)
    for i in (6, 0, 2):
        np.testing.assert_array_equal(src.load_image(i), _tfds_image(i))
    assert src.load_image_or_none(CORRUPT_TFDS) is None and src.stats["images_corrupt"] == 1
    with pytest.raises(DataError, match=r"prepared without random access \(tfrecord files\).*--file_format=array_record"):
        TfdsImageSource("stlib_tiny_images", "train", tfds_dir, random_access=True)


def test_tfds_source(tfds_dir):
    src = parse_unlabeled("tfds:stlib_tiny_images:train", tfds_data_dir=str(tfds_dir))
    assert isinstance(src, TfdsImageSource)
    assert src.name == "tfds:stlib_tiny_images:train" and src.spec == "tfds:stlib_tiny_images:train"
    assert len(src) == N_TFDS and src.stats == {"images": N_TFDS, "non_image_files": 0, "images_corrupt": 0}
    assert src.key(5) == "train/5"
    got = list(src.images(2, 6, workers=2))
    assert [i for i, _ in got] == [2, 3, 4, 5]
    for i, image in got:
        if i == CORRUPT_TFDS:
            assert image is None
        else:
            np.testing.assert_array_equal(image, _tfds_image(i))
    assert src.stats["images_corrupt"] == 1
    np.testing.assert_array_equal(src.load_image(6), _tfds_image(6))
    with pytest.raises(CorruptImageError, match="tfds:stlib_tiny_images:train image train/3"):
        src.load_image(CORRUPT_TFDS)
    assert list(src.images(4, 4)) == []

    other = TfdsImageSource("stlib_tiny_images", "train", tfds_dir, image_key="photo")
    np.testing.assert_array_equal(other.load_image(1), _pixels(2, 3, 1))


def test_tfds_errors(tfds_dir, tmp_path):
    with pytest.raises(DataError, match=r"'stlib_tiny_images' split 'train'.*is not prepared.*"
                                        r"tfds build stlib_tiny_images --data_dir " + str(tmp_path)):
        TfdsImageSource("stlib_tiny_images", "train", tmp_path)
    with pytest.raises(DataError, match=r"no such split; the prepared splits are \['train'\]"):
        TfdsImageSource("stlib_tiny_images", "test", tfds_dir)
    with pytest.raises(DataError, match=r"no image feature 'label'; its image features are \['image', 'photo'\]"):
        TfdsImageSource("stlib_tiny_images", "train", tfds_dir, image_key="label")
    with pytest.raises(DataError, match="slicing is not supported"):
        TfdsImageSource("stlib_tiny_images", "train[:3]", tfds_dir)
    with pytest.raises(DataError, match="'no_such_dataset_xyz'.*not a known tfds dataset"):
        TfdsImageSource("no_such_dataset_xyz", "train", tmp_path)
