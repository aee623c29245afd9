"""Params that were accepted but wrong (issue 14): a file without a scale, a scale that contradicts
its data, and values out of range are one-line errors naming the file or the dotted key."""
import pytest
import yaml

from stlib import config as cfg
from tests.conftest import REPO

SMOKE = "params/smoke/retinanet.yaml"
PRESETS = sorted(p for p in (REPO / "params").glob("*/*.yaml") if "base" not in yaml.safe_load(p.read_text()))


def one_line_error(path, overrides=()) -> str:
    with pytest.raises(cfg.ParamsError) as info:
        cfg.load_params(path, list(overrides))
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_loads_and_names_its_scale(path):
    assert cfg.load_params(path).scale == path.parent.name          # params/<scale>/...


def test_study_specs_take_their_scale_from_their_base():
    specs = sorted(p for p in (REPO / "params").glob("*/*.yaml") if "base" in yaml.safe_load(p.read_text()))
    assert specs
    for spec in specs:
        base = REPO / yaml.safe_load(spec.read_text())["base"]
        assert cfg.load_params(base).scale == spec.parent.name, spec


def test_an_empty_file_is_an_error_naming_it(tmp_path):
    f = tmp_path / "empty.yaml"
    f.write_text("")
    msg = one_line_error(f)
    assert str(f) in msg and "empty params file" in msg and "scale: smoke|mini|paper" in msg
    f.write_text("# only a comment\n")
    assert str(f) in one_line_error(f)


def test_a_file_without_scale_is_an_error_naming_it(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("name: mine\ntrain:\n  steps: 3\n  warmup_steps: 1\n")
    msg = one_line_error(f)
    assert str(f) in msg and "no scale" in msg
    assert cfg.load_params(f, ["scale=mini"]).scale == "mini"   # said on the command line: fine
    f.write_text("scale: smoke\nname: mine\ndata: {world_scale: smoke}\n")
    assert cfg.load_params(f).scale == "smoke"


def test_defaults_alone_need_no_scale():
    assert cfg.load_params(None).scale == "" and cfg.Params().scale == ""
    assert cfg.load_params(None, ["train.steps=10", "train.warmup_steps=1"]).train.steps == 10


def test_a_resolved_params_file_written_before_scale_still_loads_with_its_run_id(tmp_path):
    p = cfg.load_params(None, ["name=old-run"])
    text = cfg.dump_params(p)
    assert "scale: ''" in text
    f = tmp_path / "params.yaml"
    f.write_text(text.replace("scale: ''\n", ""))   # what runs recorded before the field hold
    assert cfg.run_id(cfg.load_params(f)) == cfg.run_id(p)
    data = yaml.safe_load(text)
    del data["scale"], data["data"]["image_size"]     # not a whole dump: a default would stand in
    f.write_text(yaml.safe_dump(data))
    assert "no scale" in one_line_error(f)


def test_a_dumped_preset_keeps_its_scale_and_run_id(tmp_path):
    p = cfg.load_params(SMOKE)
    f = tmp_path / "params.yaml"
    f.write_text(cfg.dump_params(p))
    q = cfg.load_params(f)
    assert q.scale == "smoke" and cfg.run_id(q) == cfg.run_id(p)


@pytest.mark.parametrize("path,overrides,words", [
    (SMOKE, ["scale=huge"], ["scale must be smoke|mini|paper", "'huge'"]),
    (SMOKE, ["data.world_scale=mini"], ["scale is smoke", "data.world_scale is 'mini'"]),
    (SMOKE, ["scale=paper"], ["scale is paper", "data.source is world"]),
    ("params/paper/retinanet.yaml", ["data.source=world"], ["scale is paper", "data.source is world"]),
    ("params/mini/retinanet.yaml", ["data.world_scale=paper", "scale=paper"], ["data.world_scale must be smoke|mini"]),
])
def test_scale_contradicting_the_data_is_an_error(path, overrides, words):
    msg = one_line_error(path, overrides)
    assert all(w in msg for w in words), msg


def test_a_small_scale_may_read_a_coco_folder():
    p = cfg.load_params(SMOKE, ["data.source=coco", "data.train_ann=a.json", "data.train_images=im",
                                "data.val_ann=b.json", "data.val_images=im"])
    assert (p.scale, p.data.source) == ("smoke", "coco")
    assert cfg.load_params("params/paper/retinanet.yaml", ["data.source=coco", "data.train_ann=a.json",
                                                          "data.train_images=im", "data.val_ann=b.json",
                                                          "data.val_images=im"]).scale == "paper"


@pytest.mark.parametrize("override", [
    "data.image_size=0", "data.image_size=-64", "data.max_boxes=0", "data.max_val_images=-1",
    "model.fpn_channels=0", "model.head_channels=0", "model.head_convs=0", "model.min_level=8",
    "model.min_level=0", "model.num_scales=0", "model.aspect_ratios=[]", "model.aspect_ratios=[1.0, -2.0]",
    "model.anchor_size=0", "model.bn_momentum=1.0", "model.bn_momentum=-0.1", "model.bn_epsilon=0",
    "model.backbone_bn_epsilon=0", "loss.focal_alpha=1.5", "loss.focal_gamma=-1", "loss.huber_delta=0",
    "loss.box_loss_weight=-1", "loss.match_threshold=0", "loss.match_threshold=1.5",
    "loss.unmatched_threshold=0.6", "loss.unmatched_threshold=0", "postprocess.pre_nms_top_k=0",
    "postprocess.score_threshold=1.0", "postprocess.score_threshold=-0.1", "postprocess.nms_iou_threshold=0",
    "postprocess.nms_iou_threshold=1.5", "postprocess.max_detections=0", "postprocess.soft_nms_sigma=0",
    "train.batch_size=0", "train.steps=0", "train.base_lr=0", "train.base_lr=-0.1", "train.base_lr=.nan",
    "train.warmup_steps=-1", "train.warmup_steps=6", "train.warmup_init_lr=-0.001", "train.momentum=1.0",
    "train.weight_decay=-1e-4", "train.grad_clip_norm=-1", "train.log_every=0", "train.eval_every=0",
    "train.checkpoint_every=0", "train.keep_checkpoints=0", "train.early_stop_patience=-1",
    "train.eval_batch_size=0", "pretrain.image_size=0",
])
def test_out_of_range_values_are_one_line_errors_naming_key_and_value(override):
    key, raw = override.split("=", 1)
    msg = one_line_error(SMOKE, [override])
    value = yaml.safe_load(raw)
    value = repr(tuple(value)) if isinstance(value, list) else str(float(value) if isinstance(value, str) else value)
    assert msg.startswith(key) and f"got {value}" in msg, msg


@pytest.mark.parametrize("override", [
    "data.max_val_images=0", "train.grad_clip_norm=0", "train.early_stop_patience=0", "train.warmup_init_lr=0",
    "train.warmup_steps=0", "loss.unmatched_threshold=0.4", "loss.match_threshold=1.0", "loss.focal_alpha=1",
    "loss.focal_gamma=0", "loss.box_loss_weight=0", "postprocess.score_threshold=0", "train.momentum=0",
    "postprocess.nms_iou_threshold=1", "model.bn_momentum=0", "model.backbone_bn_epsilon=1e-5",
    "model.min_level=7", "train.weight_decay=0",
])
def test_the_edges_of_the_ranges_are_allowed(override):
    cfg.load_params(SMOKE, [override])
