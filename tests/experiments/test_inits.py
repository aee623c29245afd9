"""Named inits: what `model.init: imagenet | imagenet++ | simclr` resolves to, and the errors."""
import pytest

from stlib import config as cfg
from stlib.experiments import inits, runs

SMOKE = "params/smoke/retinanet.yaml"


def _fake_run(run_dir):
    (run_dir / "checkpoints" / "best" / "3").mkdir(parents=True)
    return run_dir


def test_world_names_resolve_to_the_runs_of_the_scales_presets(tmp_path):
    p = cfg.load_params(SMOKE, ["model.init=imagenet"])
    want = runs.resolve_run_dir(cfg.load_params("params/smoke/pretrain.yaml"), outputs=tmp_path)
    with pytest.raises(inits.InitError, match=r"stlib inits --scale smoke.*stlib pretrain params/smoke/pretrain.yaml"):
        inits.resolve_named("imagenet", p, tmp_path)
    _fake_run(want)
    assert inits.resolve_named("imagenet", p, tmp_path) == str(want)
    resolved = inits.resolve_init(p, tmp_path)
    assert resolved.model.init == str(want)
    # the run id hashes the checkpoint it starts from: a name and its folder are the same run
    assert runs.resolve_run_dir(p, outputs=tmp_path) == runs.resolve_run_dir(resolved, outputs=tmp_path)
    assert cfg.run_id(resolved) != cfg.run_id(cfg.load_params(SMOKE))


def test_noisy_student_teacher_is_part_of_its_run_id(tmp_path):
    import json
    from stlib.experiments import identity
    ns = cfg.load_params("params/smoke/noisy_student.yaml")
    teacher = runs.resolve_run_dir(cfg.load_params("params/smoke/pretrain.yaml"), outputs=tmp_path)
    r = inits.resolve_init(ns, tmp_path, require=False)
    assert r.pretrain.teacher == str(teacher)
    assert identity.is_provisional(identity.run_identity(r))      # no teacher yet
    assert inits.world_init_dir("imagenet++", "smoke", tmp_path).name == identity.run_id(r)
    ids = []
    for digest in ("d1", "d2"):    # the teacher's weights, not its folder, address the student
        teacher.mkdir(parents=True, exist_ok=True)
        (teacher / "metrics.json").write_text(json.dumps({"status": "complete", "checkpoint_digest": digest}))
        ids.append(identity.run_id(r))
    assert ids[0] != ids[1]


def test_a_backbone_mismatch_names_both():
    p = cfg.load_params(SMOKE, ["model.backbone=resnet-mini", "model.init=imagenet"])
    with pytest.raises(inits.InitError, match=r"'resnet-tiny'.*'resnet-mini'"):
        inits.resolve_named("imagenet", p)


@pytest.mark.parametrize("backbone,name,needle", [
    ("efficientnet-b7", "imagenet", "efficientnetb7.h5"),
    ("efficientnet-b7", "imagenet++", "tf_efficientnet_b7.ns_jft_in1k"),
    ("resnet50", "simclr", "--input unit"),
])
def test_paper_scale_names_say_which_public_file_to_fetch(backbone, name, needle):
    p = cfg.load_params("params/paper/retinanet.yaml", [f"model.backbone={backbone}", f"model.init={name}"])
    with pytest.raises(inits.InitError) as e:
        inits.resolve_init(p)
    msg = str(e.value)
    assert needle in msg and f"weights/{backbone}-{name}" in msg and "stlib import-weights" in msg


def test_paper_scale_unknown_pair_still_says_how_to_import():
    p = cfg.load_params("params/paper/retinanet.yaml", ["model.backbone=spinenet-49", "model.init=simclr"])
    with pytest.raises(inits.InitError, match="no public simclr checkpoint is known for backbone 'spinenet-49'"):
        inits.resolve_init(p)


def test_unknown_init_is_a_params_error():
    with pytest.raises(cfg.ParamsError, match="not rand\\|imagenet\\|imagenet\\+\\+\\|simclr"):
        cfg.load_params(SMOKE, ["model.init=imagenet+++"])


def test_an_imported_init_gives_the_run_its_source_bn_epsilon(tmp_path):
    """torchvision's BatchNorm statistics are right only with its epsilon 1e-5 (stlib's default is
    1e-4): a run starting from an imported folder takes the epsilon it records, and params that
    set another one are refused naming both."""
    import json
    from stlib.models.weight_import import WeightImportError
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "stlib_weights.json").write_text(json.dumps(
        {"backbone": "resnet-tiny", "format": "torchvision", "bn_epsilon": 1e-5, "source_sha256": "ab"}))
    p = inits.resolve_init(cfg.load_params(SMOKE, [f"model.init={folder}"]))
    assert p.model.backbone_bn_epsilon == 1e-5 and p.model.bn_epsilon == 1e-4
    with pytest.raises(WeightImportError, match=r"1e-05.*0\.001"):
        inits.resolve_init(cfg.load_params(SMOKE, [f"model.init={folder}", "model.backbone_bn_epsilon=0.001"]))
