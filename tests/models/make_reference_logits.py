"""Writes tests/models/data/reference_logits.npz: the logits torchvision, timm and keras
themselves give for the numpy weights of `reference_weights.py` (never stlib's).

Run from the repository root, in two environments (each part replaces its own entries):

  # torchvision ResNet-50 and timm tf_efficientnet_b0: a venv with torch, torchvision, timm, numpy
  # (PyPI's default torch build: torchvision's wheels fail to import on a "+cpu" torch)
  python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch torchvision timm numpy
  /tmp/refenv/bin/python -m tests.models.make_reference_logits torch
  # keras ResNet50 and EfficientNetB0: the project's venv (tensorflow-cpu / keras are dependencies)
  .venv/bin/python -m tests.models.make_reference_logits keras

Recorded on the CPU with torch 2.13.0, torchvision 0.28.0, timm 1.0.31, keras 3.15.1
(tensorflow 2.21.0), numpy 2.4.6 (stored in the file as versions_torch / versions_keras);
a re-run reproduces it bit for bit. This script imports nothing from stlib;
`test_reference_logits.py` re-makes the same weights and inputs, imports them with
`stlib import-weights` and compares. The torch part also checks that reference_weights'
state-dict layouts are the libraries' own (names and shapes).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tests.models import reference_weights as rw

OUT = Path(__file__).resolve().parent / "data" / "reference_logits.npz"


def torch_part() -> dict:
    import timm
    import torch
    import torchvision

    def run(net, layout, key, family):
        sd = net.state_dict()
        have = [(k, tuple(v.shape)) for k, v in sd.items()]
        if sorted(have) != sorted(layout):   # the numpy layout must be the library's own
            raise SystemExit(f"{key}: reference_weights layout differs from the library's: "
                             f"{sorted(set(have) ^ set(layout))[:5]}")
        weights = rw.make_weights(layout, rw.GAMMA_RANGE[family])
        net.load_state_dict({k: torch.from_numpy(np.array(weights[k])) for k in sd}, strict=True)
        net.eval()
        x = rw.imagenet_input(rw.reference_pixels()).transpose(0, 3, 1, 2)   # NCHW
        with torch.no_grad():
            logits = net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        eps = {m.eps for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
        print(f"{key}: BN epsilon {eps}, logits max |.| {np.abs(logits).max():.4g}")
        return {key: logits.astype(np.float32), f"{key}_fingerprint": rw.fingerprint(weights)}

    out = {}
    out.update(run(torchvision.models.resnet50(weights=None, num_classes=rw.NUM_CLASSES),
                   rw.torchvision_resnet50_layout(), "torchvision_resnet50", "resnet"))
    out.update(run(timm.create_model("tf_efficientnet_b0", pretrained=False, num_classes=rw.NUM_CLASSES),
                   rw.timm_tf_efficientnet_b0_layout(), "timm_tf_efficientnet_b0", "efficientnet"))
    out["versions_torch"] = np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
                                     f"timm {timm.__version__}, numpy {np.__version__}")
    return out


def keras_part() -> dict:
    import keras

    pixels = rw.reference_pixels()
    caffe = keras.applications.resnet50.preprocess_input(pixels.copy())
    np.testing.assert_allclose(caffe, rw.caffe_input(pixels), atol=1e-4)   # the test's numpy twin

    def run(app, x, key, family):
        model = app(weights=None, input_shape=(rw.IMAGE_SIZE, rw.IMAGE_SIZE, 3), classes=rw.NUM_CLASSES,
                    classifier_activation=None)
        weights = rw.make_weights(rw.keras_layout(model), rw.GAMMA_RANGE[family])
        for w in model.weights:
            w.assign(weights[w.path])
        for layer in model.layers:
            if isinstance(layer, keras.layers.Normalization):
                layer.finalize_state()   # Keras 3 caches mean/variance (load_weights refreshes them too)
                np.testing.assert_allclose(np.asarray(layer(pixels / 255.0)), rw.imagenet_input(pixels), atol=1e-5)
        logits = np.asarray(model(x, training=False))
        eps = {l.epsilon for l in model.layers if isinstance(l, keras.layers.BatchNormalization)}
        print(f"{key}: BN epsilon {eps}, logits max |.| {np.abs(logits).max():.4g}")
        return {key: logits.astype(np.float32), f"{key}_fingerprint": rw.fingerprint(weights)}

    out = {}
    out.update(run(keras.applications.ResNet50, caffe, "keras_resnet50", "resnet"))
    # Keras' EfficientNet takes 0-255 RGB (its own Rescaling + Normalization layers).
    out.update(run(keras.applications.EfficientNetB0, pixels, "keras_efficientnet_b0", "efficientnet"))
    out["versions_keras"] = np.array(f"keras {keras.__version__}, numpy {np.__version__}")
    return out


def main(argv) -> int:
    if len(argv) != 1 or argv[0] not in ("torch", "keras"):
        print(__doc__)
        return 2
    new = torch_part() if argv[0] == "torch" else keras_part()
    old = dict(np.load(OUT)) if OUT.exists() else {}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez(OUT, **{**old, **new})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {', '.join(sorted({**old, **new}))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
