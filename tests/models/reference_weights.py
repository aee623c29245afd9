"""Deterministic numpy weights and inputs for the reference-logit test (numpy only: no torch,
timm, keras or stlib here).

`make_weights(layout, gamma_range)` fills a source checkpoint's layout (its variable names
and shapes) with values whose BatchNorm statistics are far from trivial: running variances
log-uniform in [1e-3, 2], nonzero running means, gammas and betas. At variance 1e-3 an
epsilon of 1e-4 instead of 1e-5 moves a channel by ~4%, so logits computed with the wrong
epsilon miss.

Both `make_reference_logits.py` (which runs the weights through torchvision, timm and keras
and stores their logits) and `test_reference_logits.py` (which imports the same weights
with stlib) call these functions, so both sides see identical arrays; `fingerprint` is
stored with the logits to catch a generator that drifted.
"""
from __future__ import annotations

import numpy as np

SEED = 14
NUM_CLASSES = 16          # small heads keep the reference file small
IMAGE_SIZE = 64           # ResNet-50 and EfficientNet-B0 reach a 2x2 map at stride 32
BATCH = 2
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Reference file keys -> what produced the logits (see make_reference_logits.py).
MODELS = ("torchvision_resnet50", "keras_resnet50", "timm_tf_efficientnet_b0", "keras_efficientnet_b0")
# BN gamma = sqrt(running variance) * U(range): measured so that the logits stay O(1) and still
# depend on the image (lower and the signal dies in the deep swish stack of EfficientNet,
# higher and ResNet-50's residual sum grows to ~1e3; float32 vs float64 stays ~5e-7 relative).
GAMMA_RANGE = {"resnet": (0.4, 1.0), "efficientnet": (0.7, 1.5)}

_BN_VAR = ("running_var", "moving_variance")
_BN_ROLES = {"torch": ("weight", "bias", "running_mean", "running_var"),
             "keras": ("gamma", "beta", "moving_mean", "moving_variance")}


def _torch_layers(out: list):
    """conv(name, o, i, k) and bn(name, c) appending a torch state dict's (name, shape) entries to `out`."""
    def conv(name, o, i, k):
        out.append((f"{name}.weight", (o, i, k, k)))

    def bn(name, c):
        out.extend((f"{name}.{v}", (c,)) for v in _BN_ROLES["torch"])
        out.append((f"{name}.num_batches_tracked", ()))
    return conv, bn


def torchvision_resnet50_layout(num_classes: int = NUM_CLASSES) -> list[tuple[str, tuple]]:
    """[(name, shape)] of `torchvision.models.resnet50(num_classes=...).state_dict()`."""
    out = []
    conv, bn = _torch_layers(out)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for s, n in enumerate((3, 4, 6, 3)):
        w = 64 * 2 ** s
        for b in range(n):
            k = f"layer{s + 1}.{b}"
            conv(f"{k}.conv1", w, cin, 1), bn(f"{k}.bn1", w)
            conv(f"{k}.conv2", w, w, 3), bn(f"{k}.bn2", w)
            conv(f"{k}.conv3", 4 * w, w, 1), bn(f"{k}.bn3", 4 * w)
            if b == 0:
                conv(f"{k}.downsample.0", 4 * w, cin, 1), bn(f"{k}.downsample.1", 4 * w)
            cin = 4 * w
    out += [("fc.weight", (num_classes, 2048)), ("fc.bias", (num_classes,))]
    return out


def timm_tf_efficientnet_b0_layout(num_classes: int = NUM_CLASSES) -> list[tuple[str, tuple]]:
    """[(name, shape)] of `timm.create_model("tf_efficientnet_b0", num_classes=...).state_dict()`."""
    out = []
    conv, bn = _torch_layers(out)

    def se(name, c, rd):
        out.extend([(f"{name}.conv_reduce.weight", (rd, c, 1, 1)), (f"{name}.conv_reduce.bias", (rd,)),
                    (f"{name}.conv_expand.weight", (c, rd, 1, 1)), (f"{name}.conv_expand.bias", (c,))])

    conv("conv_stem", 32, 3, 3)
    bn("bn1", 32)
    cin = 32
    # EfficientNet-B0 (expand, kernel, out channels, repeats) per stage; SE on 1/4 of the block input.
    for s, (e, k, c, r) in enumerate([(1, 3, 16, 1), (6, 3, 24, 2), (6, 5, 40, 2), (6, 3, 80, 3),
                                      (6, 5, 112, 3), (6, 5, 192, 4), (6, 3, 320, 1)]):
        for i in range(r):
            p, mid, rd = f"blocks.{s}.{i}", cin * e, max(1, int(cin * 0.25))
            if e == 1:     # DepthwiseSeparableConv
                conv(f"{p}.conv_dw", mid, 1, k), bn(f"{p}.bn1", mid), se(f"{p}.se", mid, rd)
                conv(f"{p}.conv_pw", c, mid, 1), bn(f"{p}.bn2", c)
            else:          # InvertedResidual
                conv(f"{p}.conv_pw", mid, cin, 1), bn(f"{p}.bn1", mid)
                conv(f"{p}.conv_dw", mid, 1, k), bn(f"{p}.bn2", mid), se(f"{p}.se", mid, rd)
                conv(f"{p}.conv_pwl", c, mid, 1), bn(f"{p}.bn3", c)
            cin = c
    conv("conv_head", 1280, 320, 1)
    bn("bn2", 1280)
    out += [("classifier.weight", (num_classes, 1280)), ("classifier.bias", (num_classes,))]
    return out


