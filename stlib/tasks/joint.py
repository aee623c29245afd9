"""Joint training's classification branch (Sec. 5, Table 7): the detector's own backbone
with a classification head, trained on the classification set beside detection.

The head's variables live in the detector's state under "cls_head" (next to "backbone",
"fpn" and "head"), so a joint student's checkpoint still loads as a detector and a
detector's checkpoint (the teacher) initializes a joint student with a fresh head.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from stlib.losses import classification_loss
from stlib.models.registry import classification_head, create_backbone


class JointClassifier:
    """`loss(params, batch_stats, images, batch, rng, label_smoothing)` of the classification
    stream through the shared backbone; `init(rng, image_size)` makes the head's variables."""

    def __init__(self, model_params, num_classes: int):
        self.dtype = jnp.bfloat16 if model_params.dtype == "bfloat16" else jnp.float32
        self.backbone = create_backbone(model_params)()
        self.head = classification_head(model_params, num_classes)()
        self.num_classes = num_classes

    def init(self, rng, image_size: int) -> dict:
        """{"params": ..., maybe "batch_stats": ...} of a fresh head for `image_size` inputs."""
        images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
        feats = jax.eval_shape(lambda: self.backbone.init_with_output(rng, images, train=False)[0])
        feats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), feats)
        return dict(self.head.init(rng, feats, train=False))

    def loss(self, params, batch_stats, images, batch, rng, label_smoothing: float):
        """(mean cross-entropy, accuracy, the head's new BN statistics or {}).

        The backbone runs in training mode (batch statistics), but its running averages are
        kept from the detection pass: evaluation and pseudo labelling run on detection images.
        """
        feats, _ = self.backbone.apply({"params": params["backbone"], "batch_stats": batch_stats["backbone"]},
                                       images.astype(self.dtype), train=True, mutable=["batch_stats"],
                                       rngs={"dropout": rng})
        head_vars = {"params": params["cls_head"]}
        if "cls_head" in batch_stats:
            head_vars["batch_stats"] = batch_stats["cls_head"]
        logits, new_vars = self.head.apply(head_vars, feats, train=True, mutable=["batch_stats"],
                                           rngs={"dropout": jax.random.fold_in(rng, 1)})
        weight = batch["example_valid"].astype(jnp.float32)
        loss, acc = classification_loss(logits, batch["label"], weight, label_smoothing)
        return loss, acc, new_vars.get("batch_stats", {})
