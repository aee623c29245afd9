"""SimCLR pieces (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"): projection head, encoder + head model, NT-Xent loss, LARS, linear probe.

SimCLR pre-trains a backbone without labels: two augmented views of each image
(`stlib.augment.simclr.simclr_views`) go through the backbone f and a small MLP g; the NT-Xent
loss pulls the two views' z = g(f(x)) together and pushes every other image in the batch away.
Afterwards g is thrown away and h = pool(f(x)) is the representation (Sec. 2.1, Algorithm 1).
The model's parameter tree is {"backbone", "projection"}, so a detector loads its backbone
from a SimCLR checkpoint exactly as from a supervised one (`stlib.models.classifier`).

Defaults follow the paper and google-research/simclr (`model_util.py`, `lars_optimizer.py`,
`objective.py`): a 2-layer MLP head to 128 dimensions (Sec. 2.3 "Default setting"), BN
momentum 0.9 and epsilon 1e-5 (`run.py` batch_norm_decay, `resnet.py` BATCH_NORM_EPSILON),
LARS with weight decay 1e-6, BN and biases excluded from weight decay and trust ratio.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["ProjectionHead", "SimCLRModel", "lars_mask", "lars_optimizer", "linear_probe", "nt_xent_loss"]

# objective.py LARGE_NUM: logits of excluded pairs (self, padding) are pushed this far down.
LARGE_NUM = 1e9


# ----------------------------------------------------------------------------- model

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


# ----------------------------------------------------------------------------- loss

def nt_xent_loss(z1, z2, temperature: float, weight=None):
    """NT-Xent (Sec. 2.1, eq. 1) over the 2N anchors of a global batch; plain jnp, jit-able.

    Each row of z1 / z2 [N, D] is one view of image k; z is L2-normalized here (cosine
    similarity). Anchor a's positive is the other view of its image; its negatives are the other
    2N - 2 embeddings. The loss is the mean over valid anchors of
    -log softmax(sim(a, .) / temperature)[positive], the paper's L = 1/(2N) sum_k [l(2k-1, 2k) +
    l(2k, 2k-1)] (`objective.py` returns loss_a + loss_b, twice this).

    Args:
      z1, z2: [N, D] projections of the two views (any float dtype; computed in float32).
      temperature: tau > 0 (SimCLR: 0.1 for ImageNet, `run.py`'s default; 0.5 in the README's
        CIFAR-10 command).
      weight: optional [N] in {0, 1}; 0 marks padding, excluded both as an anchor and as a
        negative of every other anchor (its gradient is zero).

    Returns:
      (loss, {"contrast_accuracy": fraction of valid anchors whose most similar other
      candidate is their positive}), float32 scalars.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent_loss: want z1, z2 both [N, D], got {z1.shape} and {z2.shape}")
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"nt_xent_loss: temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = jnp.concatenate([z1, z2]).astype(jnp.float32)
    # tf.math.l2_normalize: x / sqrt(max(sum(x^2), 1e-12)).
    z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))
    logits = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST) / temperature
    w = jnp.ones((n,), jnp.float32) if weight is None else jnp.asarray(weight, jnp.float32).reshape(n)
    w2 = jnp.concatenate([w, w])
    idx = jnp.arange(2 * n)
    positive = (idx + n) % (2 * n)
    candidate = (w2[None, :] > 0) & (idx[:, None] != idx[None, :])
    logits = jnp.where(candidate, logits, -LARGE_NUM)
    per_anchor = jax.nn.logsumexp(logits, axis=-1) - logits[idx, positive]
    count = jnp.maximum(jnp.sum(w2), 1.0)
    loss = jnp.sum(per_anchor * w2) / count
    hit = (jnp.argmax(logits, axis=-1) == positive).astype(jnp.float32)
    return loss, {"contrast_accuracy": jnp.sum(hit * w2) / count}


# ----------------------------------------------------------------------------- optimizer

_LARS_EXCLUDED = ("bias", "scale")