def keras_layout(model) -> list[tuple[str, tuple]]:
    """[(name, shape)] of a built keras model (Keras 3 weight paths, e.g. "conv1_bn/gamma")."""
    return [(w.path, tuple(w.shape)) for w in model.weights]


def _split(name: str) -> tuple[str, str]:
    """("layer", "variable") of a torch ("a.b.weight") or keras ("a_b/kernel") name."""
    if "/" in name:
        layer, _, var = name.rpartition("/")
    else:
        layer, _, var = name.rpartition(".")
    return layer, var


def _fan_in(name: str, shape: tuple) -> int:
    if "/" in name:   # keras: conv [kh, kw, in, out], depthwise [kh, kw, C, 1], dense [in, out]
        if len(shape) == 4:
            return shape[0] * shape[1] * (1 if "dwconv" in name else shape[2])
        return shape[0]
    return int(np.prod(shape[1:]))   # torch: conv [out, in, kh, kw] (depthwise in = 1), linear [out, in]


def make_weights(layout, gamma_range: tuple[float, float], seed: int = SEED) -> dict[str, np.ndarray]:
    """Deterministic float32 weights for `layout` ([(name, shape)], torch or keras names).

    Independent of the layout's order: BatchNorm layers are filled first, in sorted order,
    then every other array in sorted order. Per BN layer: variance log-uniform in
    [1e-3, 2], mean N(0, 0.1), beta N(0, 0.1), gamma sqrt(variance) * U(gamma_range) (BN
    then scales by about U(gamma_range), so activations neither explode nor vanish over
    50 layers: see GAMMA_RANGE). Conv and dense
    kernels He-normal (std sqrt(2 / fan_in); the classifier sqrt(1 / fan_in)), biases
    N(0, 0.1). A keras Normalization layer gets the ImageNet mean and std**2 (its input is
    then stlib's normalized RGB exactly); counters are 0.
    """
    rng = np.random.default_rng(seed)
    shapes = {name: tuple(shape) for name, shape in layout}
    out: dict[str, np.ndarray] = {}
    bn_layers = sorted({_split(n)[0] for n in shapes if _split(n)[1] in _BN_VAR})
    for layer in bn_layers:
        style = "keras" if f"{layer}/moving_variance" in shapes else "torch"
        sep = "/" if style == "keras" else "."
        gamma, beta, mean, var = (f"{layer}{sep}{v}" for v in _BN_ROLES[style])
        (c,) = shapes[var]
        v = np.exp(rng.uniform(np.log(1e-3), np.log(2.0), c))
        out[var] = v.astype(np.float32)
        out[mean] = rng.normal(0.0, 0.1, c).astype(np.float32)
        out[beta] = rng.normal(0.0, 0.1, c).astype(np.float32)
        out[gamma] = (np.sqrt(v) * rng.uniform(*gamma_range, c)).astype(np.float32)
    for name in sorted(shapes):
        if name in out:
            continue
        shape = shapes[name]
        layer, var = _split(name)
        if var in ("num_batches_tracked", "count"):
            out[name] = np.zeros(shape, np.int64)
        elif layer.startswith("normalization") and var in ("mean", "variance"):
            out[name] = (IMAGENET_MEAN if var == "mean" else IMAGENET_STD ** 2).reshape(shape).astype(np.float32)
        elif len(shape) <= 1:   # conv / dense / SE biases
            out[name] = rng.normal(0.0, 0.1, shape).astype(np.float32)
        else:
            dense = len(shape) == 2
            std = np.sqrt((1.0 if dense else 2.0) / _fan_in(name, shape))
            out[name] = rng.normal(0.0, std, shape).astype(np.float32)
    return out


def fingerprint(weights: dict) -> np.ndarray:
    """[sum, sum of squares] over all arrays (float64): equal on both sides of the test."""
    s = sum(float(np.sum(weights[k], dtype=np.float64)) for k in sorted(weights))
    q = sum(float(np.sum(np.square(weights[k], dtype=np.float64))) for k in sorted(weights))
    return np.array([s, q], np.float64)


def reference_pixels(seed: int = SEED) -> np.ndarray:
    """float32 [BATCH, IMAGE_SIZE, IMAGE_SIZE, 3] RGB pixel values, integers in 0..255."""
    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, 256, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def imagenet_input(pixels: np.ndarray) -> np.ndarray:
    """RGB normalized with the ImageNet mean/std (what stlib, torchvision and timm take), NHWC."""
    return ((pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def caffe_input(pixels: np.ndarray) -> np.ndarray:
    """keras.applications.resnet50.preprocess_input: BGR minus the caffe mean, NHWC."""
    return (pixels[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)).astype(np.float32)
