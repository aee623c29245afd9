"""Activations by name: relu | swish, the TPU's `batch_norm_activation` choices (REFERENCE §4.3, §6.3)."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn

from stlib.registry import Registry

# name -> activation function (`model.activation`)
ACTIVATIONS = Registry("activation", field="model.activation")
ACTIVATIONS.register("relu", nn.relu)
ACTIVATIONS.register("swish", nn.swish)


def activation_fn(name: str) -> Callable:
    return ACTIVATIONS.get(name)
