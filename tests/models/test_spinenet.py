"""SpineNet: shapes, sizes and compute against REFERENCE §6, all paper-size checks abstract."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.models.backbones import spinenet as sn
from stlib.models.retinanet import RetinaNetHead

# REFERENCE §6.6: derived backbone params and backbone + head params (published in brackets).
BACKBONE_PARAMS = {"49": 21.83e6, "96": 36.26e6, "143": 60.25e6, "190": 126.59e6}
TOTAL_PARAMS = {"49": 28.54e6, "96": 42.97e6, "143": 66.96e6, "190": 163.64e6}  # [28.5 / 43.0 / 67.0 / 163.6M]
PUBLISHED_MADDS = {"49": 85.4e9, "143": 524.0e9}


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def _variant(model_id: str):
    return getattr(sn, f"spinenet_{model_id}")


class _Detector(nn.Module):
    """SpineNet endpoints straight into the RetinaNet head (REFERENCE §6.5: no FPN)."""
    model_id: str

    @nn.compact
    def __call__(self, x, train: bool = False):
        cfg = sn.RETINANET_SETTINGS[self.model_id]
        feats = _variant(self.model_id)(name="backbone")(x, train=train)
        return RetinaNetHead(num_classes=91, num_anchors=9, num_convs=cfg["head_convs"],
                             channels=cfg["head_channels"], min_level=3, max_level=7, name="head")(feats, train=train)


def _abstract_variables(model, size):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)


def _conv_macs(jaxpr) -> int:
    """Multiply-adds of every conv_general_dilated in a (closed) jaxpr, recursing into sub-jaxprs."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            dn = eqn.params["dimension_numbers"]
            kernel_spatial = [rhs[d] for d in dn.rhs_spec[2:]]
            in_per_group = rhs[dn.rhs_spec[1]]
            total += math.prod(out) * math.prod(kernel_spatial) * in_per_group
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _conv_macs(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _conv_macs(sub)
    return total


def _model_macs(model, size) -> int:
    variables = _abstract_variables(model, size)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return _conv_macs(closed.jaxpr)


@pytest.mark.parametrize("size", [640, 200, (197, 255)])
def test_spinenet49_levels_shapes_channels(size):
    h, w = (size, size) if isinstance(size, int) else size
    model = sn.spinenet_49()
    x = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    out, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False), x)
    assert sorted(out) == [3, 4, 5, 6, 7]
    for level, f in out.items():
        assert f.shape == (2, math.ceil(h / 2 ** level), math.ceil(w / 2 ** level), 256)


@pytest.mark.parametrize("model_id", ["49", "96", "143", "190"])
def test_backbone_params_match_reference(model_id):
    size = sn.RETINANET_SETTINGS[model_id]["input"]
    variables = _abstract_variables(_variant(model_id)(), size)
    assert _count(variables["params"]) == pytest.approx(BACKBONE_PARAMS[model_id], rel=0.01)


@pytest.mark.parametrize("model_id", ["49", "96", "143", "190"])
def test_backbone_plus_head_params_match_published(model_id):
    size = sn.RETINANET_SETTINGS[model_id]["input"]
    variables = _abstract_variables(_Detector(model_id), size)
    assert _count(variables["params"]) == pytest.approx(TOTAL_PARAMS[model_id], rel=0.01)


@pytest.mark.parametrize("model_id", ["49", "143"])
def test_multiply_adds_match_published(model_id):
    size = sn.RETINANET_SETTINGS[model_id]["input"]
    assert _model_macs(_Detector(model_id), size) == pytest.approx(PUBLISHED_MADDS[model_id], rel=0.03)


def test_mac_counter_on_a_single_conv():
    conv = nn.Conv(8, (3, 3), strides=(2, 2), feature_group_count=2)
    x = jax.ShapeDtypeStruct((1, 10, 10, 4), jnp.float32)
    v = jax.eval_shape(lambda x: conv.init(jax.random.PRNGKey(0), x), x)
    closed = jax.make_jaxpr(lambda v, x: jax.jit(conv.apply)(v, x))(v, x)
    assert _conv_macs(closed.jaxpr) == 5 * 5 * 8 * 9 * 2


def test_retinanet_settings_are_complete():
    assert set(sn.RETINANET_SETTINGS) == {"49s", "49", "96", "143", "190"}
    for cfg in sn.RETINANET_SETTINGS.values():
        assert set(cfg) == {"input", "head_convs", "head_channels", "anchor_size"}


