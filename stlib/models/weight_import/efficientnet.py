"""Maps published EfficientNet weights onto `stlib.models.classifier.efficientnet_classifier`.

Pure numpy, no file I/O: the callers read the files and hand over flat dicts.

- `from_keras(weights, variant)`: `keras.applications.EfficientNetB0..B7` variables keyed
  "<layer name>/<variable name>" (what `[(w.path, w.numpy()) for w in model.weights]` gives
  in Keras 3; a TF-style ":0" suffix and Keras 2's "depthwise_kernel" are accepted too).
  Layer names: stem_conv, stem_bn, block1a_expand_conv, block1a_dwconv, ..., top_conv,
  top_bn, predictions.
- `from_timm(state_dict, variant)`: timm `tf_efficientnet_b0..b7` (and the `_ap` / `_ns`
  checkpoints, same keys) torch state dict: conv_stem, bn1, blocks.{stage}.{i}.*, conv_head,
  bn2, classifier.

Both return {"params": ..., "batch_stats": ...} (nested dicts of float32 numpy arrays) whose
tree equals `efficientnet_classifier(variant).init(...)` for the inferred number of classes.
Missing, wrongly shaped and unused source keys raise KeyError/ValueError naming the key
and the variant.

Input preprocessing. Our model has no preprocessing layers; feed it what reaches the Keras
model's `stem_conv_pad` layer. Keras' EfficientNet applies, to 0..255 RGB input:
`Rescaling(1/255)` -> `Normalization` ((x - mean) / sqrt(variance), with the stored
`normalization/mean` and `normalization/variance`) -> only when built with
`weights="imagenet"`: `Rescaling(1/sqrt(IMAGENET_STDDEV_RGB))`, IMAGENET_STDDEV_RGB =
(0.229, 0.224, 0.225) (Keras' fix for the variance stored in its h5 files, see
tensorflow/tensorflow#49930). `keras_input_normalization(weights, imagenet=...)` returns the
(mean, std) so that `(pixels / 255 - mean) / std` is that input. timm's tf_efficientnet
models normally expect (pixels / 255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225), the
`_ap` ones mean = std = 0.5 (not verified here: read the model's `pretrained_cfg`).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from stlib.models.backbones import efficientnet as effnet

IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
# Keras preprocessing-layer variables (`normalization/mean`, `normalization_1/count`, ...).
_KERAS_PREPROCESSING = re.compile(r"^(normalization|rescaling)(_\d+)?/")


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One layer: where it goes in flax, what it is, and its names in both sources."""
    path: tuple              # e.g. ("backbone", "block2a", "expand_conv")
    kind: str                # conv | dwconv | se | bn | dense
    keras: str               # keras layer name
    timm: str                # timm module prefix (no trailing dot)
    shape: tuple             # flax kernel shape (conv/dense) or channel count as (C,) (bn)


def _layout(variant: str) -> list[_Entry]:
    v = effnet.normalize_variant(variant)
    width, depth, _ = effnet.COEFFICIENTS[v]
    stem = effnet.round_filters(32, width)
    head = effnet.round_filters(1280, width)
    out = [_Entry(("backbone", "stem_conv"), "conv", "stem_conv", "conv_stem", (3, 3, 3, stem)),
           _Entry(("backbone", "stem_bn"), "bn", "stem_bn", "bn1", (stem,))]
    last = stem
    for s in effnet.block_specs(width, depth):
        b, k, mid = s.name, s.kernel, s.mid_ch
        t = f"blocks.{s.stage - 1}.{s.index}"
        path = ("backbone", b)
        if s.expand != 1:  # timm InvertedResidual
            out += [_Entry(path + ("expand_conv",), "conv", f"{b}_expand_conv", f"{t}.conv_pw", (1, 1, s.in_ch, mid)),
                    _Entry(path + ("expand_bn",), "bn", f"{b}_expand_bn", f"{t}.bn1", (mid,))]
            names = dict(dw=f"{t}.conv_dw", bn=f"{t}.bn2", proj=f"{t}.conv_pwl", proj_bn=f"{t}.bn3")
        else:  # timm DepthwiseSeparableConv
            names = dict(dw=f"{t}.conv_dw", bn=f"{t}.bn1", proj=f"{t}.conv_pw", proj_bn=f"{t}.bn2")
        out += [_Entry(path + ("dwconv",), "dwconv", f"{b}_dwconv", names["dw"], (k, k, 1, mid)),
                _Entry(path + ("bn",), "bn", f"{b}_bn", names["bn"], (mid,)),
                _Entry(path + ("se_reduce",), "se", f"{b}_se_reduce", f"{t}.se.conv_reduce", (1, 1, mid, s.se_ch)),
                _Entry(path + ("se_expand",), "se", f"{b}_se_expand", f"{t}.se.conv_expand", (1, 1, s.se_ch, mid)),
                _Entry(path + ("project_conv",), "conv", f"{b}_project_conv", names["proj"], (1, 1, mid, s.out_ch)),
                _Entry(path + ("project_bn",), "bn", f"{b}_project_bn", names["proj_bn"], (s.out_ch,))]
        last = s.out_ch
    out += [_Entry(("head", "top_conv"), "conv", "top_conv", "conv_head", (1, 1, last, head)),
            _Entry(("head", "top_bn"), "bn", "top_bn", "bn2", (head,)),
            _Entry(("head", "predictions"), "dense", "predictions", "classifier", (head, None))]
    return out


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


