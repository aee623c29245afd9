"""Noisy Student pieces: pseudo-label selection, the soft loss, the student's noise."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlib import config as cfg
from stlib.losses import soft_cross_entropy
from stlib.pseudo.classification import select_pseudo_labels


def test_selection_drops_unconfident_images_and_balances_classes():
    probs = np.array([
        [0.9, 0.1, 0.0],   # class 0, confident
        [0.8, 0.2, 0.0],   # class 0
        [0.7, 0.3, 0.0],   # class 0
        [0.6, 0.4, 0.0],   # class 0
        [0.1, 0.9, 0.0],   # class 1
        [0.0, 0.1, 0.9],   # class 2
        [0.4, 0.35, 0.25],  # class 0 but below 0.5: dropped
    ])
    keep = select_pseudo_labels(probs, 0.5, balance=False)
    np.testing.assert_array_equal(keep, [0, 1, 2, 3, 4, 5])
    bal = select_pseudo_labels(probs, 0.5, balance=True)
    # 6 kept over 3 classes -> 2 per class: class 0 keeps its 2 most confident, 1 and 2 repeat theirs
    np.testing.assert_array_equal(bal, [0, 1, 4, 4, 5, 5])
    assert len(select_pseudo_labels(probs, 0.95, balance=True)) == 0


def test_soft_cross_entropy_matches_the_formula_and_masks_padding():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [9.0, 9.0, 9.0]])
    targets = jnp.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    weight = jnp.array([1.0, 1.0, 0.0])
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(1, keepdims=True)
    want = -(np.asarray(targets)[:2] * np.log(p[:2])).sum(1).mean()
    np.testing.assert_allclose(float(soft_cross_entropy(logits, targets, weight)), want, rtol=1e-6)


def test_resnet_drop_path_is_noise_in_training_only():
    from stlib.models.registry import create_model
    mp = cfg.load_params("params/smoke/noisy_student.yaml").model
    model = create_model(mp, num_classes=5)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    # non-zero BN scales so the residual branches matter (zero-init bn2 would hide drop path)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.ones_like(v) if p[-1].key == "scale" else v, variables)
    ev1 = model.apply(variables, x, train=False)
    ev2 = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(ev1, ev2)
    outs = [model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(k)})[0]
            for k in range(2)]
    assert not np.allclose(outs[0], outs[1])   # dropout 0.5 + stochastic depth 0.2: different draws differ
    quiet = create_model(cfg.load_params("params/smoke/noisy_student.yaml",
                                         ["model.drop_path_rate=0.0", "model.classifier_dropout=0.0"]).model, 5)
    q = [quiet.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(k)})[0]
         for k in range(2)]
    np.testing.assert_allclose(q[0], q[1], rtol=1e-6)


@pytest.mark.parametrize("override,message", [
    ("pretrain.teacher=", "pretrain.teacher is required"),
    ("pretrain.pseudo_label=argmax", "pretrain.pseudo_label must be soft|hard"),
    ("pretrain.pseudo_share=1.0", "pretrain.pseudo_share must be in"),
    ("model.drop_path_rate=1.0", "model.drop_path_rate must be in"),
])
def test_noisy_student_params_errors_name_the_key(override, message):
    with pytest.raises(cfg.ParamsError, match=message):
        cfg.load_params("params/smoke/noisy_student.yaml", [override])


def test_a_teacher_that_is_not_a_classifier_run_is_refused_before_work(tmp_path):
    from stlib.experiments.assemble import build_task
    run = tmp_path / "smoke-retinanet-0000000000"
    run.mkdir()
    (run / "params.yaml").write_text(cfg.dump_params(cfg.load_params("params/smoke/retinanet.yaml")))
    p = cfg.load_params("params/smoke/noisy_student.yaml", [f"pretrain.teacher={run}"])
    with pytest.raises(cfg.ParamsError, match="not a classifier"):
        build_task(p, progress=False)
