"""The embedded world: a seeded, procedural stand-in for COCO, PASCAL and ImageNet.

Scenes (the COCO / PASCAL analogue) hold 2-7 shape objects from
``NUM_DETECTION_SHAPES`` categories that differ only in shape; colour, texture,
size, rotation and aspect are random and uninformative. Objects sit on cluttered
backgrounds (colour gradients, low-frequency noise, faint patterns and
distractor segments / blobs / irregular polygons that belong to no category) and
occlude each other (later objects are drawn on top). Object-centric images (the
ImageNet analogue) show one dominant object from a larger label space whose first
categories are the detection ones.

Everything is written to disk in standard formats under :func:`world_root`::

    manifest.json
    detection/annotations/{train,val}.json      COCO (file_name relative to detection/<split>/images/)
    detection/{train,val}/images/000000.png     RGB uint8
    detection/{train,val}/masks/000000.png      semantic mask: 0 = background, k = contiguous category 1..K
    pools/scenes/images/*.png                   unlabeled in-domain scenes
    pools/objects/images/*.png                  unlabeled object-centric images
    hidden/scenes.json                          COCO ground truth of pools/scenes (for pseudo-label checks only)
    hidden/objects.json                         {"categories", "images": [{"file_name", "label"}]}
    classification/{train,val}.json             {"categories": [{"index", "name"}], "images": [{"file_name", "label"}]}
    classification/{train,val}/images/*.png

COCO details: image ``id`` = file index + 1; annotation ids are 1-based per file;
category ids are ``2 * k + 1`` for contiguous index ``k`` (deliberately not
contiguous, like real COCO); ``bbox`` is the tight ``[x, y, w, h]`` box of the
*visible* (post-occlusion) mask, ``area`` its pixel count and ``segmentation`` its
RLE. Objects that would end up less than ``min_visible_fraction`` visible, or
smaller than ``min_visible_area`` pixels, are removed from the scene before
rendering, so nothing visible is unlabeled. Classification labels are contiguous
0-based indices into the classification categories.

Every image is a pure function of ``(seed, split, index)``, so results do not
depend on the number of worker processes. Worlds are cached by a hash of the
whole :class:`WorldSpec` and :data:`WORLD_VERSION`, and generated into a temporary
sibling directory that is renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import numbers
import os
import pathlib
import shutil
import time
import uuid
from typing import NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from stlib import paths
from stlib.data import shapes

WORLD_VERSION = 1   # the first world; a spec using any second-version field is version 2 (`world_version`)

DETECTION_NAMES: tuple[str, ...] = shapes.SHAPE_NAMES[: shapes.NUM_DETECTION_SHAPES]


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """Every knob of a world; the defaults are the ``"mini"`` preset.

    Sizes given as ``*_frac`` are fractions of the image side (scene side for
    scene knobs, ``cls_image_size`` for classification knobs), so presets with
    other image sizes keep the same look. Object "size" is the diameter of the
    unrotated shape (at 128 px the default range is 16-64 px, log-uniform, so
    small objects are common).
    """

    seed: int = 0
    scale: str = "mini"
    # --- split sizes ---
    image_size: int = 128
    num_train: int = 1200
    num_val: int = 500
    num_pool_scenes: int = 8000
    cls_image_size: int = 64
    num_cls_categories: int = 40
    num_cls_train_per_class: int = 150
    num_cls_val_per_class: int = 30
    num_pool_objects: int = 8000
    # --- scene difficulty ---
    objects_per_scene: tuple[int, int] = (2, 6)
    object_size_frac: tuple[float, float] = (16 / 128, 64 / 128)
    max_aspect: float = 1.25  # shapes are stretched by a random ratio in [1/max_aspect, max_aspect]
    max_overlap: float = 0.45  # placement: bounding circles may overlap this fraction of their summed radii
    min_visible_fraction: float = 0.3  # objects less visible than this (after occlusion) are removed
    min_visible_area: int = 12  # ... as are objects with fewer visible pixels
    clutter_per_scene: tuple[int, int] = (0, 3)
    clutter_size_frac: tuple[float, float] = (0.05, 0.25)
    background_noise: float = 28.0  # std of the low-frequency background noise (0-255 scale)
    background_pattern_prob: float = 0.15  # chance of a faint stripe/checker pattern on the background
    min_contrast: float = 80.0  # min RGB distance between object colours and the local background
    texture_strength: float = 0.5  # 1 = full-contrast two-colour textures; 0 = solid objects
    pixel_noise: float = 5.0  # std of the i.i.d. pixel noise added last
    # --- object-centric images ---
    cls_object_size_frac: tuple[float, float] = (0.4, 0.8)
    cls_clutter_per_image: tuple[int, int] = (0, 2)
    cls_clutter_size_frac: tuple[float, float] = (0.1, 0.3)
    # --- object-centric images, second version (issue 17; the defaults keep the first) ---
    # "centered": one object in the middle, nothing else (v1). "scene": the scenes' look (background,
    # clutter), one dominant object near the centre at `cls_object_size_frac`, and `cls_extra_objects`
    # smaller ones (scene sizes) around it that may be occluded; detection-class objects are boxed in
    # hidden/objects_boxes.json.
    object_images: str = "centered"
    # Texture kinds (1 stripes, 2 checker, 3 dots) that split each detection shape into fine-grained
    # classes ("circle/stripes"...), as ImageNet's dog breeds sit under COCO's dog; () = v1 vocabulary.
    cls_fine_textures: tuple[int, ...] = ()
    cls_extra_objects: tuple[int, int] = (0, 0)
    # --- rendering ---
    supersample: int = 2  # anti-aliasing: supersample x supersample samples per pixel

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        for name in ("objects_per_scene", "object_size_frac", "clutter_per_scene", "clutter_size_frac",
                     "cls_object_size_frac", "cls_clutter_per_image", "cls_clutter_size_frac", "cls_extra_objects"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"WorldSpec.{name} must be an ordered non-negative range, got {(lo, hi)}")
        for name in ("image_size", "num_train", "num_val", "num_pool_scenes", "cls_image_size",
                     "num_cls_train_per_class", "num_cls_val_per_class", "num_pool_objects", "supersample"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldSpec.{name} must be >= 1, got {getattr(self, name)}")
        if not len(DETECTION_NAMES) <= self.num_cls_categories <= len(shapes.SHAPE_NAMES):
            raise ValueError(f"WorldSpec.num_cls_categories must be in [{len(DETECTION_NAMES)}, "
                             f"{len(shapes.SHAPE_NAMES)}], got {self.num_cls_categories}")
        if self.max_aspect < 1:
            raise ValueError(f"WorldSpec.max_aspect must be >= 1, got {self.max_aspect}")
        if not 0 <= self.texture_strength <= 1:
            raise ValueError(f"WorldSpec.texture_strength must be in [0, 1], got {self.texture_strength}")
        if self.object_images not in ("centered", "scene"):
            raise ValueError(f"WorldSpec.object_images must be 'centered' or 'scene', got {self.object_images!r}")
        fine = self.cls_fine_textures
        if len(set(fine)) != len(fine) or not all(k in FINE_TEXTURES for k in fine):
            raise ValueError(f"WorldSpec.cls_fine_textures must be distinct kinds of {sorted(FINE_TEXTURES)}, "
                             f"got {fine}")
        if self.cls_extra_objects != (0, 0) and self.object_images != "scene":
            raise ValueError("WorldSpec.cls_extra_objects needs object_images='scene'")


# texture kind -> name, for the fine-grained classes (`_texture` draws them)
FINE_TEXTURES = {1: "stripes", 2: "checker", 3: "dots"}
# Fields added after the first world, with the value that reproduces it: left out of the world's
# hash and manifest while they hold it, so the first world's folder and files are unchanged.
_V1_DEFAULTS = {"object_images": "centered", "cls_fine_textures": (), "cls_extra_objects": (0, 0)}


def world_version(spec: "WorldSpec") -> int:
    """1 for the first world, 2 when the spec uses a second-version field (`_V1_DEFAULTS`)."""
    return WORLD_VERSION if set(spec_dict(spec)) == {f.name for f in dataclasses.fields(spec)} - set(_V1_DEFAULTS) \
        else 2


def spec_dict(spec: "WorldSpec") -> dict:
    """The spec as a dict, without added fields that hold their first-world value (`_V1_DEFAULTS`)."""
    d = dataclasses.asdict(spec)
    for k, v in _V1_DEFAULTS.items():
        if tuple(d[k]) == v if isinstance(v, tuple) else d[k] == v:
            del d[k]
    return d


# Candidates for the second version of the mini world (issue 17), to be calibrated before one of
# them replaces "mini": scenes at 64 or 96 px (the cost lever: a mini train step is 81 / 151 /
# 235 ms at 64 / 96 / 128 px, benchmarks/RESULTS.md), four times the labeled scenes (the
# high-data regime), and the second version's object images at the scenes' size. Our choices.
_MINI2 = dict(num_train=4800, object_images="scene", cls_fine_textures=(1, 2, 3), cls_extra_objects=(0, 2),
              cls_object_size_frac=(0.25, 0.5), cls_clutter_per_image=(0, 3))

_PRESETS: dict[str, dict] = {
    "mini": {},
    "mini2-64": dict(_MINI2, image_size=64, cls_image_size=64),
    "mini2-96": dict(_MINI2, image_size=96, cls_image_size=96),
    "smoke": dict(image_size=64, num_train=32, num_val=16, num_pool_scenes=16, cls_image_size=32,
                  num_cls_train_per_class=2, num_cls_val_per_class=1, num_pool_objects=16),
}

# split name -> (rng stream code, kind of image)
_SPLITS: dict[str, tuple[int, str]] = {
    "detection/train": (1, "scene"),
    "detection/val": (2, "scene"),
    "pools/scenes": (3, "scene"),
    "classification/train": (4, "object"),
    "classification/val": (5, "object"),
    "pools/objects": (6, "object"),
}
_CHUNK = {"scene": 64, "object": 160}


def world_spec(scale: str = "mini", seed: int = 0, **overrides) -> WorldSpec:
    """Build a :class:`WorldSpec` from a preset (``"smoke"`` or ``"mini"``) plus field overrides.

    Raises ``ValueError`` naming an unknown scale or override key.
    """
    if scale not in _PRESETS:
        raise ValueError(f"unknown world scale {scale!r}; expected one of {sorted(_PRESETS)}")
    known = {f.name for f in dataclasses.fields(WorldSpec)} - {"scale", "seed"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown WorldSpec override(s) {unknown}; known fields: {sorted(known)}")
    return WorldSpec(seed=seed, scale=scale, **{**_PRESETS[scale], **overrides})


def world_cache_dir() -> pathlib.Path:
    """The cache directory: ``$STLIB_CACHE`` if set, else ``<repo root>/.cache`` (`paths.CACHE_DIR`)."""
    env = os.environ.get("STLIB_CACHE")
    if env:
        return pathlib.Path(env)
    return paths.CACHE_DIR


def world_root(spec: WorldSpec, cache_dir=None) -> pathlib.Path:
    """Directory of the world for ``spec``: ``<cache>/world/v{VERSION}-{scale}-s{seed}-{spec hash}``."""
    blob = json.dumps(spec_dict(spec), sort_keys=True)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:10]
    base = pathlib.Path(cache_dir) if cache_dir is not None else world_cache_dir()
    return base / "world" / f"v{world_version(spec)}-{spec.scale}-s{spec.seed}-{digest}"


def detection_categories() -> list[dict]:
    """COCO category records of the detection task (ids ``2 * k + 1``)."""
    return [{"id": 2 * k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(DETECTION_NAMES)]


def _vocabulary(spec: WorldSpec) -> list[tuple[str, int | None, int]]:
    """(name, texture kind or None for any, detection index or -1) of each classification class."""
    names = shapes.SHAPE_NAMES[: spec.num_cls_categories]
    k = len(DETECTION_NAMES)
    if not spec.cls_fine_textures:
        return [(name, None, i if i < k else -1) for i, name in enumerate(names)]
    fine = [(f"{name}/{FINE_TEXTURES[t]}", t, i) for i, name in enumerate(DETECTION_NAMES) for t in spec.cls_fine_textures]
    return fine + [(name, None, -1) for name in names[k:]]


def classification_categories(spec: WorldSpec) -> list[dict]:
    """Classification category records ``{"index", "name"}``. First world: the first ones are the
    detection categories. With fine textures, each detection shape is split into one class per
    texture (``circle/stripes``...), then the shapes no detection class has; each record also
    names its ``detection_category`` (COCO id, or null)."""
    vocab = _vocabulary(spec)
    if not spec.cls_fine_textures:
        return [{"index": i, "name": name} for i, (name, _, _) in enumerate(vocab)]
    return [{"index": i, "name": name, "detection_category": 2 * det + 1 if det >= 0 else None}
            for i, (name, _, det) in enumerate(vocab)]


# ------------------------------------------------------------------ rendering
class Scene(NamedTuple):
    """A rendered scene: RGB image, semantic mask and the visible instances.

    ``instances`` is a list of ``(category_index, visible_mask)`` with the
    0-based contiguous detection category index and a full-size bool mask.
    """

    image: np.ndarray
    semantic: np.ndarray
    instances: list


def _rng(spec: WorldSpec, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, _SPLITS[split][0], index])


@functools.lru_cache(maxsize=16)
def _interp_matrix(size: int, knots: int) -> np.ndarray:
    """(size, knots) linear-interpolation weights from ``knots`` control points spread over ``size`` pixels."""
    pos = (np.arange(size) + 0.5) / size * (knots - 1)
    lo = np.minimum(pos.astype(int), knots - 2)
    frac = pos - lo
    m = np.zeros((size, knots), np.float32)
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def _background(rng, spec: WorldSpec, size: int) -> np.ndarray:
    """Colour gradient + low-frequency noise + an optional faint pattern, float32 (size, size, 3)."""
    ca, cb = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    coord = np.arange(size, dtype=np.float32) / size
    t = (coord[None, :] * math.cos(ang) + coord[:, None] * math.sin(ang))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = ca + t[..., None] * (cb - ca)
    m = _interp_matrix(size, 5)
    knots = rng.normal(0, spec.background_noise, (3, 5, 5)).astype(np.float32)
    img += (m @ knots @ m.T).transpose(1, 2, 0)
    if rng.random() < spec.background_pattern_prob:
        period = rng.uniform(0.04, 0.12) * size
        pat_ang = rng.uniform(0, math.pi)
        u = (np.arange(size)[None, :] * math.cos(pat_ang) + np.arange(size)[:, None] * math.sin(pat_ang)) / period
        if rng.random() < 0.5:
            pattern = (u % 1.0) < 0.5
        else:
            v = (np.arange(size)[:, None] * math.cos(pat_ang) - np.arange(size)[None, :] * math.sin(pat_ang)) / period
            pattern = (np.floor(u) + np.floor(v)) % 2 == 0
        img += (pattern.astype(np.float32) - 0.5)[..., None] * rng.uniform(-50, 50, 3).astype(np.float32)
    return img


def _texture(rng, kind: int, colors: np.ndarray, y0: int, x0: int, h: int, w: int, diameter: float):
    """Texture of an object's window: 0 solid, 1 stripes, 2 checker, 3 dots, 4 noisy gradient."""
    c1, c2 = colors
    if kind == 0:
        return c1
    yy = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
    xx = np.arange(x0, x0 + w, dtype=np.float32)[None, :]
    ang = rng.uniform(0, math.pi)
    ca, sa = math.cos(ang), math.sin(ang)
    if kind == 4:
        t = xx * ca + yy * sa
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        noise = rng.normal(0, 12, (h, w, 1)).astype(np.float32)
        return c1 + t[..., None] * (c2 - c1) + noise
    period = max(2.0, rng.uniform(0.12, 0.3) * diameter)
    u = (xx * ca + yy * sa) / period
    if kind == 1:
        sel = (u % 1.0) < 0.5
    else:
        v = (yy * ca - xx * sa) / period
        if kind == 2:
            sel = (np.floor(u) + np.floor(v)) % 2 == 0
        else:
            sel = ((u % 1.0) - 0.5) ** 2 + ((v % 1.0) - 0.5) ** 2 < 0.09
    return np.where(sel[..., None], c2, c1)


