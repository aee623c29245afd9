"""Dense 2-D convolutions, computed by XLA's convolution or as one matrix product (issue 20).

`Conv` is `flax.linen.Conv` with the same parameters (``kernel`` [kh, kw, Cin, Cout], ``bias``) and
the same auto-names, so checkpoints and imported weights do not depend on how it is computed.
Two ways, one result up to float rounding:

- ``"xla"`` (the default): XLA's convolution.
- ``"matmul"``: the k*k shifted, strided copies of the padded input concatenated on the channel
  axis ("im2col"; a 1x1 convolution is the input itself, strided) times the kernel reshaped to
  [kh*kw*Cin, Cout], one ``dot_general``. Its gradients are matrix products too: the weight
  gradient one product over every output pixel, the input gradient a product and the shifted sums.
  XLA's CPU backend runs most convolutions of a ResNet-50 2-3.4x slower than PyTorch's oneDNN on
  the 2-core EPYC (benchmarks/RESULTS.md), while its matrix products run near the cores' peak:
  the ResNet-50 RetinaNet step at 512 px, batch 2, drops from 12.8 s to 7.8 s. It costs kh*kw
  times the input's memory per layer, which a CPU has and an accelerator would rather not spend.

``STLIB_CONV=xla|matmul`` chooses for every layer of a process (benchmarks/torchvision_step.py and
train_step.py measure it). It is not the CPU default because it changes the float rounding of
every CPU run, so a recorded run re-made with it would get another checkpoint digest.
Grouped, dilated or mixed-precision convolutions always go to XLA.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from stlib.config import ParamsError

IMPLS = ("xla", "matmul")
ENV = "STLIB_CONV"
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_impl(environ=os.environ) -> str:
    """The convolution implementation `STLIB_CONV` names ("xla" when unset); a bad name is one line."""
    impl = environ.get(ENV, "") or "xla"
    if impl not in IMPLS:
        raise ParamsError(f"{ENV}={impl!r}: one of {', '.join(IMPLS)}")
    return impl


def _plain_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, batch_group_count,
                preferred_element_type) -> bool:
    if lhs.ndim != 4 or dimension_numbers is None or feature_group_count != 1 or batch_group_count != 1:
        return False
    if preferred_element_type is not None or any(d != 1 for d in (lhs_dilation or (1, 1))):
        return False
    if any(d != 1 for d in (rhs_dilation or (1, 1))):
        return False
    dn = (dimension_numbers if isinstance(dimension_numbers, lax.ConvDimensionNumbers)
          else lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers))
    return dn == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)


def matmul_conv(lhs, rhs, window_strides, padding, precision=None):
    """An NHWC x HWIO convolution (no groups, no dilation) as one `dot_general` over im2col patches."""
    kh, kw, cin, cout = rhs.shape
    sh, sw = (int(s) for s in window_strides)
    pads = (lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (sh, sw), padding) if isinstance(padding, str)
            else padding)
    (ph0, ph1), (pw0, pw1) = ((int(a), int(b)) for a, b in pads)
    x = lhs
    if ph0 or ph1 or pw0 or pw1:
        x = jnp.pad(x, ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0)))
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [lax.slice(x, (0, i, j, 0), (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, cin), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    patches = cols[0] if len(cols) == 1 else lax.concatenate(cols, 3)
    return lax.dot_general(patches, rhs.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())),
                           precision=precision)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """`lax.conv_general_dilated`, or `matmul_conv` for a plain NHWC convolution under STLIB_CONV=matmul."""
    if conv_impl() == "matmul" and _plain_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                                               feature_group_count, batch_group_count, preferred_element_type):
        return matmul_conv(lhs, rhs, window_strides, padding, precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)


class Conv(nn.Conv):
    """`flax.linen.Conv`, computed as `STLIB_CONV` says (parameters and names unchanged)."""
    conv_general_dilated: Callable[..., Any] | None = conv_general_dilated
