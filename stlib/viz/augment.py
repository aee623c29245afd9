"""What the augmentation ops and policies do to a scene: galleries and the level -> argument table.

Everything draws with matplotlib at a small dpi (72) so executed notebooks stay small.
Examples are the one-example dicts of `stlib.augment` (`image` uint8 [S, S, 3] or a
normalized float32 output, `image_hw`, `boxes` yxyx pixels, `classes`, `valid`, optional
`mask` uint8 [S, S] with 255 = ignore). Used by notebooks/augmentations.ipynb.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import matplotlib.patches as patches
import matplotlib.pyplot as plt
import numpy as np

from stlib import paths
from stlib.augment import POLICIES, augment_example
from stlib.augment.flip_crop import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD
from stlib.augment.ops import AUTOAUGMENT_CONSTANTS, DETECTION_OPS, MAX_LEVEL, OPS, OpConstants, apply_op
from stlib.config import AugmentParams
from stlib.data.pipeline import DetectionData
from stlib.data.sources import build_detection_sources

DPI = 72
FIDELITY_DOC = paths.DOCS_DIR / "augment_fidelity.md"
PANEL_INCHES = 1.6
AUGMENT_KEYS = ("image", "image_hw", "boxes", "classes", "valid", "mask")
ALL_OPS = DETECTION_OPS + ("Invert",)  # the 25 detection ops (REFERENCE §1.6) + RandAugment's Invert (§2)

# Op groups for the galleries, by `OpSpec.kind`.
_GROUPS = (
    ("pixel ops (whole content)", ("color",)),
    ("cutout ops", ("cutout", "bbox_cutout")),
    ("geometric ops (boxes and mask follow)", ("geometric",)),
    ("per-box ops (*_Only_BBoxes; boxes and mask unchanged)", ("box_geometric", "box_color", "box_cutout")),
)

_MEAN = np.asarray(IMAGENET_MEAN, np.float32)
_STD = np.asarray(IMAGENET_STD, np.float32)
_IGNORE_RGBA = (0.55, 0.55, 0.55, 0.75)


# ----------------------------------------------------------------------------- drawing

def display_image(image) -> np.ndarray:
    """uint8 [H, W, 3] as is; a normalized float image un-normalized (ImageNet mean/std) to [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.clip(image.astype(np.float32) * _STD + _MEAN, 0.0, 1.0)


def mask_overlay(mask, alpha: float = 0.35) -> np.ndarray:
    """RGBA float [H, W, 4]: label 0 transparent, label k a tab20 colour, ignore (255) opaque-ish grey."""
    mask = np.asarray(mask)
    colours = plt.get_cmap("tab20")(np.arange(20))
    rgba = np.zeros(mask.shape + (4,), np.float32)
    labelled = (mask > 0) & (mask != IGNORE_LABEL)
    rgba[labelled] = colours[(mask[labelled].astype(np.int64) - 1) % 20]
    rgba[labelled, 3] = alpha
    rgba[mask == IGNORE_LABEL] = _IGNORE_RGBA
    return rgba


def _class_name(class_names, c: int) -> str:
    if class_names is None:
        return str(c)
    if isinstance(class_names, dict):
        return str(class_names.get(c, c))
    return str(class_names[c - 1]) if 0 < c <= len(class_names) else str(c)


def draw_example(ax, example: dict, title: str | None = None, class_names=None, show_mask: bool = True):
    """Draws one example on `ax`: the image, its valid boxes and its semantic mask.

    Args:
      ax: a matplotlib axis.
      example: `image` (uint8, or normalized float32 as `augment_example` returns), `boxes`
        yxyx pixels, `classes`, `valid`, optional `mask` (shown as a translucent colour
        per label; background 0 clear; ignore 255 grey).
      title: axis title.
      class_names: names by class id (dict id -> name, or a sequence where id k is item k-1);
        None writes the ids.
      show_mask: overlay the mask when the example has one.
    """
    ax.imshow(display_image(example["image"]), interpolation="nearest")
    if show_mask and example.get("mask") is not None:
        ax.imshow(mask_overlay(example["mask"]), interpolation="nearest")
    colours = plt.get_cmap("tab10")
    boxes = np.asarray(example["boxes"])
    classes = np.asarray(example["classes"])
    for (y0, x0, y1, x1), c, v in zip(boxes, classes, np.asarray(example["valid"])):
        if not v:
            continue
        col = colours(int(c) % 10)
        ax.add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=col, lw=1.0))
        if class_names is not None:
            ax.text(x0, y0, _class_name(class_names, int(c)), color="white", fontsize=5, va="bottom",
                    bbox=dict(facecolor=col, alpha=0.7, pad=0.3, lw=0))
    if title:
        ax.set_title(title, fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _grid(rows: int, cols: int):
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows + 0.3),
                             squeeze=False, dpi=DPI)
    return fig, axes