def _pick_colors(rng, spec: WorldSpec, local_bg: np.ndarray) -> np.ndarray:
    """Two texture colours, each at least ``min_contrast`` (RGB distance) from ``local_bg`` when possible."""
    best, best_score = None, -1.0
    for _ in range(8):
        colors = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        score = float(np.linalg.norm(colors - local_bg, axis=1).min())
        if score > best_score:
            best, best_score = colors, score
        if score >= spec.min_contrast:
            break
    return best


def _paint(rng, spec: WorldSpec, img: np.ndarray, y0: int, x0: int, alpha: np.ndarray, diameter: float,
           texture_kinds: int = 5, kind: int | None = None) -> None:
    """Composite a randomly coloured and textured object (coverage ``alpha`` at ``(y0, x0)``) onto ``img``;
    ``kind`` forces the texture (a fine-grained class), else it is drawn."""
    h, w = alpha.shape
    win = img[y0:y0 + h, x0:x0 + w]
    a = alpha[..., None]
    local_bg = (win * a).sum(axis=(0, 1)) / max(float(alpha.sum()), 1e-6)
    kind = int(rng.integers(texture_kinds)) if kind is None else kind
    colors = _pick_colors(rng, spec, local_bg)
    colors[1] = colors[0] + spec.texture_strength * (colors[1] - colors[0])
    tex = _texture(rng, kind, colors, y0, x0, h, w, diameter)
    win += a * (tex - win)