class _Source:
    """Wraps the flat source dict; records which keys were used and checks shapes."""

    def __init__(self, flat: dict, fmt: str, variant: str):
        self.flat, self.fmt, self.variant, self.used = flat, fmt, variant, set()

    def get(self, *keys: str) -> tuple[str, np.ndarray]:
        """The first present key among `keys` (alternative spellings of one variable)."""
        for key in keys:
            if key in self.flat:
                self.used.add(key)
                return key, np.asarray(self.flat[key], dtype=np.float32)
        raise KeyError(f"{self.fmt} weights for EfficientNet-{self.variant}: missing source key {keys[0]!r}"
                       + (f" (also tried {', '.join(map(repr, keys[1:]))})" if len(keys) > 1 else ""))

    def check(self, key: str, value: np.ndarray, expected: tuple) -> np.ndarray:
        ok = len(value.shape) == len(expected) and all(e is None or e == g for e, g in zip(expected, value.shape))
        if not ok:
            want = tuple("*" if e is None else e for e in expected)
            raise ValueError(f"{self.fmt} weights for EfficientNet-{self.variant}: source key {key!r} has shape "
                             f"{tuple(value.shape)}, expected {want} after conversion")
        return value

    def finish(self, ignore) -> None:
        unused = sorted(k for k in self.flat if k not in self.used and not ignore(k))
        if unused:
            more = f" and {len(unused) - 10} more" if len(unused) > 10 else ""
            raise ValueError(f"{self.fmt} weights for EfficientNet-{self.variant}: unexpected source key(s) "
                             f"{', '.join(map(repr, unused[:10]))}{more}")


def _convert(src: _Source, variant: str, with_predictions: bool, read) -> dict:
    params, stats = {}, {}
    for e in _layout(variant):
        if e.kind == "dense" and not with_predictions:
            continue
        if e.kind == "bn":
            scale, bias, mean, var = read(e, src)
            _set(params, e.path, {"scale": scale, "bias": bias})
            _set(stats, e.path, {"mean": mean, "var": var})
        elif e.kind in ("se", "dense"):
            kernel, bias = read(e, src)
            _set(params, e.path, {"kernel": kernel, "bias": bias})
        else:
            (kernel,) = read(e, src)
            _set(params, e.path, {"kernel": kernel})
    return {"params": params, "batch_stats": stats}


def _read_bn(e: _Entry, src: _Source, *names: str) -> tuple:
    """A BatchNorm's (scale, bias, mean, var), each checked against the entry's channel shape."""
    return tuple(src.check(k, v, e.shape) for k, v in (src.get(name) for name in names))