def lars_mask(params):
    """True for parameters that get LARS weight decay and trust-ratio scaling.

    SimCLR excludes `['batch_normalization', 'bias']` (plus its supervised head, which it
    regularizes separately) from both (`model_util.get_optimizer`; `lars_optimizer.py` sets
    exclude_from_layer_adaptation to the weight-decay list). In flax a BatchNorm's parameters
    are `scale` and `bias` and a Dense/Conv bias is `bias`, so every leaf named `bias` or
    `scale` is excluded; kernels (and any other weight) are included.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in _LARS_EXCLUDED, params)


def lars_optimizer(learning_rate, weight_decay: float, momentum: float = 0.9,
                   trust_coefficient: float = 0.001) -> optax.GradientTransformation:
    """LARS (You et al. 2017) as SimCLR trains with it, built on `optax.lars`.

    Per included tensor (`lars_mask`): g <- g + weight_decay * w, then g is scaled by the trust
    ratio trust_coefficient * ||w|| / ||g|| (1 where either norm is 0), then by the learning
    rate, into a heavy-ball momentum buffer (SimCLR's "classic" momentum, no Nesterov).
    Excluded tensors (BN scale/bias, biases) get plain momentum SGD.

    SimCLR's settings (Sec. 2.3 "Default setting"): learning rate 0.3 x BatchSize / 256 (4.8 at
    batch 4096), weight decay 1e-6, momentum 0.9, trust coefficient (`eeta`) 0.001, 10 warmup
    epochs then cosine decay. Appendix B.1: square-root scaling, 0.075 x sqrt(BatchSize), does
    better for small batches and short schedules. The repository README's CIFAR-10 command
    (batch 512, ResNet-18) uses learning rate 1.0 and weight decay 1e-4.

    Args:
      learning_rate: a float or an optax schedule.
      weight_decay: L2 coefficient added to the gradient of included tensors (>= 0).
      momentum: momentum decay.
      trust_coefficient: LARS eta.
    """
    if weight_decay < 0:
        raise ValueError(f"lars_optimizer: weight_decay must be >= 0, got {weight_decay}")
    if trust_coefficient <= 0:
        raise ValueError(f"lars_optimizer: trust_coefficient must be > 0, got {trust_coefficient}")
    return optax.lars(learning_rate, weight_decay=weight_decay, weight_decay_mask=lars_mask,
                      trust_coefficient=trust_coefficient, trust_ratio_mask=lars_mask, momentum=momentum)


# ----------------------------------------------------------------------------- linear probe

@functools.partial(jax.jit, static_argnames=("num_classes",))
def _fit_logistic(x, y, l2, key, steps, *, num_classes: int):
    """Multinomial logistic regression, mean CE + l2/2 ||W||^2 (bias free), full batch, L-BFGS."""
    params = {"w": 1e-3 * jax.random.normal(key, (x.shape[1], num_classes), jnp.float32),
              "b": jnp.zeros((num_classes,), jnp.float32)}
    onehot = jax.nn.one_hot(y, num_classes)

    def objective(p):
        logits = jnp.matmul(x, p["w"], precision=jax.lax.Precision.HIGHEST) + p["b"]
        ce = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))
        return ce + 0.5 * l2 * jnp.sum(p["w"] ** 2)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def cond(carry):
        _, _, it, gnorm = carry
        return (it < steps) & (gnorm > 1e-6)

    def body(carry):
        p, state, it, _ = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(p, updates), state, it + 1, optax.tree.norm(grad)

    params, *_ = jax.lax.while_loop(cond, body, (params, opt.init(params), jnp.zeros((), jnp.int32),
                                                 jnp.array(jnp.inf, jnp.float32)))
    return params


def _top1(params, x, y):
    logits = jnp.matmul(x, params["w"], precision=jax.lax.Precision.HIGHEST) + params["b"]
    return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))


def _check_labels(name, labels, num_classes, n):
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"linear_probe: {name} must be [N] matching its features' N={n}, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"linear_probe: {name} must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"linear_probe: {name} must lie in [0, num_classes={num_classes}), "
                         f"got min {labels.min()} max {labels.max()}")


def linear_probe(train_feats, train_labels, val_feats, val_labels, num_classes: int, *, l2: float = 1e-4,
                 steps: int = 500, seed: int = 0) -> dict:
    """Linear evaluation of frozen features: multinomial logistic regression with an L2 penalty.

    SimCLR's linear transfer evaluation (Appendix B.8): an l2-regularized multinomial logistic
    regression on frozen features, optimized with L-BFGS, no augmentation. Here: features
    standardized with the train split's mean and std (constant features left centred), objective
    mean cross-entropy + l2/2 ||W||^2 (bias unpenalized), full batch, `optax.lbfgs` (zoom line
    search) for at most `steps` iterations or until the gradient norm is below 1e-6, jitted.
    The problem is convex, so `seed` (the small random start) barely matters. l2 is a
    hyperparameter SimCLR tunes per dataset (on a validation split); 1e-4 is our default.

    Args:
      train_feats, val_feats: float [N, D] arrays (numpy or jax).
      train_labels, val_labels: int [N] in [0, num_classes).
      num_classes: number of classes.

    Returns:
      {"linear_top1": val top-1, "linear_train_top1": train top-1} as python floats.
    """
    xt = np.asarray(train_feats, np.float32)
    xv = np.asarray(val_feats, np.float32)
    yt = np.asarray(train_labels)
    yv = np.asarray(val_labels)
    if num_classes < 1:
        raise ValueError(f"linear_probe: num_classes must be >= 1, got {num_classes}")
    if xt.ndim != 2 or xt.shape[0] == 0:
        raise ValueError(f"linear_probe: train_feats must be a non-empty [N, D] array, got shape {xt.shape}")
    if xv.ndim != 2 or xv.shape[0] == 0 or xv.shape[1] != xt.shape[1]:
        raise ValueError(f"linear_probe: val_feats must be a non-empty [N, {xt.shape[1]}] array, got shape {xv.shape}")
    _check_labels("train_labels", yt, num_classes, xt.shape[0])
    _check_labels("val_labels", yv, num_classes, xv.shape[0])
    if l2 < 0:
        raise ValueError(f"linear_probe: l2 must be >= 0, got {l2}")
    if steps < 1:
        raise ValueError(f"linear_probe: steps must be >= 1, got {steps}")
    mean = xt.mean(axis=0)
    std = xt.std(axis=0)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    xt, xv = (xt - mean) / std, (xv - mean) / std
    params = _fit_logistic(jnp.asarray(xt), jnp.asarray(yt, jnp.int32), jnp.float32(l2), jax.random.key(seed),
                           jnp.int32(steps), num_classes=num_classes)
    return {"linear_top1": float(_top1(params, jnp.asarray(xv), jnp.asarray(yv))),
            "linear_train_top1": float(_top1(params, jnp.asarray(xt), jnp.asarray(yt)))}