def _clutter(rng, spec: WorldSpec, img: np.ndarray, count: int, size_frac) -> None:
    """Draw ``count`` distractors (segments, blobs, irregular polygons) that belong to no category."""
    size = img.shape[0]
    for _ in range(count):
        kind = int(rng.integers(3))
        diameter = rng.uniform(*size_frac) * size
        cx, cy = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * math.pi)
        aspect = 1.0
        if kind == 0:  # line segment, 1-3 px thick
            diameter *= 1.5
            half_w = rng.uniform(0.5, 1.5) * max(1.0, size / 128) / (diameter / 2)
            inside = shapes.rect(-1.0, -half_w, 1.0, half_w)
        elif kind == 1:  # smooth irregular blob
            amps = rng.uniform(0.1, 0.3, 3)
            phases = rng.uniform(0, 2 * math.pi, 3)
            norm = 1.0 + amps.sum()
            inside = shapes.blob(lambda a, amps=amps, phases=phases, norm=norm: (
                1.0 + sum(amps[k] * np.cos((k + 2) * a + phases[k]) for k in range(3))) / norm)
            aspect = math.exp(rng.uniform(-0.5, 0.5))
        else:  # irregular polygon with strongly jittered radii
            n = int(rng.integers(5, 9))
            angs = np.sort(rng.uniform(0, 2 * math.pi, n))
            radii = rng.uniform(0.3, 1.0, n)
            inside = shapes.polygon(np.stack([radii * np.cos(angs), radii * np.sin(angs)], 1))
        res = shapes.rasterize(inside, cx, cy, diameter / 2, aspect, angle, size, size, spec.supersample)
        if res is not None and res[2].any():
            _paint(rng, spec, img, res[0], res[1], res[2], diameter, texture_kinds=5 if kind else 1)


