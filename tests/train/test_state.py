"""Optimizer, schedule and early stopping (Sec. 3.2 settings), without training."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stlib.config import TrainParams
from stlib.train.loop import early_stop_due
from stlib.train.optimizers import create_optimizer, kernel_mask, learning_rate_schedule


def test_schedule_is_linear_warmup_then_cosine_to_zero():
    tp = TrainParams()  # Sec. 3.2: 0.0032 -> 0.32 over 1000 steps, cosine over 45k
    lr = learning_rate_schedule(tp)
    assert float(lr(0)) == pytest.approx(0.0032, rel=1e-5)
    assert float(lr(500)) == pytest.approx(0.0032 + 0.5 * (0.32 - 0.0032), rel=1e-5)
    assert float(lr(1000)) == pytest.approx(0.32, rel=1e-5)
    mid = 1000 + (45000 - 1000) / 2
    assert float(lr(mid)) == pytest.approx(0.16, rel=1e-4)
    assert float(lr(45000)) == pytest.approx(0.0, abs=1e-7)


def test_spinenets_step_schedule_after_warmup():
    """REFERENCE §4.6, SpineNet-190's config: warmup 2000, 0.3 -> 0.03 -> 0.003 at 171310 / 180570,
    each level from its boundary step on; jitted as the train step uses it."""
    tp = TrainParams(steps=185200, warmup_steps=2000, warmup_init_lr=0.003, base_lr=0.3, lr_schedule="step",
                     lr_boundaries=(171310, 180570), lr_levels=(0.03, 0.003))
    lr = jax.jit(learning_rate_schedule(tp))
    got = [float(lr(s)) for s in (0, 1000, 2000, 171309, 171310, 180569, 180570, 185199)]
    assert got == pytest.approx([0.003, 0.1515, 0.3, 0.3, 0.03, 0.03, 0.003, 0.003], rel=1e-5)


def test_step_schedule_params_are_checked():
    from stlib import config as cfg
    base = ["train.steps=100", "train.warmup_steps=10"]
    with pytest.raises(cfg.ParamsError, match=r"train.lr_boundaries must be increasing steps in \[train.warmup_steps=10"):
        cfg.load_params("params/smoke/retinanet.yaml", base + ["train.lr_schedule=step", "train.lr_boundaries=[80, 50]",
                                                               "train.lr_levels=[0.1, 0.01]"])
    with pytest.raises(cfg.ParamsError, match=r"train.lr_levels must be one learning rate >= 0 per train.lr_boundaries \(1\)"):
        cfg.load_params("params/smoke/retinanet.yaml", base + ["train.lr_schedule=step", "train.lr_boundaries=[50]"])
    with pytest.raises(cfg.ParamsError, match=r"with lr_schedule step"):
        cfg.load_params("params/smoke/retinanet.yaml", base + ["train.lr_boundaries=[50]", "train.lr_levels=[0.1]"])


def test_weight_decay_only_on_kernels_and_clipping():
    params = {"conv": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))}, "bn": {"scale": jnp.ones((3,))}}
    assert jax.tree.leaves(kernel_mask(params)) == [False, False, True]  # bn.scale, conv.bias, conv.kernel
    tp = TrainParams(weight_decay=0.1, momentum=0.0, warmup_steps=0, warmup_init_lr=1.0, base_lr=1.0, steps=10)
    tx = create_optimizer(tp)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert np.allclose(updates["conv"]["kernel"], -0.1) and np.allclose(updates["conv"]["bias"], 0)
    assert np.allclose(updates["bn"]["scale"], 0)
    clipped = create_optimizer(TrainParams(weight_decay=0.0, grad_clip_norm=1.0, momentum=0.0, warmup_steps=0,
                                           warmup_init_lr=1.0, base_lr=1.0, steps=10))
    big = jax.tree.map(lambda x: 100 * jnp.ones_like(x), params)
    updates, _ = clipped.update(big, clipped.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


def test_early_stopping_counts_evaluations_without_gain():
    ev = lambda *aps: [{"AP": a} for a in aps]
    assert not early_stop_due(ev(0.1, 0.2, 0.3), 2)
    assert not early_stop_due(ev(0.3, 0.2), 2)
    assert early_stop_due(ev(0.3, 0.2, 0.25), 2)
    assert not early_stop_due(ev(0.3, 0.2, 0.25), 0)  # 0 = off
    assert early_stop_due(ev(None, 0.1, None, None), 2)  # NaN AP (logged as null) is no gain
