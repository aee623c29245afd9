"""ResNet-50/101 weights from Keras and torchvision layouts into stlib's `Classifier`.

- `from_keras`: `keras.applications.ResNet50` (layer names `conv1_conv`, `conv2_block1_1_conv`,
  ..., `predictions`) -> `resnet50-keras` (stride in the first 1x1 conv, conv biases).
- `from_torchvision`: torchvision `resnet50` / `resnet101` state dicts (`conv1.weight`,
  `layer1.0.conv1.weight`, ..., `fc.weight`), the layout SimCLR conversions use too ->
  `resnet50` / `resnet101` (stride in the 3x3 conv).

Both return `{"params": {"backbone": ..., "head": ...}, "batch_stats": {...}}` as numpy
float32, and raise naming the source key that is missing or left unused.
"""
from __future__ import annotations

import numpy as np

STAGES = {"resnet50": (3, 4, 6, 3), "resnet50-keras": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


class _Source:
    """A flat name -> array dict that records which keys were used."""

    def __init__(self, weights: dict, what: str, ignore=()):
        self.w = {k: np.asarray(v) for k, v in weights.items() if not any(k.endswith(i) for i in ignore)}
        self.used: set = set()
        self.what = what

    def __call__(self, key):
        if key not in self.w:
            raise KeyError(f"{self.what}: missing key {key!r}")
        self.used.add(key)
        return self.w[key].astype(np.float32)

    def finish(self):
        unused = sorted(set(self.w) - self.used)
        if unused:
            raise ValueError(f"{self.what}: {len(unused)} keys have no place in the model, e.g. {unused[:5]}")


def _put(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _stages(arch: str, what: str):
    if arch not in STAGES:
        raise ValueError(f"{what}: no ResNet layout for {arch!r} (known: {', '.join(STAGES)})")
    return STAGES[arch]


def _walk(stages, conv, bn, stem: tuple, block_names) -> None:
    """Calls conv/bn(source name, flax path) for every layer of a bottleneck ResNet.

    `stem` = (conv name, bn name); `block_names(stage, block)` gives, for 0-based stage and
    block, the source names [(conv1, bn1), (conv2, bn2), (conv3, bn3), (proj conv, proj bn)].
    """
    conv(stem[0], ("backbone", "stem_conv"))
    bn(stem[1], ("backbone", "stem_bn"))
    for s, n in enumerate(stages):
        for b in range(n):
            block = ("backbone", f"stage{s + 1}_block{b + 1}")
            names = block_names(s, b)
            for i, (c, n_bn) in enumerate(names[:3], start=1):
                conv(c, block + (f"conv{i}",))
                bn(n_bn, block + (f"bn{i}",))
            if b == 0:
                conv(names[3][0], block + ("proj_conv",))
                bn(names[3][1], block + ("proj_bn",))


def from_keras(weights: dict, arch: str = "resnet50-keras") -> dict:
    """keras.applications.ResNet50 weights ("layer/var" keys) -> `resnet50-keras` variables."""
    what = f"keras ResNet50 -> {arch}"
    if arch != "resnet50-keras":
        raise ValueError(f"{what}: keras' ResNet50 strides in the 1x1 conv; import it as resnet50-keras")
    src = _Source(weights, what)
    params: dict = {}
    stats: dict = {}

    def conv(k, path):
        _put(params, path + ("kernel",), src(f"{k}/kernel"))
        _put(params, path + ("bias",), src(f"{k}/bias"))

    def bn(k, path):
        _put(params, path + ("scale",), src(f"{k}/gamma"))
        _put(params, path + ("bias",), src(f"{k}/beta"))
        _put(stats, path + ("mean",), src(f"{k}/moving_mean"))
        _put(stats, path + ("var",), src(f"{k}/moving_variance"))

    def block_names(s, b):   # keras: conv{stage+2}_block{b+1}_{1,2,3,0 = shortcut}_{conv,bn}
        k = f"conv{s + 2}_block{b + 1}"
        return [(f"{k}_{i}_conv", f"{k}_{i}_bn") for i in (1, 2, 3, 0)]

    _walk(_stages(arch, what), conv, bn, ("conv1_conv", "conv1_bn"), block_names)
    _put(params, ("head", "predictions", "kernel"), src("predictions/kernel"))
    _put(params, ("head", "predictions", "bias"), src("predictions/bias"))
    src.finish()
    return {"params": params, "batch_stats": stats}


def from_torchvision(state_dict: dict, arch: str = "resnet50") -> dict:
    """torchvision resnet50/101 state dict -> `resnet50` / `resnet101` variables."""
    what = f"torchvision state dict -> {arch}"
    if arch == "resnet50-keras":
        raise ValueError(f"{what}: torchvision's ResNet strides in the 3x3 conv; import it as resnet50")
    src = _Source(state_dict, what, ignore=("num_batches_tracked",))
    params: dict = {}
    stats: dict = {}

    def conv(k, path):
        _put(params, path + ("kernel",), src(f"{k}.weight").transpose(2, 3, 1, 0))

    def bn(k, path):
        _put(params, path + ("scale",), src(f"{k}.weight"))
        _put(params, path + ("bias",), src(f"{k}.bias"))
        _put(stats, path + ("mean",), src(f"{k}.running_mean"))
        _put(stats, path + ("var",), src(f"{k}.running_var"))

    def block_names(s, b):   # torchvision: layer{stage+1}.{b}.conv{i}/bn{i}, downsample.0/.1
        k = f"layer{s + 1}.{b}"
        return [(f"{k}.conv{i}", f"{k}.bn{i}") for i in (1, 2, 3)] + [(f"{k}.downsample.0", f"{k}.downsample.1")]

    _walk(_stages(arch, what), conv, bn, ("conv1", "bn1"), block_names)
    if "fc.weight" in src.w:
        _put(params, ("head", "predictions", "kernel"), src("fc.weight").T)
        _put(params, ("head", "predictions", "bias"), src("fc.bias"))
    src.finish()
    return {"params": params, "batch_stats": stats}
