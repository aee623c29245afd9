"""The depthwise convolution computed as taps equals XLA's grouped convolution (the independent
reference): outputs and both gradients, for strides 1 and 2, kernels 3 and 5, odd and even sizes,
float32 and bfloat16; and the layer keeps flax.linen.Conv's parameter, so checkpoints and imported
weights are the same either way."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.models.depthwise import (DepthwiseConv, depthwise_conv, depthwise_taps, forced, resolve_impl,
                                   same_padding)


@pytest.mark.parametrize("size, k, stride", [(9, 3, 1), (9, 3, 2), (8, 5, 2), (7, 5, 1), (4, 3, 2), (3, 5, 2)])
def test_taps_equal_xla_grouped_convolution_with_gradients(size, k, stride):
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(size * 10 + k + stride), 3)
    x = jax.random.normal(kx, (2, size, size + 1, 6))
    w = jax.random.normal(kw, (k, k, 1, 6))
    ref, ours = depthwise_conv(x, w, stride), depthwise_taps(x, w, stride)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, ref.shape)
    grads = [jax.grad(lambda x, w, f=f: jnp.sum(f(x, w, stride) * g), (0, 1))(x, w)
             for f in (depthwise_conv, depthwise_taps)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_bfloat16_keeps_its_dtype_and_accumulates_in_float32():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 4)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 1, 4)).astype(jnp.bfloat16)
    out = depthwise_taps(x, w, 1)
    assert out.dtype == jnp.bfloat16
    exact = depthwise_conv(x.astype(jnp.float32), w.astype(jnp.float32), 1)
    np.testing.assert_allclose(out.astype(jnp.float32), exact, rtol=2e-2, atol=2e-2)


def test_same_padding_is_xlas():
    assert same_padding(9, 3, 1) == (1, 1)
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(9, 5, 2) == (2, 2)
    assert same_padding(3, 5, 2) == (2, 2)


def test_layer_has_flax_convs_parameter_and_output_in_both_impls():
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 10, 10, 8))
    flax_conv = nn.Conv(8, (3, 3), (2, 2), padding="SAME", feature_group_count=8, use_bias=False)
    variables = flax_conv.init(jax.random.PRNGKey(3), x)
    for impl in ("conv", "taps"):
        layer = DepthwiseConv(3, 2, impl=impl)
        mine = layer.init(jax.random.PRNGKey(3), x)
        assert jax.tree.map(jnp.shape, mine) == jax.tree.map(jnp.shape, variables)
        np.testing.assert_allclose(layer.apply(variables, x), flax_conv.apply(variables, x), rtol=1e-5, atol=1e-5)
    assert resolve_impl("auto") == ("taps" if jax.default_backend() == "cpu" else "conv")


def test_environment_chooses_for_every_layer(monkeypatch):
    monkeypatch.setenv("STLIB_DEPTHWISE", "conv")
    assert resolve_impl() == "conv" and resolve_impl("taps") == "taps"
    with forced("taps"):
        assert resolve_impl() == "taps"
    assert resolve_impl() == "conv"
    monkeypatch.setenv("STLIB_DEPTHWISE", "winograd")
    with pytest.raises(ValueError, match="depthwise impl"):
        resolve_impl()
