"""A paper-scale dry run (issue 20): the paper presets built at full size with abstract shapes, so
nothing paper-sized is allocated; their training input on a COCO-format folder made here; and one
train step of the paper preset shrunk to smoke size, through the same code a pod runs.

The folder stands in for COCO 2017 (`data.source=coco`); Rand Init stands in for the imported
ImageNet weights, which CI does not have."""
import json

import jax
import numpy as np
import pytest

from stlib import config as cfg
from stlib.data.pipeline import TrainBatches
from stlib.experiments.assemble import build_task
from stlib.train.loop import train_and_evaluate
from stlib.train.state import count_params
from tests.data.test_stream import make_coco_folder

# COCO-shaped images (640 px long side)
SIZES = [(480, 640), (640, 480), (427, 640), (640, 427), (512, 640), (640, 512)]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco_folder(tmp_path_factory.mktemp("coco"), SIZES, corrupt=(), categories=80)  # COCO's 80


def _on_folder(folder, *sets):
    return ["data.source=coco", f"data.train_ann={folder / 'train.json'}", f"data.train_images={folder / 'images'}",
            f"data.val_ann={folder / 'train.json'}", f"data.val_images={folder / 'images'}", "model.init=rand", *sets]


def _abstract_batch(task) -> dict:
    """The global batch's shapes: the streams' examples with their share of the batch as leading dim."""
    out = {}
    for name, data in task.train_data.streams.items():
        one = data.train_batch(0, 1, 0)
        out[name] = {k: jax.ShapeDtypeStruct((task.train_data.sizes[name],) + v.shape[1:], v.dtype)
                     for k, v in one.items()}
    return out


# Sizes from the source libraries, for COCO's 80 classes:
# - ResNet-50 RetinaNet: torchvision's retinanet_resnet50_fpn has 34,014,999 parameters with 91
#   classes; 11 fewer classes drop 3*3*256*9*11 + 9*11 = 228,195: 33.787M (its frozen BatchNorm
#   keeps scale and offset as buffers, not parameters, so ours counts about 0.1M more).
# - EfficientNet-B7 backbone: keras' EfficientNetB7 has 66,658,687 weights with its top; without the
#   1000-way classifier (2,561,000) and the 1x1 head convolution with its BatchNorm (1,648,640):
#   62.449M (keras counts BatchNorm's moving statistics too, which flax keeps out of params).
@pytest.mark.parametrize("sets, part, expected_m", [
    ([], "backbone", 62.449),                                                   # Sec. 3.2: B7, bfloat16
    (["model.backbone=resnet50", "model.dtype=float32"], None, 33.787),         # Table 4's ResNet-50
])
def test_the_paper_train_step_traces_at_full_size(coco, sets, part, expected_m):
    """The whole train step (augmentation, anchors, focal loss, the optimizer) at 640 px and batch
    256, traced with abstract shapes: a shape error at paper size shows here, not on a pod."""
    p = cfg.load_params("params/paper/retinanet.yaml", _on_folder(coco, *sets))
    assert (p.data.image_size, p.train.batch_size) == (640, 256)
    task = build_task(p, progress=False)
    state = jax.eval_shape(task.init_state)
    counted = state.params[part] if part else state.params
    assert count_params(counted) / 1e6 == pytest.approx(expected_m, rel=0.01)
    b = _abstract_batch(task)
    assert b["human"]["image"].shape == (256, 640, 640, 3) and b["human"]["boxes"].shape == (256, 100, 4)
    new_state, metrics = jax.eval_shape(task.train_step, state, b)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state.params) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), state.params)
    assert metrics["loss"].shape == () and metrics["loss"].dtype == np.float32


def test_the_paper_input_on_a_coco_folder(coco):
    """The paper preset's input: 640 px canvases, 100 boxes, the pixels of the files (long side to
    640, so these COCO-sized images are not resized), batches in order from several threads."""
    from PIL import Image
    p = cfg.load_params("params/paper/retinanet.yaml", _on_folder(coco, "train.batch_size=4"))
    task = build_task(p, progress=False)
    batches = list(TrainBatches(task.train_data, 4, 0, 0, 3, workers=3))
    human = [b["human"] for b in batches]
    assert all(h["image"].shape == (4, 640, 640, 3) and h["boxes"].shape == (4, 100, 4) for h in human)
    h = human[0]
    i = int(h["image_id"][0]) - 100
    pixels = np.asarray(Image.open(coco / "images" / f"{i:04d}.jpg").convert("RGB"))
    np.testing.assert_array_equal(h["image"][0, : pixels.shape[0], : pixels.shape[1]], pixels)
    assert (h["image"][0, pixels.shape[0]:] == 0).all() and (h["image"][0, :, pixels.shape[1]:] == 0).all()
    assert [b["human"]["image_id"].tolist() for b in batches] == \
        [task.train_data.train_batch(s, 4, 0)["human"]["image_id"].tolist() for s in range(3)]


def test_one_step_of_the_paper_preset_at_smoke_size(coco, tmp_path):
    """params/paper/retinanet.yaml, shrunk (tiny backbone, 64 px, batch 4), trains one step on the
    folder and evaluates through the engine: bfloat16 compute, the paper's schedule shape."""
    p = cfg.load_params("params/paper/retinanet.yaml", _on_folder(
        coco, "model.backbone=resnet-tiny", "model.fpn_channels=16", "model.head_convs=1", "model.head_channels=16",
        "data.image_size=64", "data.max_boxes=8", "augment.pixel_scale=0.1", "train.batch_size=4", "train.steps=1",
        "train.warmup_steps=0", "train.eval_every=1", "train.checkpoint_every=1", "train.eval_batch_size=4",
        "train.tensorboard=false", "postprocess.pre_nms_top_k=200", "postprocess.max_detections=20"))
    assert p.scale == "paper" and p.model.dtype == "bfloat16"
    result = train_and_evaluate(build_task(p, progress=False), tmp_path / "run", progress=False)
    assert result["status"] == "complete" and result["last_step"] == 1 and result["val_images"] == len(SIZES)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in log] == ["train", "eval", "session"] and np.isfinite(log[0]["loss"])
    assert json.loads((tmp_path / "run/checkpoints/input/1.json").read_text())["next_step"] == 1
