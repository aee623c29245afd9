"""`stlib import-weights` end to end: a Keras file -> orbax folder -> `model.init` of a detector."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from stlib import cli
from stlib import config as cfg
from stlib.models import weight_import as wi
from tests.conftest import SMOKE

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A random-init keras EfficientNetB0 saved as .weights.h5 and imported with the CLI."""
    tmp = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(weights=None, classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape).astype("float32"))
    src = tmp / "b0.weights.h5"
    model.save_weights(src)
    out = tmp / "effb0"
    assert cli.main(["import-weights", "efficientnet-b0", str(src), str(out)]) == 0
    return model, src, out


def test_cli_writes_a_checkpoint_and_its_description(imported):
    model, src, out = imported
    meta = json.loads((out / wi.META_FILE).read_text())
    assert meta["backbone"] == "efficientnet-b0" and meta["format"] == "keras" and meta["has_head"]
    # weights=None leaves keras' Normalization un-adapted: that model reads pixels / 255.
    assert meta["num_classes"] == 1000 and meta["input_convention"] == "unit"
    assert meta["num_params"] == pytest.approx(5.29e6, rel=0.01)
    variables, _ = wi.read_checkpoint(out)
    np.testing.assert_array_equal(variables["params"]["backbone"]["block2a"]["dwconv"]["kernel"][:, :, 0, :],
                                  model.get_layer("block2a_dwconv").kernel.numpy()[:, :, :, 0])
    # Every array read back from the file equals the in-memory model's conversion (nothing left fresh).
    direct = wi.fold_input_convention(wi.convert(wi.keras_weights(model), "keras", "efficientnet-b0"), "unit")
    jax.tree.map(np.testing.assert_array_equal, variables, direct)


@pytest.mark.parametrize("name", ["b0_full_model.h5", "b0.keras"])
def test_whole_model_files_import_too(imported, tmp_path, name):
    """A model saved whole (legacy HDF5 read by layer name, or the .keras zip) gives the same arrays."""
    model, _, _ = imported
    path = tmp_path / name
    model.save(path)
    meta = wi.import_weights("efficientnet-b0", path, tmp_path / "out")
    variables, _ = wi.read_checkpoint(tmp_path / "out")
    direct = wi.fold_input_convention(wi.convert(wi.keras_weights(model), "keras", "efficientnet-b0"),
                                      meta["input_convention"])
    jax.tree.map(np.testing.assert_array_equal, variables, direct)


def test_keras2_style_h5_imports_by_layer_name(imported, tmp_path):
    """A Keras 2 HDF5 file (":0" names, depthwise_kernel, no Normalization layer, layers in
    another order, no FC) imports by name, as published Noisy Student conversions need."""
    import h5py
    model, _, _ = imported
    layers = [l for l in model.layers if l.weights and not l.name.startswith(("normalization", "predictions"))]
    path = tmp_path / "noisy_student_b0_notop.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [l.name.encode() for l in reversed(layers)]
        for l in layers:
            g = f.create_group(l.name)
            names = []
            for w in l.weights:
                var = "depthwise_kernel" if l.name.endswith("dwconv") else w.name
                names.append(f"{l.name}/{var}:0".encode())
                g.create_dataset(names[-1].decode(), data=w.numpy())
            g.attrs["weight_names"] = names
    out = tmp_path / "ns"
    assert cli.main(["import-weights", "efficientnet-b0", str(path), str(out)]) == 0
    meta = json.loads((out / wi.META_FILE).read_text())
    assert not meta["has_head"] and meta["input_convention"] == "imagenet"
    variables, _ = wi.read_checkpoint(out)
    direct = wi.convert(wi.keras_weights(model), "keras", "efficientnet-b0")
    jax.tree.map(np.testing.assert_array_equal, variables["params"]["backbone"], direct["params"]["backbone"])


@pytest.mark.filterwarnings("ignore::UserWarning")   # keras lists every B0 layer it cannot fit into B1
def test_cli_refuses_to_overwrite_and_names_bad_files(imported, tmp_path, capsys):
    _, src, out = imported
    assert cli.main(["import-weights", "efficientnet-b0", str(src), str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert cli.main(["import-weights", "efficientnet-b0", str(bad), str(tmp_path / "x")]) == 2
    assert "junk.safetensors" in capsys.readouterr().err
    # B0 weights into a B1 model: keras itself refuses, and the message says which file and model.
    assert cli.main(["import-weights", "efficientnet-b1", str(src), str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "b0.weights.h5" in err and "EfficientNetB1" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_detector_init_loads_the_backbone_exactly_and_leaves_heads_fresh(imported):
    from stlib.train import sharding
    from stlib.tasks.detection import Detector
    _, _, out = imported
    over = ["model.backbone=efficientnet-b0", "model.head_convs=1"]
    mesh = sharding.create_mesh()
    rand = Detector(cfg.load_params(SMOKE, over), 3, mesh).init_state()
    loaded = Detector(cfg.load_params(SMOKE, over + [f"model.init={out}"]), 3, mesh).init_state(init=out)
    variables, _ = wi.read_checkpoint(out)
    for col, got in (("params", loaded.params), ("batch_stats", loaded.batch_stats)):
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got["backbone"]),
                     variables[col]["backbone"])
    for part in ("fpn", "head"):   # necks and heads: the same fresh values as Rand Init
        jax.tree.map(np.testing.assert_array_equal, loaded.params[part], rand.params[part])


def test_detector_with_another_backbone_is_refused(imported):
    from stlib.train import sharding
    from stlib.tasks.detection import Detector
    _, _, out = imported
    p = cfg.load_params(SMOKE, [f"model.init={out}"])        # smoke backbone: resnet-tiny
    with pytest.raises(wi.WeightImportError, match="holds backbone efficientnet-b0, the model.s is resnet-tiny"):
        Detector(p, 3, sharding.create_mesh()).init_state(init=out)


def test_fold_unit_convention_matches_the_stem_inside_the_image():
    """SimCLR-style input ([0,1] RGB) folded into a stem conv + BN: same BN output off the border."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    variables = {"params": {"backbone": {"stem_conv": {"kernel": w}}},
                 "batch_stats": {"backbone": {"stem_bn": {"mean": np.zeros(4, np.float32)}}}}
    folded = wi.fold_input_convention(variables, "unit")
    x = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
    unit = x * wi.IMAGENET_STD + wi.IMAGENET_MEAN

    def conv(img, k):
        return jax.lax.conv_general_dilated(img, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    want = conv(unit, w) - variables["batch_stats"]["backbone"]["stem_bn"]["mean"]
    got = conv(x, folded["params"]["backbone"]["stem_conv"]["kernel"]) - \
        folded["batch_stats"]["backbone"]["stem_bn"]["mean"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_recorded_run_without_checkpoints_says_how_to_recreate_them(tmp_path):
    run = tmp_path / "mini-pretrain-0123456789"
    run.mkdir()
    (run / "params.yaml").write_text("model:\n  backbone: resnet-mini\n")
    with pytest.raises(wi.WeightImportError, match="stlib pretrain .*params.yaml"):
        wi.read_checkpoint(run)
