"""SimCLR training pieces: NT-Xent against a loop over anchors, padding, the model's parameter
tree and outputs, LARS exclusions against a hand-computed step, the linear probe."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib.config import ModelParams
from stlib.models.registry import create_backbone
from stlib.train.optimizers import lars_mask, lars_optimizer
from stlib.eval.linear_probe import linear_probe
from stlib.losses import nt_xent_loss
from stlib.models.simclr import ProjectionHead, SimCLRModel

loss_fn = jax.jit(nt_xent_loss)


def _key(seed):
    """Init keys for the model tests: "rbg" keys, because initialising with threefry keys compiles
    a sampler per parameter shape (seconds on a busy 2-core CPU); the values do not matter here."""
    return jax.random.key(seed, impl="rbg")


def _nt_xent_loops(z1, z2, temperature, weight=None):
    """The paper's eq. 1 written out: for every valid anchor, -log of its positive's share of
    exp(cos / tau) over every other valid embedding; mean over anchors. Also top-1 hits."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    n = len(z1)
    w = np.ones(n) if weight is None else np.asarray(weight)
    w2 = np.concatenate([w, w])
    losses, hits = [], []
    for a in range(2 * n):
        if not w2[a]:
            continue
        pos = a + n if a < n else a - n
        sims = {}
        for k in range(2 * n):
            if k != a and w2[k]:
                sims[k] = z[a] @ z[k] / (np.linalg.norm(z[a]) * np.linalg.norm(z[k])) / temperature
        denom = sum(np.exp(s) for s in sims.values())
        losses.append(-np.log(np.exp(sims[pos]) / denom))
        hits.append(max(sims, key=sims.get) == pos)
    return np.mean(losses), np.mean(hits)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_the_loop(temperature):
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(3, 4)).astype(np.float32)
    z2 = (z1 + 0.8 * rng.normal(size=(3, 4))).astype(np.float32)
    z2[2] = rng.normal(size=4) * 3.0                           # one pair far apart: not every anchor hits
    want_loss, want_acc = _nt_xent_loops(z1, z2, temperature)
    loss, metrics = loss_fn(z1, z2, temperature)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(metrics["contrast_accuracy"]) == pytest.approx(want_acc)
    assert loss.dtype == jnp.float32


def test_padding_equals_the_smaller_batch():
    rng = np.random.default_rng(1)
    z1 = rng.normal(size=(4, 5)).astype(np.float32)
    z2 = rng.normal(size=(4, 5)).astype(np.float32)
    z1[1], z2[1] = 50.0 * z1[0], 50.0 * z2[3]                  # padding: arbitrary values
    weight = np.array([1, 0, 1, 1], np.float32)
    keep = weight == 1
    loss, metrics = loss_fn(z1, z2, 0.2, weight)
    small, small_metrics = loss_fn(z1[keep], z2[keep], 0.2)
    assert float(loss) == pytest.approx(float(small), rel=1e-5)
    assert float(loss) == pytest.approx(_nt_xent_loops(z1, z2, 0.2, weight)[0], rel=1e-5)
    assert float(metrics["contrast_accuracy"]) == pytest.approx(float(small_metrics["contrast_accuracy"]))
    # The padded rows get no gradient.
    g1, g2 = jax.jit(jax.grad(lambda a, b: nt_xent_loss(a, b, 0.2, weight)[0], argnums=(0, 1)))(z1, z2)
    assert np.abs(g1[1]).max() == 0 and np.abs(g2[1]).max() == 0
    assert np.abs(g1[0]).max() > 0


def test_matching_views_give_a_lower_loss():
    rng = np.random.default_rng(2)
    z1 = rng.normal(size=(8, 16)).astype(np.float32)
    aligned, aligned_metrics = loss_fn(z1, z1, 0.5)
    unrelated, _ = loss_fn(z1, rng.normal(size=(8, 16)).astype(np.float32), 0.5)
    assert float(aligned) < float(unrelated)
    assert float(aligned_metrics["contrast_accuracy"]) == 1.0


