"""EfficientNet backbone, classifier and weight import (REFERENCE §5).

Param counts and shapes are checked abstractly (jax.eval_shape); numerical equivalence is
checked against a randomly initialised `keras.applications.EfficientNetB0` (B7 in a slow test)
whose BN gammas/betas, biases and input normalisation are randomised and whose BN moving
statistics are calibrated on real activations and then perturbed (see `keras_model`).
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.models.backbones import efficientnet as effnet
from stlib.models.classifier import ClassificationHead, Classifier, efficientnet_classifier
from stlib.models.weight_import import efficientnet as wi

# REFERENCE §5.3 "derived params (trainable)", in millions.
TRAINABLE_M = {"b0": 5.29, "b1": 7.79, "b2": 9.11, "b3": 12.23, "b4": 19.34, "b5": 30.39, "b6": 43.04,
               "b7": 66.35, "l2": 480.31}
# REFERENCE §5.3: stem ch, stage repeats, stage out ch, head ch, #blocks, C2..C5 ch.
TABLE = {
    "b0": (32, (1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320), 1280, 16, (24, 40, 112, 320)),
    "b7": (64, (4, 7, 7, 10, 10, 13, 4), (32, 48, 80, 160, 224, 384, 640), 2560, 55, (48, 80, 224, 640)),
    "l2": (136, (6, 11, 11, 16, 16, 22, 6), (72, 104, 176, 344, 480, 824, 1376), 5504, 88, (104, 176, 480, 1376)),
}


def abstract_variables(model, size=64):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))


def n_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def shapes(tree):
    return jax.tree.map(lambda x: tuple(x.shape), tree)


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("variant", list(TRAINABLE_M))
def test_classifier_param_count_matches_reference(variant):
    variables = abstract_variables(efficientnet_classifier(variant))
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]) == {"backbone", "head"}
    n = n_params(variables["params"])
    assert n / 1e6 == pytest.approx(TRAINABLE_M[variant], rel=0.01), n


@pytest.mark.parametrize("variant", list(TABLE))
def test_block_specs_match_reference_table(variant):
    stem, repeats, outs, head, n_blocks, _ = TABLE[variant]
    width, depth, _ = effnet.COEFFICIENTS[variant]
    specs = effnet.block_specs(width, depth)
    assert effnet.round_filters(32, width) == stem
    assert effnet.round_filters(1280, width) == head
    assert len(specs) == n_blocks
    assert tuple(sum(s.stage == st for s in specs) for st in range(1, 8)) == repeats
    assert tuple(max(s.out_ch for s in specs if s.stage == st) for st in range(1, 8)) == outs
    # Drop-connect: 0.2*k/N on identity-skip blocks only; first block of a stage carries the stride.
    for k, s in enumerate(specs):
        assert s.drop_rate == (pytest.approx(0.2 * k / n_blocks) if s.has_skip else 0.0)
        assert s.has_skip == (s.index > 0)
    assert specs[0].name == "block1a" and specs[-1].name == f"block7{'abcdefghijklmnopqrstuvwxyz'[repeats[-1] - 1]}"
    assert effnet.round_repeats(2, 1.1) == 3 and effnet.round_filters(16, 1.1) == 16  # 17.6 -> 16 (>= 0.9x)


@pytest.mark.parametrize("variant,size", [("b0", 224), ("b7", 600), ("b0", 97)])
def test_endpoints_shapes(variant, size):
    model = effnet.VARIANTS[variant]()
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3)),
                                                        train=False))[0]
    assert sorted(out) == [2, 3, 4, 5]
    channels = TABLE[variant][-1]
    for (level, y), c in zip(sorted(out.items()), channels):
        s = -(-size // 2 ** level)  # SAME padding: ceil(size / stride)
        assert y.shape == (2, s, s, c), (level, y.shape)
    assert model.endpoint_channels() == dict(zip((2, 3, 4, 5), channels))
    assert model.head_channels == TABLE[variant][3]


def test_backbone_has_keras_style_names_and_no_top_conv():
    variables = abstract_variables(effnet.efficientnet_b0())
    p = variables["params"]
    assert "top_conv" not in p and "stem_conv" in p and "stem_bn" in p
    assert set(p["block1a"]) == {"dwconv", "bn", "se_reduce", "se_expand", "project_conv", "project_bn"}
    assert set(p["block2b"]) == {"expand_conv", "expand_bn"} | set(p["block1a"])
    assert p["block2a"]["dwconv"]["kernel"].shape == (3, 3, 1, 96)
    assert p["block2a"]["se_reduce"]["kernel"].shape == (1, 1, 96, 4)  # SE width from block input (16 * 0.25)
    assert "bias" not in p["block2a"]["expand_conv"] and "bias" in p["block2a"]["se_expand"]


def test_bfloat16_classifier_keeps_float32_params_and_logits():
    model = efficientnet_classifier("tiny", num_classes=3, dtype=jnp.bfloat16)
    out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, 64, 64, 3))))
    assert out.shape == (2, 3) and out.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


def test_head_without_conv_and_errors():
    head = ClassificationHead(num_classes=7, activation="relu")
    feats = {3: jnp.ones((2, 8, 8, 4)), 5: jnp.ones((2, 2, 2, 6))}
    variables = head.init(jax.random.PRNGKey(0), feats, train=False)
    assert variables["params"]["predictions"]["kernel"].shape == (6, 7)  # took the highest level
    logits = head.apply(variables, feats, train=False)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    with pytest.raises(ValueError, match="gelu"):
        ClassificationHead(num_classes=3, activation="gelu").init(jax.random.PRNGKey(0), feats, train=False)
    with pytest.raises(ValueError, match="b9"):
        efficientnet_classifier("b9")


def random_variables(model, size=32, seed=0):
    """Variables with the model's tree, filled by numpy (a jitted `init` of a whole network spends
    ~40 s compiling its threefry draws on this CPU; filling the abstract tree is instant)."""
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = path[-1].key
        if name in ("var", "scale"):
            return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), jnp.float32)
        if name in ("bias", "mean"):
            return jnp.asarray(rng.normal(0, 0.1, x.shape), jnp.float32)
        return jnp.asarray(rng.normal(0, np.sqrt(1 / np.prod(x.shape[:-1])), x.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, size))


def test_initializers_follow_reference():
    """Conv N(0, sqrt(2/fan_out)) with TF's fan_out (depthwise: kh*kw); dense U(+-1/sqrt(classes))."""
    block = effnet.MBConv(in_ch=64, out_ch=64, kernel=5, stride=1, expand=6)
    p = jax.jit(block.init, static_argnames="train")(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 64)),
                                                     train=False)["params"]
    assert float(jnp.std(p["dwconv"]["kernel"])) == pytest.approx(np.sqrt(2 / 25), rel=0.05)
    assert float(jnp.std(p["expand_conv"]["kernel"])) == pytest.approx(np.sqrt(2 / 384), rel=0.05)
    assert float(jnp.std(p["project_conv"]["kernel"])) == pytest.approx(np.sqrt(2 / 64), rel=0.05)
    assert float(jnp.max(jnp.abs(p["se_expand"]["bias"]))) == 0.0
    head = ClassificationHead(num_classes=16)
    k = jax.jit(head.init, static_argnames="train")(jax.random.PRNGKey(0), {5: jnp.zeros((1, 2, 2, 256))},
                                                    train=False)["params"]["predictions"]["kernel"]
    assert float(jnp.max(jnp.abs(k))) <= 1 / np.sqrt(16) + 1e-6
    assert float(jnp.max(jnp.abs(k))) > 0.9 / np.sqrt(16)


