import pytest

import stlib.experiments.assemble  # noqa: F401  (imports every module that defines a registry)
from stlib import config as cfg
from stlib import registry
from tests.conftest import REPO

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


def choice_error(path, overrides) -> str:
    """The `ParamsError` of `registry.check_choices` for params that load (keys, types, ranges)."""
    p = cfg.load_params(path, overrides)
    with pytest.raises(cfg.ParamsError) as info:
        registry.check_choices(p)
    return str(info.value)


@pytest.mark.parametrize("override,message", [
    ("augment.policy=s5", "augment.policy 's5': unknown augment policy (known: s1|s2|s3|s4)"),
    ("augment.autoaugment_policy=v9",
     "augment.autoaugment_policy 'v9': unknown AutoAugment policy (known: v0|v1|v2|v3|test)"),
    ("self_train.nms=greedy", "self_train.nms 'greedy': unknown NMS method (known: nms|soft_nms)"),
    ("postprocess.method=diou", "postprocess.method 'diou': unknown NMS method (known: nms|soft_nms)"),
    ("data.source=s3", "data.source 's3': unknown detection source (known: world|coco|tfds|voc)"),
    ("train.optimizer=adam", "train.optimizer 'adam': unknown optimizer (known: sgd|lars)"),
    ("self_train.unlabeled=s3:bucket", "self_train.unlabeled 's3': unknown unlabeled source kind "
                                       "(known: world|tfds|folder|voc)"),   # its kind, the part before ':'

])
def test_bad_choices_name_the_field_and_the_known_names(override, message):
    assert choice_error(SMOKE, [override]) == message


def test_every_registry_serving_a_field_is_consulted():
    """Each field a registry serves, set to a name no registry has, fails `check_choices` naming it."""
    fields = [(f, reg) for reg in registry.serving() for f in reg.fields]
    assert {"data.source", "augment.policy", "augment.autoaugment_policy", "pretrain.augment", "model.backbone",
            "model.neck", "model.head", "model.activation", "postprocess.method", "self_train.nms",
            "train.optimizer", "self_train.unlabeled", "pretrain.method"} <= {f for f, _ in fields}
    for field, reg in fields:
        bogus = "bogus9:x"
        with pytest.raises(cfg.ParamsError) as info:   # the schema's own check (if any), else the registry's
            registry.check_choices(cfg.load_params(SMOKE, [f"{field}={bogus}"]))
        assert str(info.value).startswith(field), str(info.value)


def test_presets_name_registered_components():
    for path in sorted((REPO / "params").glob("*/*.yaml")):
        import yaml
        if "base" not in yaml.safe_load(path.read_text()):
            registry.check_choices(cfg.load_params(path))


def test_defaults_and_empty_unlabeled_pass_check_choices():
    registry.check_choices(cfg.Params())
    registry.check_choices(cfg.load_params(SMOKE, ["self_train.unlabeled="]))   # empty: not checked
    registry.check_choices(cfg.load_params(SMOKE, [f"self_train.unlabeled={REPO}"]))   # a plain path


@pytest.mark.parametrize("override,message", [
    ("augment.scale_range=[2.0, 1.0]", "augment.scale_range must be"),
    ("augment.large_jitter=[0.5]", "augment.large_jitter must be"),
    ("augment.randaugment_layers=0", "augment.randaugment_layers must be"),
    ("augment.pixel_scale=0", "augment.pixel_scale must be"),
])
def test_bad_augment_params_name_the_key(override, message):
    with pytest.raises(cfg.ParamsError, match=message):
        cfg.load_params(SMOKE, [override])


def test_policy_picks_its_jitter_unless_overridden():
    assert cfg.load_params(SMOKE, ["augment.policy=s4"]).augment.jitter() == (0.5, 2.0)
    assert cfg.load_params(SMOKE, ["augment.policy=s2"]).augment.jitter() == (0.8, 1.2)
    assert cfg.load_params(SMOKE, ["augment.policy=s4", "augment.scale_range=[1.0, 1.5]"]).augment.jitter() == (1.0, 1.5)


def test_recorded_runs_keep_their_address():
    """Each recorded run's params.yaml resolves to its folder's run id, also after fields were
    added to the schema (`_added` fields at their default stay out of the hash): records made
    before run identities by the params alone, later ones by their identity.json (params hash,
    data and checkpoint digests; `stlib.experiments.identity`)."""
    import hashlib
    import json
    from stlib.experiments import identity
    runs = sorted((REPO / "outputs/runs").glob("*/params.yaml"))
    assert runs, "no recorded runs in outputs/runs"
    for path in runs:
        p = cfg.load_params(path)
        ident_file = path.parent / "identity.json"
        if not ident_file.is_file():
            assert cfg.run_id(p) == path.parent.name, path
            continue
        ident = json.loads(ident_file.read_text())
        assert ident["params"] == cfg.params_hash(identity._strip_paths(p)), path
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
        assert f"{p.name}-{digest}" == path.parent.name, path


def test_added_fields_change_the_address_when_set():
    base = cfg.load_params(SMOKE)
    assert cfg.run_id(cfg.load_params(SMOKE, ["model.neck=fpn"])) == cfg.run_id(base)
    assert cfg.run_id(cfg.load_params(SMOKE, ["model.neck=nasfpn"])) != cfg.run_id(base)
    assert cfg.run_id(cfg.load_params(SMOKE, ["model.activation=swish"])) != cfg.run_id(base)


@pytest.mark.parametrize("override,message", [
    ("self_train.score_threshold=1.5", "self_train.score_threshold"),
    ("self_train.store_min_score=0.7", "store_min_score"),
    ("self_train.pseudo_ratio=0", "pseudo_ratio"),
    ("self_train.student_init=imagenet", "student_init"),
    ("self_train.norm_momentum=1.0", "norm_momentum"),
])
def test_self_train_params_are_checked(override, message):
    with pytest.raises(cfg.ParamsError, match=message):
        cfg.load_params("params/smoke/retinanet.yaml", [override])


def test_self_train_fields_leave_old_run_ids_alone():
    p = cfg.load_params("params/smoke/retinanet.yaml")
    assert "self_train" not in cfg._hashed_dict(p)
    q = cfg.load_params("params/smoke/retinanet.yaml", ["self_train.alpha=2.0"])
    assert cfg.run_id(q) != cfg.run_id(p)