def _filled_variables(model, x):
    """Concrete variables for the tiny model without compiling `init` (its ~200 RNG calls take
    tens of seconds to compile on CPU): shapes come from the abstract `init`, values from numpy,
    kernels He-normal (fan_out) like the module's initializer, BN at its defaults."""
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    rng = np.random.default_rng(0)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            fan_out = math.prod(s.shape[:-2]) * s.shape[-1]
            return jnp.asarray(rng.normal(0.0, math.sqrt(2.0 / fan_out), s.shape), s.dtype)
        return jnp.ones(s.shape, s.dtype) if name in ("scale", "var") else jnp.zeros(s.shape, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _key(seed):
    # "unsafe_rbg" keys: flax's per-module fold-ins and the drop-connect draws then compile in a
    # fraction of threefry's time on CPU; the model itself accepts any key type.
    return jax.random.key(seed, impl="unsafe_rbg")


@pytest.mark.slow   # ~60 s of compiling the gradient; the other tiny tests run the forward on every run
def test_tiny_forward_backward_and_drop_connect():
    model = sn.spinenet_tiny()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 64, 64, 3)), jnp.float32)
    variables = _filled_variables(model, x)
    assert set(variables) == {"params", "batch_stats"}

    apply_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = apply_eval(variables, x)
    assert sorted(out) == [3, 4, 5, 6, 7]
    for level, f in out.items():
        assert f.shape == (4, math.ceil(64 / 2 ** level), math.ceil(64 / 2 ** level), 32)
        assert bool(jnp.all(jnp.isfinite(f)))
    # Eval mode is deterministic and needs no rng.
    again = apply_eval(variables, x)
    assert all(np.array_equal(out[l], again[l]) for l in out)

    def loss(params, key):
        feats, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                     rngs={"dropout": key}, mutable=["batch_stats"])
        return sum(jnp.mean(f ** 2) for f in feats.values()), (feats, updates)

    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (l1, (f1, upd)), grads = grad_fn(variables["params"], _key(2))
    assert bool(jnp.isfinite(l1))
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
    assert set(upd) == {"batch_stats"}
    # Drop-connect depends on the "dropout" rng in train mode (and only on it).
    (_, (f2, _)), _ = grad_fn(variables["params"], _key(3))
    assert any(not np.allclose(f1[l], f2[l]) for l in f1)
    (_, (f3, _)), _ = grad_fn(variables["params"], _key(2))
    assert all(np.array_equal(f1[l], f3[l]) for l in f1)


def test_tiny_without_drop_connect_ignores_rng():
    model = sn.spinenet_tiny(init_drop_connect_rate=None, activation="relu")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 64, 3)), jnp.float32)
    variables = _filled_variables(model, x)
    apply_train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key},
                                                        mutable=["batch_stats"])[0])
    a = apply_train(variables, x, _key(1))
    b = apply_train(variables, x, _key(2))
    assert all(np.array_equal(a[l], b[l]) for l in a)


def test_submodule_names_are_stable():
    variables = _abstract_variables(sn.spinenet_49(), 256)
    names = set(variables["params"])
    assert {"stem_conv", "stem_bn", "stem_block1_0", "stem_block2_0", "block0_0", "block14_0",
            "resample0_0", "resample14_1", "endpoint_conv_3", "endpoint_bn_7"} <= names
    # Stem group 1 projects (64 -> 256 channels), stem group 2 does not.
    assert "proj_conv" in variables["params"]["stem_block1_0"]
    assert "proj_conv" not in variables["params"]["stem_block2_0"]
    # A bottleneck parent's channel base is divided by 4 before alpha (REFERENCE §6.4):
    # row 0 takes stem block 1 (256 ch) -> int(64 * 0.5) = 32 channels.
    assert variables["params"]["resample0_0"]["reduce_conv"]["kernel"].shape == (1, 1, 256, 32)
    # Level 2 -> level 4 (row 1) uses the stride-2 conv (then a max-pool, which has no params).
    assert variables["params"]["resample1_0"]["down_conv"]["kernel"].shape == (3, 3, 32, 32)


def test_nearest_resize_follows_tf1_convention():
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    up = sn._resize_nearest(x, (6, 6))                    # integer factor: plain repeat
    assert np.array_equal(up[0, :, :, 0], np.repeat(np.repeat(np.arange(9.0).reshape(3, 3), 2, 0), 2, 1))
    odd = sn._resize_nearest(x, (7, 5))                   # src = floor(dst * in / out)
    rows, cols = [i * 3 // 7 for i in range(7)], [j * 3 // 5 for j in range(5)]
    assert np.array_equal(odd[0, :, :, 0], np.arange(9.0).reshape(3, 3)[np.ix_(rows, cols)])


def test_tiny_eval_forward_at_odd_non_square_size():
    model = sn.spinenet_tiny()
    h, w = 50, 75
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, h, w, 3)), jnp.float32)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(_filled_variables(model, x), x)
    for level, f in out.items():
        assert f.shape == (1, math.ceil(h / 2 ** level), math.ceil(w / 2 ** level), 32)
        assert bool(jnp.all(jnp.isfinite(f)))
