"""stlib.models.convolution: the im2col matrix product equals XLA's convolution (output and both
gradients), `Conv` keeps flax's parameters and names, and STLIB_CONV chooses."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from stlib.models import convolution as cv
from stlib.models.convolution import Conv, conv_impl, matmul_conv
from stlib.models.registry import create_model
from stlib.config import ModelParams

NHWC = ("NHWC", "HWIO", "NHWC")


# (input N, H, W, Cin), (kh, kw, Cout), strides, padding
CASES = [((2, 9, 11, 5), (3, 3, 7), (1, 1), "SAME"),
         ((2, 9, 11, 5), (3, 3, 7), (2, 2), "SAME"),
         ((2, 8, 8, 6), (1, 1, 4), (1, 1), "SAME"),
         ((2, 9, 9, 6), (1, 1, 4), (2, 2), "VALID"),
         ((1, 15, 13, 3), (7, 7, 8), (2, 2), ((3, 3), (3, 3))),
         ((2, 10, 10, 4), (3, 3, 4), (1, 2), "VALID")]


@pytest.mark.parametrize("xs, ks, strides, padding", CASES)
def test_matmul_equals_xla_with_both_gradients(xs, ks, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=xs), jnp.float32)
    w = jnp.asarray(rng.normal(size=(ks[0], ks[1], xs[3], ks[2])), jnp.float32)

    def xla(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)

    def mm(x, w):
        return matmul_conv(x, w, strides, padding)

    y_ref, y = xla(x, w), mm(x, w)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    dx_ref, dw_ref = jax.vjp(xla, x, w)[1](g)
    dx, dw = jax.vjp(mm, x, w)[1](g)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-3)


def test_conv_keeps_flax_parameters_and_names_and_stlib_conv_chooses(monkeypatch):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = Conv(6, (3, 3), strides=(2, 2))(x)
            x = Conv(4, (1, 1), use_bias=False, name="proj")(x)
            return Conv(4, (3, 3), feature_group_count=2)(x)   # grouped: always XLA's

    class Flax(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(6, (3, 3), strides=(2, 2))(x)
            x = nn.Conv(4, (1, 1), use_bias=False, name="proj")(x)
            return nn.Conv(4, (3, 3), feature_group_count=2)(x)

    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 12, 12, 3)), jnp.float32)
    v = Net().init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, Flax().init(jax.random.PRNGKey(0), x))
    want = Flax().apply(v, x)
    monkeypatch.setenv("STLIB_CONV", "xla")
    np.testing.assert_array_equal(Net().apply(v, x), want)
    monkeypatch.setenv("STLIB_CONV", "matmul")
    used = []
    monkeypatch.setattr(cv, "matmul_conv", lambda *a, **k: used.append(a[1].shape) or matmul_conv(*a, **k))
    np.testing.assert_allclose(Net().apply(v, x), want, rtol=1e-5, atol=1e-5)
    assert used == [(3, 3, 3, 6), (1, 1, 6, 4)]   # the grouped one went to XLA
    monkeypatch.setenv("STLIB_CONV", "im2col")
    with pytest.raises(ValueError, match="STLIB_CONV='im2col': one of xla, matmul"):
        conv_impl()


def test_a_detector_gives_the_same_outputs_either_way(monkeypatch):
    """resnet-tiny RetinaNet (stem 7x7/2, 1x1 and 3x3 convolutions, FPN, heads): one set of
    variables, the same outputs under STLIB_CONV=xla and =matmul."""
    model = create_model(ModelParams(backbone="resnet-tiny", fpn_channels=16, head_convs=1, head_channels=16), 3)
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 64, 64, 3)), jnp.float32)
    v = model.init(jax.random.PRNGKey(0), x, train=False)
    outs = {}
    for impl in ("xla", "matmul"):
        monkeypatch.setenv("STLIB_CONV", impl)
        outs[impl] = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    for a, b in zip(jax.tree.leaves(outs["xla"]), jax.tree.leaves(outs["matmul"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
