"""What an imported folder says about its numbers (BatchNorm epsilon), and who must follow it."""
from __future__ import annotations

import json

import pytest

from stlib import config as cfg
from stlib.config import ModelParams
from stlib.models import weight_import as wi
from tests.conftest import SMOKE


def _folder(tmp_path, **meta):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / wi.META_FILE).write_text(json.dumps(meta))
    return tmp_path


def test_source_epsilons_are_the_libraries():
    # torch.nn.BatchNorm2d default; keras.applications.ResNet50's 1.001e-5; keras / timm tf_ EfficientNets 1e-3
    assert wi.source_bn_epsilon("torchvision", "resnet50") == 1e-5
    assert wi.source_bn_epsilon("torchvision", "resnet101") == 1e-5
    assert wi.source_bn_epsilon("keras", "resnet50-keras") == 1.001e-5
    assert wi.source_bn_epsilon("keras", "efficientnet-b7") == 1e-3
    assert wi.source_bn_epsilon("timm", "efficientnet-b0") == 1e-3
    with pytest.raises(wi.WeightImportError, match="no timm importer"):
        wi.source_bn_epsilon("timm", "resnet50")


def test_init_conventions_of_imported_old_and_run_folders(tmp_path):
    new = _folder(tmp_path / "new", backbone="resnet50", format="torchvision", bn_epsilon=1e-5)
    assert wi.init_conventions(new) == {"backbone_bn_epsilon": 1e-5}
    # Folders imported before the epsilon was recorded: the epsilon of their format and backbone.
    old = _folder(tmp_path / "old", backbone="resnet50-keras", format="keras")
    assert wi.init_conventions(str(old)) == {"backbone_bn_epsilon": 1.001e-5}
    run = tmp_path / "mini-pretrain-0123456789"
    run.mkdir()
    (run / "params.yaml").write_text("model:\n  backbone: resnet-mini\n")
    assert wi.init_conventions(run) == {}
    assert wi.init_conventions(tmp_path / "missing") == {}


def test_params_that_set_another_epsilon_are_refused_naming_both(tmp_path):
    folder = _folder(tmp_path / "tv", backbone="resnet50", format="torchvision", bn_epsilon=1e-5)
    wi.check_conventions(folder, cfg.load_params(SMOKE))                       # unset: the init sets it
    wi.check_conventions(folder, cfg.load_params(SMOKE, ["model.backbone_bn_epsilon=0.00001"]))
    wi.check_conventions(folder, ModelParams(backbone_bn_epsilon=1e-5))
    with pytest.raises(wi.WeightImportError, match=r"backbone_bn_epsilon = 1e-05.*backbone_bn_epsilon = 0.0001"):
        wi.check_conventions(folder, cfg.load_params(SMOKE, ["model.backbone_bn_epsilon=0.0001"]))
    with pytest.raises(wi.WeightImportError, match="0.001"):
        wi.check_conventions(folder, ModelParams(backbone_bn_epsilon=1e-3))
    wi.check_conventions(tmp_path, ModelParams(backbone_bn_epsilon=1e-3))     # no import folder: nothing to check