def save_figure(fig, save_dir, name: str):
    """Saves `fig` as `<save_dir>/<name>.png` when `save_dir` is set (else nothing); returns the path or None."""
    if not save_dir:
        return None
    path = Path(save_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


# ----------------------------------------------------------------------------- inputs

def _augment_inputs(examples) -> dict:
    """The examples' augmentation keys stacked on a leading axis (mask only if every example has one)."""
    examples = list(examples)
    if not examples:
        raise ValueError("no examples to draw")
    keys = [k for k in AUGMENT_KEYS if all(ex.get(k) is not None for ex in examples)]
    return {k: np.stack([np.asarray(ex[k]) for ex in examples]) for k in keys}


def _unstack(batch: dict, i: int) -> dict:
    return {k: np.asarray(v[i]) for k, v in batch.items()}


def select_ops(spec="all") -> tuple:
    """Op names from `spec`: "all" (the 25 detection ops + Invert), a comma-separated string or a sequence."""
    if isinstance(spec, str):
        names = ALL_OPS if spec.strip().lower() == "all" else tuple(s.strip() for s in spec.split(",") if s.strip())
    else:
        names = tuple(spec)
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown} (known: {', '.join(OPS)})")
    return names


def op_groups(names=ALL_OPS) -> dict:
    """{group title: op names} in `OPS` order, empty groups left out."""
    names = select_ops(names)
    groups = {}
    for title, kinds in _GROUPS:
        members = tuple(n for n in OPS if n in names and OPS[n].kind in kinds)
        if members:
            groups[title] = members
    return groups


def load_scenes(params, num: int = 3, split: str = "val", min_boxes: int = 1):
    """`num` scenes with semantic masks from `params.data`, from `split` (val | train), else the other split.

    The embedded world writes masks for both splits; a source without mask files on `split`
    falls back to the other one.
    Returns (examples, class_names): examples are `DetectionData.example` dicts restricted to
    the augmentation keys; class_names is the source's category names (class id k -> item k-1).
    """

    if split not in ("val", "train"):
        raise ValueError(f"split must be val|train, got {split!r}")
    train, val = build_detection_sources(params.data)
    sources = (val, train) if split == "val" else (train, val)
    for source in sources:
        if not any(getattr(r, "mask_file", None) for r in source.records):
            continue
        data = DetectionData(source, params.data.image_size, params.data.max_boxes, with_masks=True)
        scenes = []
        for i in data.indices:
            ex = data.example(int(i))
            if ex is None or "mask" not in ex or int(ex["valid"].sum()) < min_boxes:
                continue
            scenes.append({k: ex[k] for k in AUGMENT_KEYS})
            if len(scenes) == num:
                break
        if scenes:
            return scenes, [c["name"] for c in source.categories]
    raise ValueError(f"{train.name} / {val.name}: no scene with a mask and >= {min_boxes} boxes")


# ----------------------------------------------------------------------------- galleries

def op_prob(name: str) -> float:
    """The probability the galleries pass to `apply_op`: 1.0, or 3.0 for `*_Only_BBoxes` (every box hit)."""
    return 3.0 if OPS[name].kind.startswith("box_") else 1.0


def _op_label(name: str, level, constants) -> str:
    if OPS[name].arg(MAX_LEVEL, constants) == 0:  # no argument
        return f"{name}\nlevel {level:g}"
    sign = "±" if OPS[name].signed else ""
    return f"{name}\nlevel {level:g}: {sign}{OPS[name].arg(level, constants):.3g}"