def _finish(rng, spec: WorldSpec, img: np.ndarray) -> np.ndarray:
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(spec.pixel_noise)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _drop_hidden(spec: WorldSpec, rendered: list, size: int) -> list:
    """The objects of ``rendered`` (bottom to top: ``(cat, y0, x0, alpha, mask, diameter)``) that stay
    visible enough under the ones drawn above them (``min_visible_area``, ``min_visible_fraction``)."""
    occupied = np.zeros((size, size), bool)
    kept = []
    for obj in reversed(rendered):
        _, y0, x0, _, mask, _ = obj
        h, w = mask.shape
        full = int(mask.sum())
        visible = int((mask & ~occupied[y0:y0 + h, x0:x0 + w]).sum())
        if visible >= spec.min_visible_area and visible >= spec.min_visible_fraction * full:
            occupied[y0:y0 + h, x0:x0 + w] |= mask
            kept.append(obj)
    kept.reverse()
    return kept


def _paint_objects(rng, spec: WorldSpec, img: np.ndarray, kept: list, kinds=None) -> np.ndarray:
    """Paints ``kept`` bottom to top (texture ``kinds[i]``, or drawn); returns the owner map:
    the index of the object on top at each pixel, -1 for none."""
    owner = np.full(img.shape[:2], -1, np.int16)
    for i, (_, y0, x0, alpha, mask, diameter) in enumerate(kept):
        _paint(rng, spec, img, y0, x0, alpha, diameter, kind=None if kinds is None else kinds[i])
        h, w = mask.shape
        owner[y0:y0 + h, x0:x0 + w][mask] = i
    return owner


