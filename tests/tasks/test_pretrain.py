"""Supervised pre-training pieces: the loss against its formula, params checks."""
import re

import jax.numpy as jnp
import numpy as np
import pytest

from stlib import config as cfg
from stlib.losses import classification_loss


def test_classification_loss_matches_the_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    weight = np.array([1, 1, 1, 0, 1], np.float32)          # the 4th is padding
    eps = 0.1
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.eye(4)[labels] * (1 - eps) + eps / 4
    want = -(target * logp).sum(-1)[weight == 1].mean()
    acc = (logits.argmax(-1) == labels)[weight == 1].mean()
    loss, got_acc = classification_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weight), eps)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(got_acc) == pytest.approx(acc)


def test_an_unknown_pretrain_method_names_the_registered_ones():
    from stlib import registry
    import stlib.tasks  # noqa: F401  (the tasks register their methods)
    want = "pretrain.method 'byol': unknown pre-training method (known: supervised|noisy_student|simclr)"
    with pytest.raises(cfg.ParamsError, match=re.escape(want)):
        registry.check_choices(cfg.load_params("params/smoke/pretrain.yaml", ["pretrain.method=byol"]))


@pytest.mark.parametrize("override, message", [
    ("pretrain.image_size=50", "must be a multiple of 32"),
])
def test_pretrain_params_errors_name_the_key(override, message):
    with pytest.raises(cfg.ParamsError, match=message):
        cfg.load_params("params/smoke/pretrain.yaml", [override])


def test_pretrain_augment_is_a_registered_policy():
    from stlib import registry
    p = cfg.load_params("params/smoke/pretrain.yaml", ["pretrain.augment=mixup"])
    with pytest.raises(cfg.ParamsError, match=r"pretrain.augment 'mixup': unknown classification augment policy "
                                               r"\(known: flip_crop\|randaugment\)"):
        registry.check_choices(p)


def test_pretraining_refuses_a_detection_head():
    from stlib.tasks.pretrain import PretrainTask
    with pytest.raises(cfg.ParamsError, match="model.head classification"):
        PretrainTask(cfg.load_params("params/smoke/pretrain.yaml", ["model.head=retinanet"]))