def op_gallery(examples, op_names, levels=(0, 5, 10), constants: OpConstants = AUTOAUGMENT_CONSTANTS, seed: int = 0,
               class_names=None, title: str | None = None):
    """Each op at each level on each example: one row per (op, example), one column per level.

    Every op runs with `apply_op(key, example, name, level, prob, constants)` and prob = 1.0, so
    it always fires. `*_Only_BBoxes` ops apply to each box with probability prob/3
    (REFERENCE §1.1), so prob = 1.0 would still leave each box untouched 2 times in 3: they
    get prob = 3.0 here, which hits every valid box. A row uses one key for all its levels,
    so signed ops keep their sign and Cutout its position along the row.

    Args:
      examples: one-example dicts (uint8 image, same shapes), e.g. from `load_scenes`.
      op_names: names from `stlib.augment.ops.OPS`.
      levels: levels 0-10 (REFERENCE §1.7), one column each.
      constants: pixel constants (pass `dataclasses.replace(AUTOAUGMENT_CONSTANTS, pixel_scale=...)`
        for small worlds).
      seed: PRNG seed.
      class_names: see `draw_example`.
      title: figure title.
    Returns:
      The figure, with len(op_names) * len(examples) * len(levels) axes.
    """
    op_names = select_ops(op_names)
    levels = tuple(levels)
    batch = _augment_inputs(examples)
    n = batch["image"].shape[0]
    fig, axes = _grid(len(op_names) * n, len(levels))
    base = jax.random.PRNGKey(seed)
    for r, name in enumerate(op_names):
        prob = op_prob(name)

        def all_levels(key, ex, name=name, prob=prob):
            return tuple(apply_op(key, ex, name, level, prob, constants) for level in levels)

        keys = jax.random.split(jax.random.fold_in(base, r), n)
        outs = jax.device_get(jax.jit(jax.vmap(all_levels))(keys, batch))
        for j in range(n):
            for c, (level, out) in enumerate(zip(levels, outs)):
                draw_example(axes[r * n + j, c], _unstack(out, j), _op_label(name, level, constants), class_names)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def policy_gallery(examples, policies=POLICIES, aug: AugmentParams = AugmentParams(), samples: int = 3, seed: int = 0,
                   class_names=None, title: str | None = None):
    """Random draws of Augment-S1..S4 (`augment_example`): one row per example, original + draws per policy.

    Args:
      examples: one-example dicts (uint8 image, same shapes).
      policies: names from `stlib.augment.POLICIES`, each applied with `aug` (policy replaced).
      aug: `AugmentParams` (jitter ranges, AutoAugment policy, RandAugment N/M, pixel_scale).
      samples: draws per policy and example, each with its own key.
      seed: PRNG seed.
      class_names: see `draw_example`.
      title: figure title.
    Returns:
      The figure, with len(examples) * (1 + samples * len(policies)) axes.
    """
    policies = tuple(policies)
    batch = _augment_inputs(examples)
    n = batch["image"].shape[0]
    fig, axes = _grid(n, 1 + samples * len(policies))
    for j in range(n):
        draw_example(axes[j, 0], _unstack(batch, j), "original", class_names)
    tiled = {k: np.concatenate([v] * samples) for k, v in batch.items()}  # sample-major
    base = jax.random.PRNGKey(seed)
    for p, policy in enumerate(policies):
        aug_p = dataclasses.replace(aug, policy=policy)
        fn = jax.jit(jax.vmap(lambda k, ex, aug_p=aug_p: augment_example(k, ex, aug_p)))  # one compile per policy
        outs = jax.device_get(fn(jax.random.split(jax.random.fold_in(base, p), n * samples), tiled))
        for s in range(samples):
            for j in range(n):
                draw_example(axes[j, 1 + p * samples + s], _unstack(outs, s * n + j), f"{policy} #{s + 1}",
                             class_names)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- level -> argument

def fidelity_table(constants: OpConstants = AUTOAUGMENT_CONSTANTS, levels=range(11)) -> list:
    """Our level -> argument of every op (25 detection ops + Invert), as list of dict rows.

    Each row: {"op", "kind", "signed", "args": [OPS[op].arg(level, constants) for level in levels]}.
    The default constants are the unscaled AutoAugment ones (REFERENCE §1.1), the numbers
    docs/augment_fidelity.md lists from REFERENCE §1.7; ops without an argument give 0.
    """
    levels = list(levels)
    return [{"op": name, "kind": OPS[name].kind, "signed": OPS[name].signed,
             "args": [float(OPS[name].arg(level, constants)) for level in levels]} for name in ALL_OPS]


def fidelity_markdown(rows=None, levels=range(11)) -> str:
    """`fidelity_table` rows as a markdown table (± marks the random sign; "—" no argument)."""
    rows = fidelity_table() if rows is None else rows
    levels = list(levels)
    lines = ["| op | kind | " + " | ".join(str(l) for l in levels) + " |",
             "|---|---|" + "---|" * len(levels)]
    for row in rows:
        if not any(row["args"]):
            cells = ["—"] * len(levels)
        else:
            cells = [f"{a:.6g}" for a in row["args"]]
        sign = " (±)" if row["signed"] else ""
        lines.append(f"| {row['op']}{sign} | {row['kind']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