def render_scene(spec: WorldSpec, split: str, index: int) -> Scene:
    """Render scene ``index`` of a scene split (``detection/train``, ``detection/val``, ``pools/scenes``)."""
    rng = _rng(spec, split, index)
    size = spec.image_size
    k = len(DETECTION_NAMES)

    # 1. layout: category, size, aspect, rotation and a position that limits overlap
    placed = []  # (cat, cx, cy, radius, aspect, angle, bounding radius)
    log_lo, log_hi = (math.log(f * size) for f in spec.object_size_frac)
    log_aspect = math.log(spec.max_aspect)
    for _ in range(int(rng.integers(spec.objects_per_scene[0], spec.objects_per_scene[1] + 1))):
        cat = int(rng.integers(k))
        radius = math.exp(rng.uniform(log_lo, log_hi)) / 2
        aspect = math.exp(rng.uniform(-log_aspect, log_aspect))
        angle = rng.uniform(0, 2 * math.pi)
        rb = radius * math.sqrt(max(aspect, 1 / aspect))
        lo, hi = min(rb, size / 2), max(size - rb, size / 2)
        for _ in range(20):
            cx, cy = rng.uniform(lo, hi, 2)
            if all(math.hypot(cx - p[1], cy - p[2]) >= (1 - spec.max_overlap) * (rb + p[6]) for p in placed):
                placed.append((cat, cx, cy, radius, aspect, angle, rb))
                break

    # 2. rasterise; drop objects that later objects would occlude too much (top-down pass)
    rendered = []
    for cat, cx, cy, radius, aspect, angle, _ in placed:
        res = shapes.rasterize(shapes.SHAPES[DETECTION_NAMES[cat]], cx, cy, radius, aspect, angle,
                               size, size, spec.supersample)
        if res is not None:
            rendered.append((cat, res[0], res[1], res[2], res[2] >= 0.5, 2 * radius))
    kept = _drop_hidden(spec, rendered, size)

    # 3. paint background, clutter, then objects bottom to top
    img = _background(rng, spec, size)
    _clutter(rng, spec, img, int(rng.integers(spec.clutter_per_scene[0], spec.clutter_per_scene[1] + 1)),
             spec.clutter_size_frac)
    owner = _paint_objects(rng, spec, img, kept)
    image = _finish(rng, spec, img)

    lut = np.array([0] + [obj[0] + 1 for obj in kept], np.uint8)
    semantic = lut[owner + 1]
    instances = [(obj[0], owner == i) for i, obj in enumerate(kept)]
    return Scene(image, semantic, instances)