def test_nt_xent_refuses_bad_input():
    z = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(z, z, 0.0)
    with pytest.raises(ValueError, match="z1, z2"):
        nt_xent_loss(z, z[:2], 0.1)


# ----------------------------------------------------------------------------- model

def test_projection_head_layout():
    head = ProjectionHead(num_layers=3, out_dim=6)
    x = np.random.default_rng(0).normal(size=(16, 10)).astype(np.float32)
    variables = head.init(_key(1), x, train=False)
    shapes = jax.tree.map(jnp.shape, variables["params"])
    # Dense layers without bias, hidden width = input width; BN with beta except the last.
    assert shapes == {"dense_0": {"kernel": (10, 10)}, "dense_1": {"kernel": (10, 10)},
                      "dense_2": {"kernel": (10, 6)},
                      "bn_0": {"scale": (10,), "bias": (10,)}, "bn_1": {"scale": (10,), "bias": (10,)},
                      "bn_2": {"scale": (6,)}}
    z, _ = head.apply(variables, x, train=True, mutable=["batch_stats"])
    # Last layer: batch-normalized, no ReLU -> per-feature mean 0, std 1, negative values present.
    assert z.shape == (16, 6) and z.dtype == jnp.float32
    # (std a little under 1: BN's epsilon 1e-5 against variances ~1e-3 from the N(0, 0.01^2) kernels.)
    np.testing.assert_allclose(np.mean(z, 0), 0.0, atol=1e-5)
    assert np.all(np.std(z, 0) > 0.9) and np.all(np.std(z, 0) <= 1.0 + 1e-4) and np.any(z < 0)
    wide = ProjectionHead(hidden_dim=7, out_dim=3)
    shapes = jax.tree.map(jnp.shape, jax.eval_shape(lambda: wide.init(jax.random.key(0), x, train=False))["params"])
    assert shapes["dense_0"]["kernel"] == (10, 7) and shapes["dense_1"]["kernel"] == (7, 3)


class _TwoLevel(nn.Module):
    """A 2-conv stand-in backbone: {2: stride-2 features, 3: stride-4 features}."""
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        c2 = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3), (2, 2))(x)))
        c3 = nn.Conv(5, (3, 3), (2, 2))(c2)
        return {2: c2, 3: c3}


def test_simclr_model_outputs_and_loadable_backbone():
    model = SimCLRModel(backbone=_TwoLevel, projection=functools.partial(ProjectionHead, out_dim=3))
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
    variables = model.init(_key(1), x, train=False)
    assert set(variables["params"]) == {"backbone", "projection"}
    assert set(variables["batch_stats"]) == {"backbone", "projection"}
    h, z = model.apply(variables, x, train=False)
    assert h.shape == (4, 5) and z.shape == (4, 3) and h.dtype == z.dtype == jnp.float32
    # The "backbone" subtree runs on its own, as a detector loading it would run it.
    sub = {"params": variables["params"]["backbone"], "batch_stats": variables["batch_stats"]["backbone"]}
    feats = _TwoLevel().apply(sub, x, train=False)
    np.testing.assert_allclose(h, np.asarray(feats[3]).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    head = {"params": variables["params"]["projection"], "batch_stats": variables["batch_stats"]["projection"]}
    np.testing.assert_allclose(z, ProjectionHead(out_dim=3).apply(head, h, train=False), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.apply(variables, x, method=SimCLRModel.features), h, rtol=1e-6)
    (_, z_train), new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert z_train.shape == (4, 3) and set(new["batch_stats"]) == {"backbone", "projection"}


def test_simclr_model_on_a_registry_backbone():
    backbone = create_backbone(ModelParams(backbone="resnet-tiny"))
    model = SimCLRModel(backbone=backbone, projection=functools.partial(ProjectionHead, out_dim=8))
    (h, z), variables = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False))
    assert set(variables["params"]) == {"backbone", "projection"}
    assert h.shape == (2, 32) and z.shape == (2, 8)            # resnet-tiny's last width is 32
    assert variables["params"]["projection"]["dense_0"]["kernel"].shape == (32, 32)


# ----------------------------------------------------------------------------- LARS

