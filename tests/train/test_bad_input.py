"""A run on a COCO folder with bad entries: errors name the problem before work, or the run counts its skips."""
import json
import shutil
import textwrap

import pytest

from stlib.data.coco import DataError
from stlib.data.world import ensure_world
from tests.conftest import SMOKE, run_python


def make_folder(tmp_path, *, missing=False, unknown_cat=False):
    """A copy of the smoke world's train split as a user's COCO folder, with problems planted."""
    root = ensure_world("smoke", 0) / "detection"
    ann = json.loads((root / "annotations/train.json").read_text())
    images = tmp_path / "images"
    shutil.copytree(root / "train/images", images)
    a0, a1, a2 = ann["annotations"][:3]
    w = next(i for i in ann["images"] if i["id"] == a0["image_id"])["width"]
    a0["bbox"] = [w - 5, 2, 30, 10]          # partly outside: clipped and counted
    a1["bbox"] = [3, 3, 0, 7]                # zero area: dropped and counted
    a2["bbox"] = [w + 10, 2, 5, 5]           # entirely outside: dropped and counted
    empty = ann["images"][-1]["id"]          # an image with no boxes: kept and counted
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] != empty]
    corrupt = ann["images"][-2]["file_name"]  # a corrupt file: skipped and counted
    (images / corrupt).write_bytes(b"not a png at all")
    if missing:
        (images / ann["images"][0]["file_name"]).unlink()
    if unknown_cat:
        ann["annotations"][5]["category_id"] = 999
    (tmp_path / "train.json").write_text(json.dumps(ann))
    return tmp_path / "train.json", images


def test_bad_entries_are_counted_and_reported(tmp_path):
    ann, images = make_folder(tmp_path)
    val = ensure_world("smoke", 0) / "detection"
    code = textwrap.dedent(f"""
        import sys
        from stlib.cli import main
        sys.exit(main(["train", {SMOKE!r}, "--direct", "--quiet", "--outputs", {str(tmp_path / 'out')!r},
                       "--set", "data.source=coco", "--set", "data.train_ann={ann}",
                       "--set", "data.train_images={images}", "--set", "data.val_ann={val / 'annotations/val.json'}",
                       "--set", "data.val_images={val / 'val/images'}", "--set", "train.steps=2", "--set", "train.warmup_steps=1",
                       "--set", "train.eval_every=2"]))
    """)
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp_path / "out/runs").iterdir())
    stats = json.loads((run / "metrics.json").read_text())["data_stats"]["train"]
    assert stats["boxes_clipped"] >= 1 and stats["boxes_dropped_zero_area"] >= 1
    assert stats["boxes_dropped_outside"] >= 1 and stats["images_without_boxes"] >= 1
    assert stats["images_corrupt"] == 1
    assert "images_corrupt=1" in proc.stdout  # the run reports what it skipped


@pytest.mark.parametrize("problem,match", [("missing", "missing|not found|does not exist"),
                                           ("unknown_cat", "999")])
def test_fatal_problems_are_errors_naming_them(tmp_path, problem, match):
    from stlib.data.coco import CocoSource
    ann, images = make_folder(tmp_path, **{problem: True})
    with pytest.raises(DataError, match=match):
        CocoSource(ann, images)


def test_lazy_decoding_skips_and_counts_a_corrupt_image(tmp_path):
    """Large datasets are decoded per batch: a corrupt file is replaced by the next example and counted."""
    from stlib.data.coco import CocoSource
    from stlib.data.pipeline import DetectionData
    ann, images = make_folder(tmp_path)
    src = CocoSource(ann, images)
    data = DetectionData(src, 64, max_boxes=8, cache_images=False)
    n = len(src.records)
    batches = [data.train_batch(s, 4, seed=0) for s in range(n // 4)]
    assert all(b["image"].shape == (4, 64, 64, 3) for b in batches)
    assert src.stats["images_corrupt"] >= 1
    seen = {int(i) for b in batches for i in b["image_id"]}
    corrupt_id = src.records[-2].image_id  # make_folder corrupts the second-to-last image
    assert corrupt_id not in seen
