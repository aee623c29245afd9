"""Depthwise convolution (one k x k filter per channel, depth multiplier 1, "SAME" padding, no bias):
EfficientNet's MBConv and NAS-FPN's separable convolutions.

Its parameter is `flax.linen.Conv`'s with ``feature_group_count=C``: ``kernel`` [k, k, 1, C], so
checkpoints and imported weights do not depend on how it is computed. Two ways, one result:

- ``"conv"``: XLA's grouped convolution. GPUs and TPUs have kernels for it.
- ``"taps"``: the k*k shifted copies of the input, each times its per-channel weight, summed in
  float32. XLA's CPU backend runs grouped convolutions far below its dense speed, and rewrites the
  weight gradient as a dense convolution over every channel pair: XLA's own cost analysis of a
  2x32x32x192 3x3 weight gradient grows from 0.014 to 1.3 GFLOP. That is why the sharded
  EfficientNet-B7 step counted 2,755 GFLOP per device against 787 for the whole program
  (issue 20). As k*k fused multiply-adds, the same layer runs 15-60x faster forward and 4-40x
  faster with its gradients on the 2-core CPU (benchmarks/RESULTS.md).

``"auto"`` (the default) takes taps on the CPU and conv elsewhere. STLIB_DEPTHWISE=conv|taps
chooses for every layer of a process (benchmarks/train_step.py compares them); it changes no
parameter and no result beyond float rounding.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "conv", "taps")
_FORCED: list[str] = []   # `forced(...)` contexts, innermost last


def same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    """XLA's (and TensorFlow's) "SAME" padding of one spatial side: (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def depthwise_taps(x, kernel, stride: int):
    """Depthwise "SAME" convolution of NHWC `x` with `kernel` [kh, kw, 1, C] as a sum of shifted,
    strided slices, accumulated in float32 and returned in `x`'s dtype."""
    kh, kw = kernel.shape[:2]
    n, h, w, c = x.shape
    (ph0, ph1), (pw0, pw1) = same_padding(h, kh, stride), same_padding(w, kw, stride)
    xp = jnp.pad(x, ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0)))
    ho, wo = -(-h // stride), -(-w // stride)
    k32 = kernel.astype(jnp.float32)
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                            (1, stride, stride, 1))
            term = tap.astype(jnp.float32) * k32[i, j, 0]
            out = term if out is None else out + term
    return out.astype(x.dtype)


def depthwise_conv(x, kernel, stride: int):
    """The same layer as XLA's grouped convolution (``feature_group_count=C``)."""
    return lax.conv_general_dilated(x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[-1])


@contextlib.contextmanager
def forced(impl: str):
    """Every layer traced inside computes as `impl`: the zoo counts multiply-adds as grouped
    convolutions, the way published FLOPs count them, whatever the host."""
    resolve_impl(impl)
    _FORCED.append(impl)
    try:
        yield
    finally:
        _FORCED.pop()


def resolve_impl(impl: str | None = None) -> str:
    """"conv" or "taps" for `impl` (None: the innermost `forced`, else STLIB_DEPTHWISE, else "auto")."""
    impl = impl or (_FORCED[-1] if _FORCED else None) or os.environ.get("STLIB_DEPTHWISE") or "auto"
    if impl not in IMPLS:
        raise ValueError(f"depthwise impl (STLIB_DEPTHWISE) must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "taps" if jax.default_backend() == "cpu" else "conv"
    return impl


class DepthwiseConv(nn.Module):
    """Depthwise k x k convolution, stride `strides`, "SAME" padding, no bias (`flax.linen.Conv`'s
    parameter layout and dtype promotion)."""
    kernel_size: int
    strides: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    impl: str | None = None   # None: STLIB_DEPTHWISE, else "auto"

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, c), self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        if resolve_impl(self.impl) == "taps":
            return depthwise_taps(x, kernel, self.strides)
        return depthwise_conv(x, kernel, self.strides)