def render_object_image(spec: WorldSpec, split: str, index: int) -> tuple[np.ndarray, int]:
    """Render object-centric image ``index`` of ``classification/{train,val}`` or ``pools/objects``.

    Returns ``(image, label)``. Labelled splits are class balanced
    (``label = index % num_cls_categories``); pool labels are drawn at random.
    """
    rng = _rng(spec, split, index)
    n = spec.num_cls_categories
    label = int(rng.integers(n)) if split == "pools/objects" else index % n
    size = spec.cls_image_size
    img = _background(rng, spec, size)
    _clutter(rng, spec, img, int(rng.integers(spec.cls_clutter_per_image[0], spec.cls_clutter_per_image[1] + 1)),
             spec.cls_clutter_size_frac)
    diameter = rng.uniform(*spec.cls_object_size_frac) * size
    log_aspect = math.log(spec.max_aspect)
    aspect = math.exp(rng.uniform(-log_aspect, log_aspect))
    angle = rng.uniform(0, 2 * math.pi)
    rb = diameter / 2 * math.sqrt(max(aspect, 1 / aspect))
    jitter = max(0.0, min(0.12 * size, size / 2 - rb))
    cx, cy = size / 2 + rng.uniform(-jitter, jitter, 2)
    y0, x0, alpha = shapes.rasterize(shapes.SHAPES[shapes.SHAPE_NAMES[label]], cx, cy, diameter / 2, aspect,
                                     angle, size, size, spec.supersample)
    _paint(rng, spec, img, y0, x0, alpha, diameter)
    return _finish(rng, spec, img), label


def render_object_scene(spec: WorldSpec, split: str, index: int) -> tuple[np.ndarray, int, list]:
    """Object-centric image ``index`` in the second version's style (``object_images="scene"``).

    The scenes' background and clutter; one dominant object of the image's class near the centre
    (``cls_object_size_frac``; a fine-grained class forces its texture), drawn on top; and
    ``cls_extra_objects`` smaller objects of random classes at scene sizes around it, dropped when
    it hides too much of them (the scenes' rule). Returns ``(image, label, instances)`` with
    ``instances`` as in `Scene`: the visible detection-class objects, dominant one included.
    """
    rng = _rng(spec, split, index)
    vocab = _vocabulary(spec)
    n = len(vocab)
    label = int(rng.integers(n)) if split == "pools/objects" else index % n
    size = spec.cls_image_size
    log_aspect = math.log(spec.max_aspect)

    def draw(cls: int, diameter: float):
        aspect = math.exp(rng.uniform(-log_aspect, log_aspect))
        return cls, diameter, aspect, rng.uniform(0, 2 * math.pi), diameter / 2 * math.sqrt(max(aspect, 1 / aspect))

    dom = draw(label, rng.uniform(*spec.cls_object_size_frac) * size)
    jitter = max(0.0, min(0.12 * size, size / 2 - dom[4]))
    placed = [(*dom, *(size / 2 + rng.uniform(-jitter, jitter, 2)))]   # (cls, diam, aspect, angle, rb, cx, cy)
    log_lo, log_hi = (math.log(f * size) for f in spec.object_size_frac)
    for _ in range(int(rng.integers(spec.cls_extra_objects[0], spec.cls_extra_objects[1] + 1))):
        obj = draw(int(rng.integers(n)), min(math.exp(rng.uniform(log_lo, log_hi)), 0.8 * dom[1]))
        lo, hi = min(obj[4], size / 2), max(size - obj[4], size / 2)
        for _ in range(20):
            cx, cy = rng.uniform(lo, hi, 2)
            if all(math.hypot(cx - p[5], cy - p[6]) >= (1 - spec.max_overlap) * (obj[4] + p[4]) for p in placed):
                placed.append((*obj, cx, cy))
                break

    rendered = []   # bottom to top: the extra objects, then the dominant one
    for cls, diameter, aspect, angle, _, cx, cy in placed[1:] + placed[:1]:
        res = shapes.rasterize(shapes.SHAPES[vocab[cls][0].split("/")[0]], cx, cy, diameter / 2, aspect, angle,
                               size, size, spec.supersample)
        if res is not None:
            rendered.append((cls, res[0], res[1], res[2], res[2] >= 0.5, diameter))
    kept = _drop_hidden(spec, rendered, size)

    img = _background(rng, spec, size)
    _clutter(rng, spec, img, int(rng.integers(spec.cls_clutter_per_image[0], spec.cls_clutter_per_image[1] + 1)),
             spec.cls_clutter_size_frac)
    owner = _paint_objects(rng, spec, img, kept, [vocab[obj[0]][1] for obj in kept])
    instances = [(vocab[obj[0]][2], owner == i) for i, obj in enumerate(kept) if vocab[obj[0]][2] >= 0]
    return _finish(rng, spec, img), label, instances


