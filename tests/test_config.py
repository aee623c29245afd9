import pytest

from stlib import config as cfg

SMOKE = "params/smoke/retinanet.yaml"


def test_presets_load_and_differ():
    smoke, mini, paper = (cfg.load_params(f"params/{s}/retinanet.yaml") for s in ("smoke", "mini", "paper"))
    assert smoke.data.world_scale == "smoke" and mini.data.world_scale == "mini"
    assert paper.train.batch_size == 256 and paper.train.base_lr == 0.32 and paper.data.image_size == 640
    assert len({cfg.run_id(p) for p in (smoke, mini, paper)}) == 3


def test_overrides_and_types():
    p = cfg.load_params(SMOKE, ["train.steps=11", "data.label_fraction=0.2", "train.base_lr=1"])
    assert p.train.steps == 11 and p.data.label_fraction == 0.2
    assert isinstance(p.train.base_lr, float)


def test_unknown_key_names_key(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train:\n  stepz: 3\n")
    with pytest.raises(cfg.ParamsError, match=r"unknown key 'train.stepz'.*p.yaml|p.yaml.*unknown key 'train.stepz'"):
        cfg.load_params(f)
    with pytest.raises(cfg.ParamsError, match="unknown key 'modell'"):
        cfg.load_params(SMOKE, ["modell.backbone=x"])


def test_wrong_type_names_key():
    with pytest.raises(cfg.ParamsError, match="'train.steps' must be int"):
        cfg.load_params(SMOKE, ["train.steps=abc"])
    with pytest.raises(cfg.ParamsError, match="'train.steps' must be int"):
        cfg.load_params(SMOKE, ["train.steps=1.5"])
    with pytest.raises(cfg.ParamsError, match="'augment.hflip' must be bool"):
        cfg.load_params(SMOKE, ["augment.hflip=3"])
    with pytest.raises(cfg.ParamsError, match="'train' must be a mapping"):
        cfg.load_params(SMOKE, ["train=3"])


def test_cross_field_checks():
    with pytest.raises(cfg.ParamsError, match="label_fraction"):
        cfg.load_params(SMOKE, ["data.label_fraction=1.5"])
    with pytest.raises(cfg.ParamsError, match="image_size"):
        cfg.load_params(SMOKE, ["data.image_size=100"])
    with pytest.raises(cfg.ParamsError, match="not found"):
        cfg.load_params("params/nope.yaml")


def test_run_id_is_content_address():
    a = cfg.load_params(SMOKE)
    b = cfg.load_params(SMOKE, ["train.steps=6"])  # same value as the preset
    c = cfg.load_params(SMOKE, ["train.steps=7"])
    assert cfg.run_id(a) == cfg.run_id(b) != cfg.run_id(c)
    assert cfg.load_params(None).train.batch_size == 256


def test_scientific_notation_without_dot_is_a_float():
    assert cfg.load_params(SMOKE, ["train.weight_decay=1e-4"]).train.weight_decay == 1e-4
    with pytest.raises(cfg.ParamsError, match="'train.base_lr' must be float"):
        cfg.load_params(SMOKE, ["train.base_lr=fast"])