def _read_keras(e: _Entry, src: _Source):
    n = e.keras
    if e.kind == "bn":
        return _read_bn(e, src, f"{n}/gamma", f"{n}/beta", f"{n}/moving_mean", f"{n}/moving_variance")
    if e.kind == "dwconv":
        # Keras 3 names the depthwise weight "kernel", Keras 2 / h5 files "depthwise_kernel"; [kh,kw,C,1].
        k, v = src.get(f"{n}/kernel", f"{n}/depthwise_kernel")
        kh, kw, _, c = e.shape
        src.check(k, v, (kh, kw, c, 1))
        return (np.ascontiguousarray(v.transpose(0, 1, 3, 2)),)
    k, kernel = src.get(f"{n}/kernel")
    kernel = src.check(k, kernel, e.shape)
    if e.kind == "conv":
        return (kernel,)
    b, bias = src.get(f"{n}/bias")
    return kernel, src.check(b, bias, (kernel.shape[-1],))


def _read_timm(e: _Entry, src: _Source):
    n = e.timm
    if e.kind == "bn":
        return _read_bn(e, src, f"{n}.weight", f"{n}.bias", f"{n}.running_mean", f"{n}.running_var")
    k, w = src.get(f"{n}.weight")
    if e.kind == "dense":  # Linear [O, I] -> [I, O]
        kernel = src.check(k, np.ascontiguousarray(w.T), e.shape)
    else:  # conv [O, I, kh, kw] -> [kh, kw, I, O]; depthwise [C, 1, kh, kw] -> [kh, kw, 1, C]
        kh, kw, i, o = e.shape
        src.check(k, w, (o, i, kh, kw))
        kernel = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    if e.kind in ("conv", "dwconv"):
        return (kernel,)
    b, bias = src.get(f"{n}.bias")
    return kernel, src.check(b, bias, (kernel.shape[-1],))


def from_keras(weights: dict, variant: str, *, with_predictions: bool = True) -> dict:
    """Keras `EfficientNet{B0..B7}` variables -> {"params", "batch_stats"} for
    `efficientnet_classifier(variant, num_classes)`, num_classes read from `predictions/kernel`.
    `with_predictions=False` accepts include_top=False weights (no `predictions`; top_conv and
    top_bn are still there in Keras' notop files) and leaves `head/predictions` out."""
    v = effnet.normalize_variant(variant)
    # TF variable names carry a ":0" suffix (Keras 2 h5 files); Keras 3 paths do not.
    weights = {(k[:-2] if k.endswith(":0") else k): w for k, w in weights.items()}
    src = _Source(weights, "keras", v)
    out = _convert(src, v, with_predictions, _read_keras)
    src.finish(lambda k: bool(_KERAS_PREPROCESSING.match(k)))
    return out


def from_timm(state_dict: dict, variant: str, *, with_predictions: bool = True) -> dict:
    """timm `tf_efficientnet_{b0..b7}[_ap|_ns]` state dict (numpy arrays, torch layout) ->
    {"params", "batch_stats"}; `num_batches_tracked` entries are ignored."""
    v = effnet.normalize_variant(variant)
    src = _Source(state_dict, "timm", v)
    out = _convert(src, v, with_predictions, _read_timm)
    src.finish(lambda k: k.endswith("num_batches_tracked"))
    return out


def keras_input_normalization(weights: dict, imagenet: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) such that `(pixels / 255 - mean) / std` equals the input of the Keras model's
    `stem_conv_pad` layer. `imagenet=True` for models built with `weights="imagenet"` (extra
    `Rescaling(1/sqrt(IMAGENET_STDDEV_RGB))`), False for `weights=None` or a custom file."""
    keys = [k for k in weights if _KERAS_PREPROCESSING.match(k) and k.startswith("normalization")]
    mean_key = next((k for k in keys if k.endswith("/mean")), None)
    var_key = next((k for k in keys if k.endswith("/variance")), None)
    if mean_key is None or var_key is None:
        raise KeyError("keras weights: missing source key 'normalization/mean' or 'normalization/variance'")
    mean = np.asarray(weights[mean_key], np.float64).reshape(-1)
    std = np.maximum(np.sqrt(np.asarray(weights[var_key], np.float64).reshape(-1)), 1e-7)  # keras epsilon
    if imagenet:
        std = std * np.sqrt(np.asarray(IMAGENET_STDDEV_RGB))
    return mean.astype(np.float32), std.astype(np.float32)
