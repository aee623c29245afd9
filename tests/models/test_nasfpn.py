"""NAS-FPN neck: published decoder sizes (abstract init only), odd-size shapes, cell wiring."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.models.nasfpn import NASFPN, NASFPN_BLOCK_SPECS, global_attention
from stlib.train.state import count_params


def _abstract_params(model, feats, **kw):
    """Parameter tree shapes via jax.eval_shape: nothing paper-sized is allocated."""
    shapes = jax.eval_shape(lambda f: model.init(jax.random.PRNGKey(0), f, train=False, **kw), feats)
    return shapes


def _feat_specs(size, channels: dict):
    return {l: jax.ShapeDtypeStruct((1, -(-size // 2 ** l), -(-size // 2 ** l), c), jnp.float32)
            for l, c in channels.items()}


@pytest.mark.parametrize("name, channels, published", [
    # REFERENCE §5.3/§5.4 endpoint channels; §7.4 derived NAS-FPN sizes (7 cells, separable, 256).
    ("efficientnet-b7", {3: 80, 4: 224, 5: 640}, 3.61e6),
    ("efficientnet-l2", {3: 176, 4: 480, 5: 1376}, 3.89e6),
])
def test_segmentation_nasfpn_size_matches_reference(name, channels, published):
    model = NASFPN(channels=256, num_repeats=7, use_separable_conv=True)
    shapes = _abstract_params(model, _feat_specs(512, channels))
    n = count_params(shapes["params"])
    print(f"{name} NAS-FPN params {n} vs {published:.0f}: ratio {n / published:.4f}")
    assert n == pytest.approx(published, rel=0.01)
    # Input projections are separable 1x1 convs (TPU passes its conv op to the resampler too).
    proj = shapes["params"]["input_proj_5"]["proj"]
    assert proj["depthwise"]["kernel"].shape == (1, 1, 1, channels[5])
    assert proj["pointwise"]["kernel"].shape == (1, 1, channels[5], 256)
    cell_convs = [k for k in shapes["params"] if k.endswith("_conv")]
    assert len(cell_convs) == 7 * len(NASFPN_BLOCK_SPECS)


def test_detection_default_nasfpn_size_and_retinanet_r50_total():
    """Detection default (5 cells, plain convs) on ResNet-50 C3-C5; and the TPU MODEL_ZOO
    RetinaNet R50-NAS-FPN (60.3M), which is only reached with the 7-cell NAS-FPN."""
    from stlib.models.backbones import resnet
    from stlib.models.retinanet import RetinaNetHead

    r50 = {3: 512, 4: 1024, 5: 2048}
    n5 = count_params(_abstract_params(NASFPN(num_repeats=5), _feat_specs(640, r50))["params"])
    n7 = count_params(_abstract_params(NASFPN(num_repeats=7), _feat_specs(640, r50))["params"])
    backbone = count_params(jax.eval_shape(lambda: resnet.resnet50().init(
        jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))["params"])
    # TPU's class predictor has 91 columns (90 COCO classes + an always-negative background).
    head = count_params(_abstract_params(RetinaNetHead(num_classes=91), _feat_specs(640, {l: 256 for l in range(3, 8)}))
                        ["params"])
    print(f"NAS-FPN 5 cells (R50 inputs, non-separable): {n5}; 7 cells: {n7}; "
          f"R50 {backbone} + head {head} -> totals {backbone + n5 + head} / {backbone + n7 + head} "
          f"(MODEL_ZOO R50-NAS-FPN 60.3M: ratio {(backbone + n7 + head) / 60.3e6:.4f})")
    per_node = 3 * 3 * 256 * 256 + 256 + 2 * 256
    proj = (512 + 1024 + 2048) * 256 + 3 * 256 + 3 * 2 * 256
    assert n5 == 5 * 7 * per_node + proj
    assert n7 == 7 * 7 * per_node + proj
    assert backbone + n7 + head == pytest.approx(60.3e6, rel=0.01)


def _features(key, size, channels):
    keys = jax.random.split(key, len(channels))
    return {l: jax.random.normal(k, (2, -(-size // 2 ** l), -(-size // 2 ** l), c))
            for k, (l, c) in zip(keys, channels.items())}


def test_forward_odd_size_shapes_and_finite():
    # A 200x200 image: C2..C5 of sides 50, 25, 13, 7 (C2 must be ignored; C4 already has 16 ch).
    feats = _features(jax.random.PRNGKey(0), 200, {2: 8, 3: 12, 4: 16, 5: 20})
    model = NASFPN(channels=16, num_repeats=2, use_separable_conv=True)

    @jax.jit   # one compilation for init + both modes (the CPU test budget is mostly compile time)
    def run(f):
        variables = model.init(jax.random.PRNGKey(1), f, train=False)
        out_eval = model.apply(variables, f, train=False)
        out_train, updates = model.apply(variables, f, train=True, mutable=["batch_stats"])
        return variables, out_eval, out_train, updates

    variables, out_eval, out_train, updates = run(feats)
    names = set(variables["params"])
    assert {"input_proj_3", "input_proj_5"} <= names and not {"input_proj_2", "input_proj_4"} & names
    assert "cell1_node6_conv" in names and "cell2_node0_conv" not in names
    expected = {3: 25, 4: 13, 5: 7, 6: 4, 7: 2}
    for out in (out_eval, out_train):
        assert sorted(out) == [3, 4, 5, 6, 7]
        for l, s in expected.items():
            assert out[l].shape == (2, s, s, 16)
            assert bool(jnp.all(jnp.isfinite(out[l])))
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    # train mode normalizes with batch statistics, eval with the (initial) running ones
    assert float(jnp.max(jnp.abs(out_train[3] - out_eval[3]))) > 1e-3


def test_global_attention_matches_numpy():
    rng = np.random.RandomState(0)
    a = rng.randn(2, 3, 5, 4).astype(np.float32)
    b = rng.randn(2, 3, 5, 4).astype(np.float32)
    gate = 1.0 / (1.0 + np.exp(-a.max(axis=(1, 2), keepdims=True)))
    np.testing.assert_allclose(np.asarray(global_attention(a, b)), a + b * gate, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def one_cell():
    """A 1-cell NAS-FPN fed P3..P7 directly (8 channels each, so no input projections)."""
    feats = _features(jax.random.PRNGKey(2), 128, {l: 8 for l in range(3, 8)})
    model = NASFPN(channels=8, num_repeats=1)
    return model, model.init(jax.random.PRNGKey(3), feats, train=False), feats


def test_cell_consumes_every_input_level(one_cell):
    """Node specs never read P5 and P7 directly; the zero-out-degree rule adds them into the
    level-5 and level-7 output nodes, so every input level influences the cell output."""
    model, variables, feats = one_cell
    assert not any(k.startswith("input_proj") for k in variables["params"])
    base = model.apply(variables, feats, train=False)
    for l in range(3, 8):
        out = model.apply(variables, {**feats, l: feats[l] + 1.0}, train=False)
        assert max(float(jnp.max(jnp.abs(out[k] - base[k]))) for k in out) > 1e-4, l


def test_attention_gates_with_the_coarser_input(one_cell, monkeypatch):
    """Node 0 merges P4 and P6 at level 4 by attention: A must be the (nearest x4 upsampled,
    hence 4x4 block-constant) P6 and B the P4. `use_sum_for_combination` removes all 4
    attention merges of a cell."""
    import stlib.models.nasfpn as nasfpn
    model, variables, feats = one_cell
    calls = []

    def recording(a, b):
        calls.append((a, b))
        return global_attention(a, b)

    monkeypatch.setattr(nasfpn, "global_attention", recording)
    model.apply(variables, feats, train=False)
    assert len(calls) == sum(spec[1] == "attention" for spec in NASFPN_BLOCK_SPECS) == 4
    a, b = calls[0]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(jnp.repeat(jnp.repeat(feats[6], 4, 1), 4, 2)))
    np.testing.assert_array_equal(np.asarray(b), np.asarray(feats[4]))
    calls.clear()
    model.clone(use_sum_for_combination=True).apply(variables, feats, train=False)
    assert calls == []