def _tree(rng):
    return {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
            "bn": {"scale": rng.normal(size=(4,)).astype(np.float32), "bias": rng.normal(size=(4,)).astype(np.float32)},
            "dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                      "bias": rng.normal(size=(3,)).astype(np.float32)}}


def test_lars_excludes_bn_and_biases_from_decay_and_trust_ratio():
    rng = np.random.default_rng(0)
    params, grads = _tree(rng), _tree(rng)
    lr, wd, eta = 0.5, 0.01, 0.001
    tx = lars_optimizer(lr, wd, momentum=0.9, trust_coefficient=eta)
    updates, _ = tx.update(grads, tx.init(params), params)
    for name in ("conv", "dense"):                             # kernels: decay, then trust ratio
        p, g = params[name]["kernel"].astype(np.float64), grads[name]["kernel"].astype(np.float64)
        d = g + wd * p
        want = -lr * eta * np.linalg.norm(p) / np.linalg.norm(d) * d
        np.testing.assert_allclose(updates[name]["kernel"], want, rtol=1e-5)
    for name, leaf in (("bn", "scale"), ("bn", "bias"), ("dense", "bias")):  # plain SGD
        np.testing.assert_allclose(updates[name][leaf], -lr * grads[name][leaf], rtol=1e-6)


def test_lars_momentum_and_schedule():
    rng = np.random.default_rng(1)
    params = _tree(rng)
    g1, g2 = _tree(rng), _tree(rng)
    tx = lars_optimizer(lambda count: 0.1 * (count + 1), 0.0, momentum=0.9)
    state = tx.init(params)
    u1, state = tx.update(g1, state, params)
    u2, _ = tx.update(g2, state, params)
    b1, b2 = g1["dense"]["bias"], g2["dense"]["bias"]
    np.testing.assert_allclose(u2["dense"]["bias"], 0.9 * (-0.1 * b1) - 0.2 * b2, rtol=1e-5)


def test_lars_mask_on_a_flax_tree():
    variables = jax.eval_shape(lambda: ProjectionHead(out_dim=3).init(jax.random.key(0), jnp.zeros((2, 5)),
                                                                      train=False))
    mask = lars_mask(variables["params"])
    assert mask == {"dense_0": {"kernel": True}, "dense_1": {"kernel": True},
                    "bn_0": {"scale": False, "bias": False}, "bn_1": {"scale": False}}


# ----------------------------------------------------------------------------- linear probe

def _blobs(rng, centers, n):
    y = rng.integers(0, len(centers), n)
    x = centers[y] + rng.normal(size=(n, centers.shape[1])) + 7.0     # offset: standardization must cope
    return x.astype(np.float32), y


def test_linear_probe_separable_features():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 4.0
    xt, yt = _blobs(rng, centers, 300)
    xv, yv = _blobs(rng, centers, 300)
    out = linear_probe(xt, yt, xv, yv, 4)
    assert set(out) == {"linear_top1", "linear_train_top1"}
    assert isinstance(out["linear_top1"], float) and isinstance(out["linear_train_top1"], float)
    assert out["linear_train_top1"] >= 0.99 and out["linear_top1"] >= 0.99


def test_linear_probe_random_labels_stay_near_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 16)).astype(np.float32)
    y = rng.integers(0, 4, 600)
    out = linear_probe(x[:300], y[:300], x[300:], y[300:], 4)
    assert out["linear_top1"] < 0.5


def test_linear_probe_refuses_bad_labels():
    x = np.zeros((6, 3), np.float32)
    with pytest.raises(ValueError, match="train_labels"):
        linear_probe(x, np.array([0, 1, -1, 0, 1, 0]), x, np.zeros(6, int), 2)
    with pytest.raises(ValueError, match="val_labels"):
        linear_probe(x, np.zeros(6, int), x, np.array([0, 1, 2, 0, 1, 0]), 2)
    with pytest.raises(ValueError, match="val_feats"):
        linear_probe(x, np.zeros(6, int), np.zeros((6, 4), np.float32), np.zeros(6, int), 2)