# ----------------------------------------------------------------- generation
def _save_png(array: np.ndarray, path: pathlib.Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _instance_record(category: int, mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    bbox = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
    return {"category_id": 2 * category + 1, "bbox": bbox, "area": int(mask.sum()), "iscrowd": 0,
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}}


def _render_chunk(task) -> tuple[str, int, list]:
    """Render images ``[start, stop)`` of one split into ``out``; returns their labels / annotations."""
    spec, out, split, start, stop = task
    out = pathlib.Path(out)
    kind = _SPLITS[split][1]
    records = []
    for i in range(start, stop):
        name = f"{i:06d}.png"
        if kind == "scene":
            scene = render_scene(spec, split, i)
            _save_png(scene.image, out / split / "images" / name)
            if split.startswith("detection/"):
                _save_png(scene.semantic, out / split / "masks" / name)
            records.append([_instance_record(c, m) for c, m in scene.instances])
        elif spec.object_images == "scene":
            image, label, instances = render_object_scene(spec, split, i)
            _save_png(image, out / split / "images" / name)
            records.append((label, [_instance_record(c, m) for c, m in instances]))
        else:
            image, label = render_object_image(spec, split, i)
            _save_png(image, out / split / "images" / name)
            records.append(label)
    return split, start, records


def _split_sizes(spec: WorldSpec) -> dict[str, int]:
    n = len(_vocabulary(spec))
    return {
        "detection/train": spec.num_train,
        "detection/val": spec.num_val,
        "pools/scenes": spec.num_pool_scenes,
        "classification/train": spec.num_cls_train_per_class * n,
        "classification/val": spec.num_cls_val_per_class * n,
        "pools/objects": spec.num_pool_objects,
    }


def _coco(spec: WorldSpec, split: str, per_image: list, size: int | None = None) -> dict:
    images, annotations = [], []
    size = size or spec.image_size
    for i, anns in enumerate(per_image):
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "width": size, "height": size})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **ann})
    return {"info": {"description": f"stlib embedded world {split}", "version": world_version(spec),
                     "seed": spec.seed, "scale": spec.scale},
            "licenses": [], "images": images, "annotations": annotations, "categories": detection_categories()}


def _labels_json(spec: WorldSpec, labels: list) -> dict:
    """Labels of an object split; second version: each image also names the contiguous detection
    class (1..K) of its dominant object, 0 when it has none."""
    if spec.object_images != "scene" and not spec.cls_fine_textures:
        return {"categories": classification_categories(spec),
                "images": [{"file_name": f"{i:06d}.png", "label": int(lab)} for i, lab in enumerate(labels)]}
    det = [d for _, _, d in _vocabulary(spec)]
    labels = [lab[0] if isinstance(lab, tuple) else lab for lab in labels]
    return {"categories": classification_categories(spec),
            "images": [{"file_name": f"{i:06d}.png", "label": int(lab), "detection_class": det[lab] + 1}
                       for i, lab in enumerate(labels)]}


def _write_json(obj, path: pathlib.Path, indent=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent, separators=None if indent else (",", ":"))


def _is_complete(root: pathlib.Path, version: int) -> bool:
    try:
        with open(root / "manifest.json") as f:
            return json.load(f).get("version") == version
    except (OSError, ValueError):
        return False


def generate_world(spec: WorldSpec, cache_dir=None, workers: int | None = None, progress: bool = True) -> pathlib.Path:
    """Generate the world for ``spec`` (or find it in the cache) and return its root directory.

    A root holding a complete ``manifest.json`` is returned immediately.
    Otherwise images are rendered by a pool of ``workers`` processes (default
    ``os.cpu_count()``; ``1`` renders in-process) into a temporary sibling
    directory that is renamed into place at the end, so an interrupted run never
    leaves a world that looks complete. Workers are *spawned* (never forked, so
    a parent that already runs JAX is safe); a plain script that calls this must
    do so under ``if __name__ == "__main__":`` (notebooks need nothing).
    """
    root = world_root(spec, cache_dir)
    if _is_complete(root, world_version(spec)):
        return root
    if root.exists():  # not produced by a finished generation (renames are atomic): discard
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _generate_into(spec, tmp, root.name, workers or os.cpu_count() or 1, progress)
        try:
            os.rename(tmp, root)
        except OSError:
            if not _is_complete(root, world_version(spec)):  # lost a race only if the winner finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _remove_stale_temps(root: pathlib.Path) -> None:
    """Delete temporary dirs of ``root`` left by killed generations (their process no longer exists)."""
    for tmp in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            os.kill(int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, OSError):  # foreign name, or a live process we may not signal
            pass