# ---------------------------------------------------------------- drop-connect


def test_drop_connect_function():
    x = jnp.ones((1000, 2, 2, 3))
    y = effnet.drop_connect(x, 0.25, jax.random.PRNGKey(1))
    per_example = np.asarray(y[:, 0, 0, 0])
    assert all(np.isclose(v, 0.0) or np.isclose(v, 1 / 0.75) for v in np.unique(per_example))
    assert np.all(np.asarray(y) == per_example[:, None, None, None])  # whole examples
    assert float(jnp.mean(y)) == pytest.approx(1.0, abs=0.1)
    assert effnet.drop_connect(x, 0.0, jax.random.PRNGKey(1)) is x


def test_drop_connect_uses_dropout_rng_only_in_training():
    model = Classifier(backbone=lambda name: effnet.efficientnet_tiny(drop_connect_rate=0.5, name=name),
                       head=lambda name: ClassificationHead(num_classes=5, conv_channels=32, name=name))
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 3))
    variables = random_variables(model)
    train_apply = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key},
                                                        mutable=["batch_stats"])[0])

    def train_out(seed):
        return np.asarray(train_apply(variables, x, jax.random.PRNGKey(seed)))

    assert not np.allclose(train_out(0), train_out(1))
    np.testing.assert_array_equal(train_out(2), train_out(2))
    eval_apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    np.testing.assert_array_equal(np.asarray(eval_apply(variables, x)), np.asarray(eval_apply(variables, x)))
    with pytest.raises(Exception, match="dropout"):  # no rng given (traced abstractly: eager ops are slow)
        jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)


