"""The streaming training input (`TrainBatches`) on a COCO-format folder made here: threads build
batches in step order, a stream resumed at step k continues one stopped there, the input position
saved with a checkpoint refuses a resume whose data changed, and a training run killed after a
checkpoint resumes with the batches and losses of an uninterrupted one."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from stlib import config
from stlib.data.coco import CocoSource, DataError
from stlib.data.pipeline import DetectionData, TrainBatches, check_input_state, input_state, input_workers
from stlib.train.checkpoints import Checkpoints
from tests.conftest import SMOKE, random_pixels

SIZES = [(72, 96), (96, 64), (80, 80), (60, 100), (100, 70), (64, 64), (90, 50), (50, 90), (77, 66), (66, 77),
         (88, 99), (99, 88)]


def make_coco_folder(root, sizes=SIZES, corrupt=(3,), categories=2):
    """A COCO-format train split of JPEGs (image `corrupt` unreadable) with 1-2 boxes each, of
    `categories` classes."""
    images, anns = [], []
    (root / "images").mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        name = f"{i:04d}.jpg"
        if i in corrupt:
            (root / "images" / name).write_bytes(b"not a jpeg")
        else:
            Image.fromarray(random_pixels(h, w, i)).save(root / "images" / name, quality=90)
        images.append({"id": 100 + i, "file_name": name, "height": h, "width": w})
        for k in range(1 + i % 2):
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": 1 + (i + k) % categories,
                         "bbox": [2 + 3 * k, 4 + k, w / 3, h / 4], "area": w * h / 12, "iscrowd": 0})
    cats = [{"id": c, "name": f"class {c}"} for c in range(1, categories + 1)]
    (root / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_coco_folder(tmp_path_factory.mktemp("coco"))


def _streamed(folder):
    # cache_images=False: every image decoded when its batch is built, as at paper scale
    return DetectionData(CocoSource(folder / "train.json", folder / "images"), 64, max_boxes=4, cache_images=False)


def _ids(batches):
    return [b["image_id"].tolist() for b in batches]


def test_threads_give_the_serial_batches_in_order(folder):
    data = _streamed(folder)
    serial = [data.train_batch(s, 4, 7) for s in range(9)]  # 9 x 4 > 11 readable images: epochs wrap
    threaded = list(TrainBatches(data, 4, 7, 0, 9, workers=3))
    assert _ids(threaded) == _ids(serial)
    for a, b in zip(serial, threaded):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert 103 not in {i for ids in _ids(serial) for i in ids}  # the corrupt image is skipped...
    assert data.source.stats["images_corrupt"] >= 1  # ...and counted


def test_a_stream_resumed_at_step_k_continues_the_stopped_one(folder):
    whole = _ids(TrainBatches(_streamed(folder), 4, 3, 0, 8, workers=3))
    first = []
    for b in TrainBatches(_streamed(folder), 4, 3, 0, 8, workers=3):  # stopped with batches in flight
        first.append(b)
        if len(first) == 5:
            break
    rest = TrainBatches(_streamed(folder), 4, 3, 5, 8, workers=2)  # another process, fewer threads
    assert _ids(first) + _ids(rest) == whole


def test_process_slices_make_the_global_batch(folder):
    data = _streamed(folder)
    parts = [list(TrainBatches(data, 4, 1, 0, 3, process_index=i, process_count=2, workers=2)) for i in (0, 1)]
    assert [a + b for a, b in zip(_ids(parts[0]), _ids(parts[1]))] == _ids(TrainBatches(data, 4, 1, 0, 3, workers=1))


def test_input_state_names_what_changed(folder, tmp_path):
    data = _streamed(folder)
    saved = input_state(data, 5, 4, 0)
    # not cached, so the corrupt image is found when a batch meets it, not left out up front
    assert saved["next_step"] == 5 and saved["streams"]["data"]["examples"] == 12
    check_input_state(saved, input_state(_streamed(folder), 5, 4, 0), "here")  # same folder, read again
    with pytest.raises(DataError, match="next_step 5 -> 6"):
        check_input_state(saved, input_state(data, 6, 4, 0), "here")
    with pytest.raises(DataError, match="seed"):
        check_input_state(saved, input_state(data, 5, 4, 1), "here")
    other = make_coco_folder(tmp_path / "fewer", SIZES[:-1])  # one image less
    with pytest.raises(DataError, match=r"resuming x: .*data\.examples 12 -> 11"):
        check_input_state(saved, input_state(_streamed(other), 5, 4, 0), "resuming x")


def test_checkpoints_keep_the_input_position_of_each_kept_step(tmp_path):
    import jax.numpy as jnp
    ck = Checkpoints(tmp_path / "checkpoints", keep=2)
    for step in (2, 4, 6):
        ck.save(step, {"w": jnp.full(3, float(step))}, {"next_step": step})
    assert ck.input_state(6) == {"next_step": 6} and ck.input_state(4) == {"next_step": 4}
    assert ck.input_state(2) is None  # deleted with its checkpoint
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "input").iterdir()) == ["4.json", "6.json"]
    ck.close()


def test_input_workers(monkeypatch):
    assert input_workers({"STLIB_INPUT_WORKERS": "3"}) == 3
    assert 1 <= input_workers({}) <= 32
    with pytest.raises(ValueError, match="STLIB_INPUT_WORKERS='none'"):
        input_workers({"STLIB_INPUT_WORKERS": "none"})


class _Killed(Exception):
    pass


def test_a_killed_run_on_a_coco_folder_resumes_with_the_same_batches(folder, tmp_path, monkeypatch):
    """The engine end to end: smoke detector on the folder, images decoded by 3 threads as they are
    needed, stopped after its step-3 checkpoint, resumed; same batches and losses as one run."""
    from stlib.experiments.assemble import build_task
    from stlib.train import loop

    monkeypatch.setenv("STLIB_INPUT_WORKERS", "3")
    original_append = loop.MetricsLog.append

    def params(root):
        return config.load_params(SMOKE, [
            "data.source=coco", f"data.train_ann={root / 'train.json'}", f"data.train_images={root / 'images'}",
            f"data.val_ann={root / 'train.json'}", f"data.val_images={root / 'images'}",
            "data.max_val_images=4", "train.steps=6", "train.checkpoint_every=3", "train.eval_every=6"])

    def run(root, run_dir, kill_after=None):
        task = build_task(params(root), progress=False)
        task.train_data.streams["human"]._cache.clear()  # nothing held: decoded as the batches are built
        seen = []
        inner = task.train_data.train_batch

        def train_batch(step, *a):
            b = inner(step, *a)
            seen.append((step, b["human"]["image_id"].tolist()))
            return b
        task.train_data.train_batch = train_batch

        def dying_append(self, entry):
            original_append(self, entry)
            if entry["kind"] == "train" and entry["step"] == kill_after:
                raise _Killed
        monkeypatch.setattr(loop.MetricsLog, "append", dying_append)
        try:
            loop.train_and_evaluate(task, run_dir, progress=False)
        except _Killed:
            pass
        trained = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return dict(seen), [(e["step"], e["loss"]) for e in trained if e["kind"] == "train"]

    whole_batches, whole_losses = run(folder, tmp_path / "a")
    _, killed_losses = run(folder, tmp_path / "b", kill_after=4)
    assert [s for s, _ in killed_losses] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "b/checkpoints/input/3.json").read_text())["next_step"] == 3
    shutil.copytree(tmp_path / "b", tmp_path / "b-stopped")
    resumed_batches, resumed_losses = run(folder, tmp_path / "b")
    assert sorted(resumed_batches) == [3, 4, 5]  # the resumed run starts at the checkpoint's position
    assert {s: whole_batches[s] for s in (3, 4, 5)} == resumed_batches
    assert [s for s, _ in resumed_losses] == [1, 2, 3, 4, 5, 6]
    assert [l for _, l in resumed_losses] == pytest.approx([l for _, l in whole_losses], rel=1e-6)

    # the folder lost an image while a run on it was stopped (a copy of the stopped run, on a copy of
    # the folder): its resume is refused, naming the change, before any step
    changed = tmp_path / "c"
    shutil.copytree(folder, changed)
    shutil.copytree(tmp_path / "b-stopped", tmp_path / "c-run")
    gt = json.loads((changed / "train.json").read_text())
    gt["images"] = gt["images"][:-1]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] != 111]
    (changed / "train.json").write_text(json.dumps(gt))
    with pytest.raises(DataError, match=r"from step 3: the training input differs .*human\.examples 11 -> 10"):
        run(changed, tmp_path / "c-run")
