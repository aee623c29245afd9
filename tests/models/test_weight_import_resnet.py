"""ResNet imports: keras.applications.ResNet50 numerically, torchvision by layout (and numerically with torch)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from stlib.config import ModelParams
from stlib.models import weight_import as wi
from stlib.models.registry import create_model
from stlib.models.weight_import import resnet as rimp


def _classifier(arch, num_classes=1000, bn_epsilon=None):
    return create_model(ModelParams(backbone=arch, head="classification", backbone_bn_epsilon=bn_epsilon), num_classes)


def _rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def _randomize_bn_stats(model, rng):
    import keras
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape).astype("float32"))


@pytest.fixture(scope="module")
def keras_resnet50():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, classifier_activation=None)
    _randomize_bn_stats(model, np.random.default_rng(0))
    return model


def test_keras_resnet50_gives_the_same_logits(keras_resnet50):
    weights = wi.keras_weights(keras_resnet50)
    variables = rimp.from_keras(weights, "resnet50-keras")
    wi.check_variables(variables, wi.abstract_classifier_variables("resnet50-keras"), "test")
    x = np.random.default_rng(1).normal(size=(2, 224, 224, 3)).astype(np.float32)
    want = keras_resnet50(x, training=False).numpy()
    got = _classifier("resnet50-keras").apply(variables, jnp.asarray(x), train=False)
    assert _rel_err(got, want) < 1e-4
    # The comparison has teeth: the two images' logits differ far beyond the tolerance.
    assert _rel_err(want[0], want[1]) > 1e-2


def test_caffe_input_folded_into_the_stem(keras_resnet50):
    """Imported with --input caffe, the model takes stlib's normalized RGB where keras took caffe BGR."""
    variables = wi.fold_input_convention(rimp.from_keras(wi.keras_weights(keras_resnet50)), "caffe")
    rgb = np.random.default_rng(2).uniform(0, 255, size=(1, 224, 224, 3)).astype(np.float32)
    caffe = rgb[..., ::-1] - wi.CAFFE_MEAN_BGR
    ours = (rgb / 255.0 - wi.IMAGENET_MEAN) / wi.IMAGENET_STD
    want = keras_resnet50(caffe, training=False).numpy()
    got = _classifier("resnet50-keras").apply(variables, jnp.asarray(ours), train=False)
    # Exact inside the image; the stem's zero padding stands for a colour < 0.5 grey levels away.
    assert _rel_err(got, want) < 1e-3


def _torchvision_state_dict(rng=None):
    """A torchvision resnet50 state dict by its published names and shapes (random values)."""
    from tests.models.reference_weights import torchvision_resnet50_layout
    rng = rng or np.random.default_rng(0)
    sd = {}
    for name, shape in torchvision_resnet50_layout(1000):
        if name.endswith("num_batches_tracked"):
            sd[name] = np.array(100, np.int64)
        elif name == "fc.bias":
            sd[name] = np.zeros(shape, np.float32)
        elif name == "fc.weight":
            sd[name] = rng.normal(0, 0.01, shape).astype(np.float32)
        elif len(shape) == 4:
            sd[name] = rng.normal(0, np.sqrt(2 / (shape[2] * shape[3] * shape[0])), shape).astype(np.float32)
        elif name.endswith(".weight"):
            sd[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name.endswith("running_var"):
            sd[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:   # bias, running_mean
            sd[name] = rng.normal(0, 0.1, shape).astype(np.float32)
    return sd


def test_torchvision_layout_maps_every_key_with_the_right_shapes(tmp_path):
    from safetensors.numpy import save_file
    sd = _torchvision_state_dict()
    assert len(sd) == 320  # torchvision resnet50().state_dict() has 320 entries (num_batches_tracked and fc included)
    path = tmp_path / "resnet50.safetensors"
    save_file(sd, str(path))
    variables = wi.convert(wi.read_state_dict(path), "torchvision", "resnet50")
    wi.check_variables(variables, wi.abstract_classifier_variables("resnet50"), "test")
    k = variables["params"]["backbone"]["stage2_block1"]["conv2"]["kernel"]
    np.testing.assert_array_equal(k, sd["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["stage4_block3"]["bn3"]["var"],
                                  sd["layer4.2.bn3.running_var"])


def test_torchvision_without_fc_imports_the_backbone_only():
    sd = _torchvision_state_dict()
    del sd["fc.weight"], sd["fc.bias"]
    variables = rimp.from_torchvision(sd, "resnet50")
    assert "head" not in variables["params"]
    wi.check_variables(variables, wi.abstract_classifier_variables("resnet50"), "test")


def test_missing_and_unexpected_keys_are_named():
    sd = _torchvision_state_dict()
    del sd["layer3.4.bn2.running_var"]
    with pytest.raises(KeyError, match="layer3.4.bn2.running_var"):
        rimp.from_torchvision(sd, "resnet50")
    sd = _torchvision_state_dict()
    sd["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="layer5.0.conv1.weight"):
        rimp.from_torchvision(sd, "resnet50")


def test_shape_mismatch_names_the_layer():
    sd = _torchvision_state_dict()
    sd["layer2.1.conv2.weight"] = np.zeros((128, 128, 5, 5), np.float32)
    variables = rimp.from_torchvision(sd, "resnet50")
    with pytest.raises(wi.WeightImportError, match="stage2_block2/conv2/kernel"):
        wi.check_variables(variables, wi.abstract_classifier_variables("resnet50"), "test")


def test_torchvision_numerically():
    """Needs torch; CI has none and runs test_reference_logits.py (non-trivial BN statistics) instead."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    net = tv.models.resnet50(weights=None).eval()
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    variables = rimp.from_torchvision(sd, "resnet50")
    x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = _classifier("resnet50", bn_epsilon=wi.source_bn_epsilon("torchvision", "resnet50")).apply(
        variables, jnp.asarray(x), train=False)
    assert _rel_err(got, want) < 1e-4
