"""Every registered part builds by name; necks and heads compose; bad names fail with the name."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from stlib import config as cfg
from stlib.config import ModelParams
from stlib.models import registry
from stlib.models.registry import create_model
from tests.conftest import SMOKE


def _shapes(model, size=64):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))


@pytest.mark.parametrize("backbone", sorted(registry.BACKBONES))
def test_every_backbone_builds_a_detector_abstractly(backbone):
    neck = "identity" if registry.is_spinenet(backbone) else "fpn"
    model = create_model(ModelParams(backbone=backbone, neck=neck, head_convs=1), 3)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((1, 128, 128, 3)),
                                                        train=False)[0])
    cls, box = out
    assert sorted(cls) == [3, 4, 5, 6, 7]
    assert cls[3].shape == (1, 16, 16, 27) and box[7].shape == (1, 1, 1, 36)


@pytest.mark.parametrize("neck", ["fpn", "nasfpn"])
@pytest.mark.parametrize("head", ["retinanet", "segmentation", "classification"])
def test_necks_and_heads_compose(neck, head):
    mp = ModelParams(backbone="resnet-tiny", neck=neck, head=head, fpn_channels=16, head_convs=1,
                     head_channels=16, nasfpn_repeats=1)
    model = create_model(mp, 5)
    x = jnp.zeros((2, 64, 64, 3))
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x, train=False)[0])
    if head == "retinanet":
        assert out[0][3].shape == (2, 8, 8, 45)
    elif head == "segmentation":
        assert out.shape == (2, 16, 16, 5)          # REFERENCE §7.3: logits at stride 4
    else:
        assert out.shape == (2, 5)


def test_train_mode_takes_the_dropout_rng_the_train_step_passes():
    """Drop-connect needs the "dropout" rng in train mode (abstract; the families' own tests run them)."""
    for mp in (ModelParams(backbone="efficientnet-tiny", head_convs=1, fpn_channels=16, head_channels=16),
               ModelParams(backbone="spinenet-tiny", neck="identity", head_convs=1, head_channels=16,
                           activation="swish"),
               ModelParams(backbone="resnet-tiny", neck="nasfpn", nasfpn_repeats=2, fpn_channels=16,
                           head_convs=1, head_channels=16, separable_conv=True)):
        model = create_model(mp, 3)
        x = jnp.zeros((2, 64, 64, 3))
        variables = _shapes(model)
        (cls, box), _ = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                             rngs={"dropout": jax.random.PRNGKey(2)}), variables)
        assert cls[3].shape == (2, 8, 8, 27) and box[7].shape == (2, 1, 1, 36), mp.backbone


def test_efficientnet_keeps_its_own_batchnorm():
    """REFERENCE §5.2: the TPU wrapper passes EfficientNet no BN overrides; ResNet/SpineNet take the model's."""
    mp = ModelParams(backbone="efficientnet-b0", bn_momentum=0.9, bn_epsilon=0.5)
    assert "bn_epsilon" not in registry.create_backbone(mp).keywords
    mp = ModelParams(backbone="spinenet-49", bn_momentum=0.9, bn_epsilon=0.5, activation="swish")
    kw = registry.create_backbone(mp).keywords
    assert (kw["bn_momentum"], kw["bn_epsilon"], kw["activation"]) == (0.9, 0.5, "swish")


@pytest.mark.parametrize("override, message", [
    ("model.backbone=resnet-9000", r"model.backbone 'resnet-9000': unknown backbone \(known: resnet-tiny\|"),
    ("model.neck=bifpn", r"model.neck 'bifpn': unknown neck \(known: fpn\|nasfpn\|identity\)"),
    ("model.head=mask", r"model.head 'mask': unknown head \(known: retinanet\|segmentation\|classification\)"),
    ("model.activation=gelu", r"model.activation 'gelu': unknown activation \(known: relu\|swish\)"),
    ("model.neck=identity", "model.neck identity needs a backbone that outputs P3-P7"),
])
def test_choice_errors_name_the_key(override, message):
    p = cfg.load_params(SMOKE, [override])          # the names are the registries' to check
    with pytest.raises(cfg.ParamsError, match=message):
        from stlib import registry as reg
        reg.check_choices(p)


