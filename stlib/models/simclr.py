"""SimCLR's model (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"): the backbone f with a projection head g.

SimCLR pre-trains a backbone without labels: two augmented views of each image
(`stlib.augment.simclr.simclr_views`) go through f and the small MLP g; the NT-Xent loss
(`stlib.losses.nt_xent_loss`) pulls the two views' z = g(f(x)) together and pushes every other
image in the batch away. Afterwards g is thrown away and h = pool(f(x)) is the representation
(Sec. 2.1, Algorithm 1), evaluated by the linear probe (`stlib.eval.linear_probe`). The model's
parameter tree is {"backbone", "projection"}, so a detector loads its backbone from a SimCLR
checkpoint exactly as from a supervised one (`stlib.models.classifier`).

Defaults follow the paper and google-research/simclr (`model_util.py`): a 2-layer MLP head to
128 dimensions (Sec. 2.3 "Default setting"), BN momentum 0.9 and epsilon 1e-5 (`run.py`
batch_norm_decay, `resnet.py` BATCH_NORM_EPSILON).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp


class ProjectionHead(nn.Module):
    """SimCLR's nonlinear projection head g (Sec. 2.1; `model_util.projection_head`, "nonlinear").

    `num_layers` Dense layers, each without bias and followed by BN: the hidden ones
    (width `hidden_dim`, None: the input width, as `mid_dim = hiddens.shape[-1]`) by BN with
    centering and a ReLU, the last one (width `out_dim`) by BN without centering (no beta: the
    code's `use_bias=False` -> `center=False`) and no ReLU. Kernels ~ N(0, 0.01^2)
    (`linear_layer`). Returns float32 [B, out_dim].
    """
    num_layers: int = 2            # Sec. 2.3: a 2-layer MLP (one hidden layer)
    hidden_dim: Optional[int] = None
    out_dim: int = 128             # Sec. 2.3: 128-dimensional latent space
    bn_momentum: float = 0.9       # run.py batch_norm_decay
    bn_epsilon: float = 1e-5       # resnet.py BATCH_NORM_EPSILON
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        if self.num_layers < 1:
            raise ValueError(f"ProjectionHead: num_layers must be >= 1, got {self.num_layers}")
        hidden = self.hidden_dim or x.shape[-1]
        for j in range(self.num_layers):
            last = j == self.num_layers - 1
            x = nn.Dense(self.out_dim if last else hidden, use_bias=False, dtype=self.dtype,
                         kernel_init=nn.initializers.normal(0.01), name=f"dense_{j}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             use_bias=not last, dtype=self.dtype, name=f"bn_{j}")(x)
            if not last:
                x = nn.relu(x)
        return x.astype(jnp.float32)


class SimCLRModel(nn.Module):
    """Backbone f + projection head g. `__call__(images, train)` returns (h, z): h float32
    [B, C] the global average pool of the backbone's highest level, z = g(h) float32 [B, out_dim].

    `backbone` is a module factory returning {level: features} (as `Classifier.backbone`,
    e.g. `stlib.models.registry.create_backbone(model_params)`); `projection` a
    `ProjectionHead` partial. Parameters: {"backbone": ..., "projection": ...}.

    SimCLR runs both views as one batch (`model.py` concatenates them along the batch), so BN
    statistics cover 2N images: call it on `concatenate([view1, view2])`. For the linear probe,
    `model.apply(variables, x, method=SimCLRModel.features)` gives h alone (train=False).
    """
    backbone: Callable[..., nn.Module]
    projection: Callable[..., nn.Module] = ProjectionHead
    dtype: Any = jnp.float32

    def setup(self):
        self.encoder = self.backbone(name="backbone")
        self.head = self.projection(name="projection")

    def features(self, images, train: bool = False):
        """h: float32 [B, C], the pooled highest backbone level (the representation SimCLR evaluates)."""
        feats = self.encoder(images.astype(self.dtype), train=train)
        return jnp.mean(feats[max(feats)].astype(jnp.float32), axis=(1, 2))

    def __call__(self, images, train: bool = False):
        h = self.features(images, train=train)
        return h, self.head(h, train=train)