def _generate_into(spec: WorldSpec, out: pathlib.Path, name: str, workers: int, progress: bool) -> None:
    start_time = time.perf_counter()
    sizes = _split_sizes(spec)
    for split in sizes:
        (out / split / "images").mkdir(parents=True)
        if split.startswith("detection/"):
            (out / split / "masks").mkdir()
    tasks = [(spec, str(out), split, lo, min(lo + _CHUNK[_SPLITS[split][1]], n))
             for split, n in sizes.items() for lo in range(0, n, _CHUNK[_SPLITS[split][1]])]
    results: dict[str, list] = {split: [None] * n for split, n in sizes.items()}
    bar = tqdm(total=sum(sizes.values()), desc=f"world {name}",
               unit="img", disable=not progress)
    try:
        if workers == 1:
            _collect(map(_render_chunk, tasks), results, bar)
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                _collect(pool.imap_unordered(_render_chunk, tasks), results, bar)
    finally:
        bar.close()

    counts = {}
    for split in ("detection/train", "detection/val"):
        coco = _coco(spec, split, results[split])
        _write_json(coco, out / "detection" / "annotations" / f"{split.split('/')[1]}.json")
        counts[split] = {"images": len(coco["images"]), "annotations": len(coco["annotations"])}
    coco = _coco(spec, "pools/scenes", results["pools/scenes"])
    _write_json(coco, out / "hidden" / "scenes.json")
    counts["pools/scenes"] = {"images": len(coco["images"]), "annotations": len(coco["annotations"])}
    for split in ("classification/train", "classification/val"):
        _write_json(_labels_json(spec, results[split]), out / "classification" / f"{split.split('/')[1]}.json")
        counts[split] = {"images": len(results[split])}
    _write_json(_labels_json(spec, results["pools/objects"]), out / "hidden" / "objects.json")
    counts["pools/objects"] = {"images": len(results["pools/objects"])}
    if spec.object_images == "scene":   # the object pool's boxes, for pseudo-label quality as on scenes
        coco = _coco(spec, "pools/objects", [anns for _, anns in results["pools/objects"]], spec.cls_image_size)
        _write_json(coco, out / "hidden" / "objects_boxes.json")
        counts["pools/objects"]["annotations"] = len(coco["annotations"])

    manifest = {
        "version": world_version(spec),
        "seed": spec.seed,
        "scale": spec.scale,
        "spec": spec_dict(spec),
        "counts": counts,
        "detection_categories": detection_categories(),
        "classification_categories": classification_categories(spec),
        "detection_to_classification": ({str(2 * k + 1): k for k in range(len(DETECTION_NAMES))}
                                        if not spec.cls_fine_textures else
                                        {str(2 * k + 1): [c["index"] for c in classification_categories(spec)
                                                          if c["detection_category"] == 2 * k + 1]
                                         for k in range(len(DETECTION_NAMES))}),
    }
    _write_json(manifest, out / "manifest.json", indent=2)  # written last: marks the world complete
    if progress:
        print(f"world generated in {time.perf_counter() - start_time:.1f}s "
              f"({sum(sizes.values())} images, {workers} worker(s))")


def _collect(chunks, results: dict, bar) -> None:
    for split, start, records in chunks:
        results[split][start:start + len(records)] = records
        bar.update(len(records))


def label_subset(image_ids, fraction: float, seed: int) -> list[int]:
    """Deterministic, nested labeled subset: the first ``round(fraction * N)`` ids of a seeded permutation.

    For a fixed id set and seed, the subset for a smaller fraction is contained
    in the subset for a larger one. Returns sorted ids (at least one when ids
    are given). Raises ``ValueError`` unless ``0 < fraction <= 1``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        return []
    order = np.random.default_rng(seed).permutation(len(ids))
    n = max(1, int(math.floor(fraction * len(ids) + 0.5)))
    return sorted(ids[j] for j in order[:n])


def ensure_world(scale: str = "mini", seed: int = 0, *, cache_dir=None, workers: int | None = None,
                 progress: bool = True, **overrides) -> pathlib.Path:
    """``generate_world(world_spec(scale, seed, **overrides))``: the root of a (cached) world."""
    return generate_world(world_spec(scale, seed, **overrides), cache_dir=cache_dir, workers=workers,
                          progress=progress)