# ---------------------------------------------------------------- keras / timm import


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("keras")


def smooth_images(batch, size, seed):
    """0..255 images with structure at several scales (i.i.d. pixel noise averages out in the pooling)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((batch, size, size, 3))
    for cell in (32, 8):
        n = -(-size // cell)
        low = rng.uniform(-1, 1, (batch, n, n, 3))
        out += np.repeat(np.repeat(low, cell, axis=1), cell, axis=2)[:, :size, :size]
    return np.clip(127.5 + 60 * out + rng.normal(0, 10, out.shape), 0, 255).astype("float32")


def keras_model(variant, size, seed=0):
    """Random Keras EfficientNet; gammas, betas, biases and the input normalisation are random, and
    the BN moving statistics are set near the statistics of real activations (from one forward pass
    in training mode) and then perturbed. Random O(1) moving statistics instead leave activations
    that no longer depend on the input (the test would compare constants), and an unchecked residual
    stream in B7 grows to ~1e5 and amplifies float32 rounding to O(1) differences."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    cls = getattr(keras.applications, f"EfficientNet{variant.upper()}")
    model = cls(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    rng = np.random.default_rng(seed)
    for w in model.weights:
        layer, name, shape = w.path.split("/")[0], w.path.split("/")[-1], tuple(w.shape)
        if name == "gamma":  # small gammas on the residual branches keep the stream O(1)
            low, high = (0.2, 0.5) if layer.endswith("project_bn") else (0.5, 1.5)
            w.assign(rng.uniform(low, high, shape).astype("float32"))
        elif name in ("beta", "bias"):
            w.assign(rng.normal(0, 0.1, shape).astype("float32"))
        elif layer.startswith("normalization") and name == "mean":
            w.assign(rng.uniform(0.3, 0.6, shape).astype("float32"))
        elif layer.startswith("normalization") and name == "variance":
            w.assign(rng.uniform(0.04, 0.09, shape).astype("float32"))
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()  # Keras 3 caches mean/variance; loading weights refreshes them the same way
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0  # the calibration pass below runs in training mode
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(model.input, [layer.input for layer in bns])
    for layer, x in zip(bns, probe(smooth_images(2, size, seed + 100), training=True)):
        x = np.asarray(x, np.float64)
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
        var = var + 0.05 * var.mean()  # no near-dead channel amplifies rounding noise
        layer.moving_mean.assign((mean + 0.2 * np.sqrt(var) * rng.normal(size=mean.shape)).astype("float32"))
        layer.moving_variance.assign((var * rng.uniform(0.7, 1.4, var.shape)).astype("float32"))
    weights = {w.path: np.asarray(w.numpy()) for w in model.weights}
    return model, weights


def keras_outputs(model, variant, images):
    """(input of `stem_conv_pad` i.e. after Keras' preprocessing, {level: endpoint}, logits)."""
    keras = _keras()
    width, depth, _ = effnet.COEFFICIENTS[variant]
    last = {s.stage: s for s in effnet.block_specs(width, depth)}
    names = {level: last[stage].name + ("_add" if last[stage].has_skip else "_project_bn")
             for level, stage in effnet.ENDPOINT_STAGES.items()}
    sub = keras.Model(model.input, [model.get_layer("stem_conv_pad").input]
                      + [model.get_layer(names[level]).output for level in sorted(names)] + [model.output])
    out = [np.asarray(o) for o in sub(images, training=False)]
    return out[0], dict(zip(sorted(names), out[1:-1])), out[-1]


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def compare_with_keras(variant, size, batch=2, seed=0):
    model, weights = keras_model(variant, size, seed)
    images = smooth_images(batch, size, seed + 1)
    x, feats, expected = keras_outputs(model, variant, images)
    # The test is only meaningful if the logits depend on the image.
    assert np.max(np.abs(expected[0] - expected[1])) > 0.05 * np.max(np.abs(expected))
    # The documented preprocessing reproduces Keras' (weights=None: no ImageNet rescaling).
    mean, std = wi.keras_input_normalization(weights, imagenet=False)
    np.testing.assert_allclose((images / 255 - mean) / std, x, rtol=1e-5, atol=1e-5)

    variables = wi.from_keras(weights, variant)
    ours = efficientnet_classifier(variant)
    assert shapes(variables) == shapes(abstract_variables(ours)), "tree differs from the model's"
    logits = jax.jit(lambda v, x: ours.apply(v, x, train=False))(variables, jnp.asarray(x))
    # The backbone subtree alone (as a detector loads it) gives Keras' endpoints.
    backbone = effnet.VARIANTS[variant]()
    sub = {k: v["backbone"] for k, v in variables.items()}
    ours_feats = jax.jit(lambda v, x: backbone.apply(v, x, train=False))(sub, jnp.asarray(x))
    errs = {level: rel_err(ours_feats[level], feats[level]) for level in feats}
    errs["logits"] = rel_err(logits, expected)
    print(f"EfficientNet-{variant} @ {size}: max rel err vs keras",
          ", ".join(f"{k}: {v:.1e}" for k, v in errs.items()))
    assert max(errs.values()) < 1e-4, errs
    return errs


@pytest.mark.parametrize("size", [pytest.param(224, marks=pytest.mark.slow), 97])   # 224: -m slow (23 s)
def test_from_keras_matches_keras_b0(size):
    compare_with_keras("b0", size)


@pytest.mark.slow
def test_from_keras_matches_keras_b7():
    compare_with_keras("b7", 300)


def keras_to_timm_state_dict(weights):
    """Independent rewrite of Keras names/layouts into timm's published tf_efficientnet keys."""
    sd = {}
    bn_vars = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
    top = {"stem_conv": "conv_stem", "stem_bn": "bn1", "top_conv": "conv_head", "top_bn": "bn2",
           "predictions": "classifier"}
    ds_parts = {"dwconv": "conv_dw", "bn": "bn1", "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand",
                "project_conv": "conv_pw", "project_bn": "bn2"}
    ir_parts = {"expand_conv": "conv_pw", "expand_bn": "bn1", "dwconv": "conv_dw", "bn": "bn2",
                "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand", "project_conv": "conv_pwl",
                "project_bn": "bn3"}
    for key, value in weights.items():
        layer, var = key.split("/")
        if layer.startswith("normalization"):
            continue
        m = re.fullmatch(r"block(\d)([a-z])_(\w+)", layer)
        if m:
            stage, idx, part = int(m[1]), ord(m[2]) - ord("a"), m[3]
            parts = ds_parts if stage == 1 else ir_parts
            module = f"blocks.{stage - 1}.{idx}.{parts[part]}"
        else:
            module = top[layer]
        if var in bn_vars:
            sd[f"{module}.{bn_vars[var]}"] = value
            if var == "gamma":
                sd[f"{module}.num_batches_tracked"] = np.array(0)
        elif var == "bias":
            sd[f"{module}.bias"] = value
        elif layer == "predictions":
            sd[f"{module}.weight"] = value.T  # [I, O] -> Linear [O, I]
        elif "dwconv" in layer:
            sd[f"{module}.weight"] = value.transpose(2, 3, 0, 1)  # [kh, kw, C, 1] -> [C, 1, kh, kw]
        else:
            sd[f"{module}.weight"] = value.transpose(3, 2, 0, 1)  # [kh, kw, I, O] -> [O, I, kh, kw]
    return sd


@pytest.fixture(scope="module")
def b0_weights():
    return keras_model("b0", 64)[1]


def test_from_timm_equals_from_keras(b0_weights):
    sd = keras_to_timm_state_dict(b0_weights)
    # A few published key names (tf_efficientnet_b0) as a sanity check of the rewrite above.
    for k in ("conv_stem.weight", "bn1.running_var", "blocks.0.0.conv_dw.weight", "blocks.0.0.se.conv_reduce.bias",
              "blocks.0.0.conv_pw.weight", "blocks.0.0.bn2.weight", "blocks.1.1.conv_pwl.weight", "blocks.6.0.bn3.bias",
              "blocks.5.3.se.conv_expand.weight", "conv_head.weight", "bn2.num_batches_tracked", "classifier.bias"):
        assert k in sd, k
    assert sd["blocks.1.0.conv_dw.weight"].shape == (96, 1, 3, 3)
    assert sd["classifier.weight"].shape == (1000, 1280)
    a = wi.from_timm(sd, "b0")
    b = wi.from_keras(b0_weights, "b0")
    assert shapes(a) == shapes(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(a))


def test_from_keras_without_predictions(b0_weights):
    notop = {k: v for k, v in b0_weights.items() if not k.startswith("predictions")}
    out = wi.from_keras({k + ":0": v for k, v in notop.items()}, "efficientnet-b0", with_predictions=False)
    assert "predictions" not in out["params"]["head"] and "top_conv" in out["params"]["head"]
    with pytest.raises(KeyError, match="predictions/kernel"):
        wi.from_keras(notop, "b0")


def test_import_errors_name_the_key(b0_weights):
    w = dict(b0_weights)
    del w["block3b_se_expand/bias"]
    with pytest.raises(KeyError, match="block3b_se_expand/bias"):
        wi.from_keras(w, "b0")
    with pytest.raises(KeyError, match="EfficientNet-b0"):
        wi.from_keras(w, "b0")

    w = dict(b0_weights)
    w["block2a_project_conv/kernel"] = w["block2a_project_conv/kernel"][..., :-1]
    with pytest.raises(ValueError, match="block2a_project_conv/kernel.*shape"):
        wi.from_keras(w, "b0")

    w = dict(b0_weights)
    w["block9a_dwconv/kernel"] = np.zeros(3)
    with pytest.raises(ValueError, match="unexpected.*block9a_dwconv/kernel"):
        wi.from_keras(w, "b0")
    # B0 weights are not B1 weights: block1b is missing.
    with pytest.raises(KeyError, match="block1b.*EfficientNet-b1|EfficientNet-b1.*block1b"):
        wi.from_keras(b0_weights, "b1")

    sd = keras_to_timm_state_dict(b0_weights)
    sd["blocks.7.0.conv_dw.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"blocks\.7\.0\.conv_dw\.weight"):
        wi.from_timm(sd, "b0")
    del sd["blocks.7.0.conv_dw.weight"], sd["blocks.2.1.bn3.running_mean"]
    with pytest.raises(KeyError, match=r"blocks\.2\.1\.bn3\.running_mean"):
        wi.from_timm(sd, "b0")


def test_timm_numerically_if_installed():
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = timm.create_model("tf_efficientnet_b0", pretrained=False).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.2, generator=gen)
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    x = np.random.default_rng(0).normal(size=(2, 3, 97, 97)).astype("float32")
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    model = efficientnet_classifier("b0")
    got = np.asarray(model.apply(wi.from_timm(sd, "b0"), jnp.asarray(x.transpose(0, 2, 3, 1)), train=False))
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) < 1e-4
