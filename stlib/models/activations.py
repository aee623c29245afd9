"""Activations by name: relu | swish, the TPU's `batch_norm_activation` choices (REFERENCE §4.3, §6.3)."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn

ACTIVATIONS: dict[str, Callable] = {"relu": nn.relu, "swish": nn.swish}


def activation_fn(name: str) -> Callable:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})") from None
