"""The linear probe: top-1 of a logistic regression on frozen features (SimCLR Appendix B.8),
the validation metric of SimCLR pre-training."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


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