def test_identity_neck_is_fine_with_spinenet_or_without_retinanet_head():
    from stlib import registry as reg
    reg.check_choices(cfg.load_params(SMOKE, ["model.neck=identity", "model.backbone=spinenet-tiny"]))
    reg.check_choices(cfg.load_params(SMOKE, ["model.neck=identity", "model.head=segmentation"]))


def test_params_errors_name_the_key():
    with pytest.raises(cfg.ParamsError, match="no such checkpoint folder"):
        cfg.load_params(SMOKE, ["model.init=/no/such/folder"])


def test_model_registries_keep_mapping_lookups():
    assert "resnet50" in registry.BACKBONES and "fpn" in registry.NECKS and "retinanet" in registry.HEADS
    assert list(registry.ACTIVATIONS) == ["relu", "swish"] and registry.ACTIVATIONS is registry.activations.ACTIVATIONS
    fn, bn_from_model = registry.BACKBONES["resnet50"]
    assert bn_from_model and callable(fn)


def test_segmenter_preset_is_rejected_by_the_detector_and_trained_by_its_own_task():
    from stlib.tasks import task_for
    from stlib.tasks.detection import Detector
    from stlib.tasks.segmentation import SegmentationTask
    from stlib.train import sharding
    p = cfg.load_params(SMOKE, ["model.head=segmentation"])
    with pytest.raises(cfg.ParamsError, match="a Detector is a detection model"):
        Detector(p, 3, sharding.create_mesh())
    assert task_for(p) is SegmentationTask


def _bn_epsilons(model, size=64) -> dict:
    """{module path: epsilon} of every BatchNorm the model calls (abstractly)."""
    import flax.linen as nn
    seen = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            seen["/".join(context.module.path)] = context.module.epsilon
        return next_fun(*args, **kwargs)
    with nn.intercept_methods(record):
        _shapes(model, size)
    return seen


@pytest.mark.parametrize("head", ["retinanet", "segmentation"])
def test_backbone_bn_epsilon_reaches_the_backbone_only(head):
    """An imported init's epsilon (model.backbone_bn_epsilon) is every backbone BN's; the neck
    and the detection/segmentation heads keep model.bn_epsilon."""
    mp = ModelParams(backbone="resnet-tiny", head=head, fpn_channels=16, head_convs=1, head_channels=16,
                     bn_epsilon=1e-4, backbone_bn_epsilon=1e-5)
    eps = _bn_epsilons(create_model(mp, 3))
    backbone = {k: v for k, v in eps.items() if k.startswith("backbone/")}
    rest = {k: v for k, v in eps.items() if not k.startswith("backbone/")}
    assert len(backbone) >= 5 and set(backbone.values()) == {1e-5}
    assert rest and set(rest.values()) == {1e-4}, rest
    unset = _bn_epsilons(create_model(dataclasses.replace(mp, backbone_bn_epsilon=None), 3))
    assert set(unset.values()) == {1e-4}


def test_backbone_bn_epsilon_overrides_a_backbones_own():
    """EfficientNet and resnet50-keras bring their own epsilon; an imported init's replaces it
    (in EfficientNet's classifier head too: its top conv + BN come with the imported weights)."""
    own = _bn_epsilons(create_model(ModelParams(backbone="efficientnet-tiny", head="classification"), 3))
    assert set(own.values()) == {1e-3}
    mp = ModelParams(backbone="efficientnet-tiny", head="classification", backbone_bn_epsilon=2e-3)
    assert set(_bn_epsilons(create_model(mp, 3)).values()) == {2e-3}
    assert registry.create_backbone(ModelParams(backbone="resnet50-keras")).keywords["bn_epsilon"] == 1.001e-5
    mp = ModelParams(backbone="resnet50-keras", backbone_bn_epsilon=1e-5)
    assert registry.create_backbone(mp).keywords["bn_epsilon"] == 1e-5
