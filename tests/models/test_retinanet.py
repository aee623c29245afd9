import jax
import jax.numpy as jnp
import pytest

from stlib.config import ModelParams
from stlib.data.anchors import AnchorConfig, flatten_level_outputs, generate_anchors
from stlib.models.backbones import resnet
from stlib.models.registry import BACKBONES, create_model
from stlib.train.state import count_params


def test_resnet50_size_matches_published_abstractly():
    """ResNet-50 without its classifier: 25.56M published minus the 2048x1000 FC (2.05M) = 23.51M."""
    model = resnet.resnet50()
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
    n = count_params(shapes["params"])
    assert n == pytest.approx(23.51e6, rel=0.005)


@pytest.mark.parametrize("size", [64, 96])
def test_retinanet_outputs_align_with_anchors(size):
    mp = ModelParams(backbone="resnet-tiny", fpn_channels=16, head_convs=1, head_channels=16)
    model = create_model(mp, num_classes=5)
    x = jnp.zeros((2, size, size, 3))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    cls, box = model.apply(variables, x, train=False)
    anchors = generate_anchors((size, size), AnchorConfig())
    assert flatten_level_outputs(cls, 5).shape == (2, len(anchors), 5)
    assert flatten_level_outputs(box, 4).shape == (2, len(anchors), 4)
    # REFERENCE §4.3: prior-probability bias -> initial scores near 0.01
    p = jax.nn.sigmoid(flatten_level_outputs(cls, 5))
    assert float(jnp.mean(p)) == pytest.approx(0.01, rel=0.05)


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="model.backbone 'resnet-9000': unknown backbone"):
        create_model(ModelParams(backbone="resnet-9000"), 3)
    assert {"resnet-tiny", "resnet-mini", "resnet50", "resnet101"} <= set(BACKBONES)
