"""Semantic segmentation data: images with a class per pixel (Sec. 3.2's PASCAL VOC track).

Masks follow PASCAL VOC's convention: 0 = background, k = class k (1..K), 255 = ignore (VOC's
object boundaries and "void"). At the smoke / mini scales the embedded world's scenes carry such
masks (`detection/<split>/masks/<id>.png`: the visible objects' classes, `stlib.data.world`), so
`world_segmentation_sources` reads the world's detection splits as a segmentation dataset; PASCAL
VOC's own layout (`JPEGImages/`, `SegmentationClass/` palette PNGs, `ImageSets/Segmentation/
<split>.txt`, the aug set's `SegmentationClassAug/`) is `SegmentationSource.voc`.

`SegmentationData` gives fixed-shape examples: the image scaled so its longer side is S and
padded to S x S (as detection's evaluation input), the mask with it (nearest neighbour), its
padding ignored (255). A mask whose size differs from its image, or that holds a class outside
0..K or 255, is an error naming the file; an unreadable image is a counted skip.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import threading

import numpy as np
from PIL import Image
from scipy import ndimage

from stlib.data.coco import CorruptImageError, DataError, SkipsCorruptImages, decode_image
from stlib.data.pipeline import IndexedBatches
from stlib.data.identity import listing_digest
from stlib.data.world import DETECTION_NAMES, ensure_world

IGNORE_LABEL = 255   # PASCAL VOC's "void"; the segmentation loss and mIoU skip it
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


# PASCAL VOC 2012's 20 object classes (class k is VOC_CLASSES[k - 1]; 0 is background).
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


class SegmentationSource(SkipsCorruptImages):
    """Image files with their mask files (PNG: class ids, or a palette PNG whose indices are the ids).

    Args:
      files, mask_files: paths, pairwise.
      class_names: the K object classes (class k is `class_names[k - 1]`; 0 is background).
      name: for messages.

    Attributes: `files`, `mask_files`, `num_classes` (K + 1, background included), `class_names`,
    `stats` (`images_corrupt` counted when met). Build one with `from_folders` (a folder of images,
    masks beside them by stem) or `voc` (PASCAL VOC's layout and list files).
    """

    def __init__(self, files, mask_files, class_names, name: str):
        self._lock = threading.Lock()
        self.stats = {"images_corrupt": 0}
        self.name = name
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names) + 1
        self.files, self.mask_files = [str(f) for f in files], [str(f) for f in mask_files]
        if not self.files:
            raise DataError(f"{self.name}: no images")

    @classmethod
    def from_folders(cls, images_dir, masks_dir, class_names, name: str | None = None) -> "SegmentationSource":
        """Every image (*.png, *.jpg, *.jpeg) of `images_dir` with `masks_dir/<stem>.png`; a missing
        folder or mask is a `DataError` naming it."""
        images_dir, masks_dir = pathlib.Path(images_dir), pathlib.Path(masks_dir)
        for d in (images_dir, masks_dir):
            if not d.is_dir():
                raise DataError(f"segmentation source: folder not found: {d}")
        name = name or images_dir.parent.name
        files, masks = [], []
        for n in sorted(os.listdir(images_dir)):
            if not n.lower().endswith(IMAGE_EXTENSIONS):
                continue
            mask = masks_dir / (pathlib.Path(n).stem + ".png")
            if not mask.is_file():
                raise DataError(f"{name}: image {images_dir / n} has no mask {mask}")
            files.append(images_dir / n)
            masks.append(mask)
        if not files:
            raise DataError(f"{name}: no images (*.png, *.jpg, *.jpeg) in {images_dir}")
        return cls(files, masks, class_names, name)

    @classmethod
    def voc(cls, root, split: str) -> "SegmentationSource":
        """PASCAL VOC 2012 as users have it on disk: the ids of `ImageSets/Segmentation/<split>.txt`,
        images `JPEGImages/<id>.jpg`, palette masks `SegmentationClass/<id>.png`, or, for a split
        whose name holds "aug" (the augmented set's list, e.g. `train_aug`), `SegmentationClassAug/
        <id>.png` (the aug set's masks as DeepLab distributes them). A missing list file, image or
        mask is a `DataError` naming it."""
        root = pathlib.Path(root).expanduser()
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"VOC split {split!r}: list file not found: {listing}")
        masks_dir = root / ("SegmentationClassAug" if "aug" in split else "SegmentationClass")
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        files, masks = [], []
        for n, i in enumerate(ids, 1):
            image, mask = root / "JPEGImages" / f"{i}.jpg", masks_dir / f"{i}.png"
            for f in (image, mask):
                if not f.is_file():
                    raise DataError(f"{listing}:{n}: {i!r} has no file {f}")
            files.append(image)
            masks.append(mask)
        if not files:
            raise DataError(f"{listing}: lists no image")
        return cls(files, masks, VOC_CLASSES, name=f"VOC {split}")

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, i: int) -> np.ndarray:
        return decode_image(self.files[i], self.files[i])

    def load_mask(self, i: int, image_hw: tuple) -> np.ndarray:
        """uint8 [H, W] class ids of image `i` (checked against the image's size and the classes)."""
        path = self.mask_files[i]
        try:
            with Image.open(path) as im:
                mask = np.asarray(im if im.mode in ("L", "P") else im.convert("L"), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{path}: not a readable mask PNG ({e})") from None
        if mask.shape != tuple(image_hw):
            raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {self.files[i]} is "
                            f"{image_hw[1]}x{image_hw[0]}")
        bad = np.unique(mask[(mask >= self.num_classes) & (mask != IGNORE_LABEL)])
        if bad.size:
            raise DataError(f"{path}: class id(s) {bad[:5].tolist()} outside 0..{self.num_classes - 1} "
                            f"(and {IGNORE_LABEL} = ignore)")
        return mask


@dataclasses.dataclass(frozen=True)
class MaskNoise:
    """How the world's `aug` masks are worse than the truth: our model of PASCAL's aug set (SBD's
    annotations, coarser than VOC's own, with objects missed and mislabelled; the paper gives no
    measure, so these are our choices, and `mask_agreement` reports the mIoU they leave).

    Per object (a connected region of one class): one smaller than `small_frac` of the image is
    left out (background) with probability `drop_small`; otherwise its class becomes another with
    probability `wrong_class`. Then boundaries are coarsened: the mask is picked on a grid of
    `coarsen_frac` of the image side and blown back up (blocky outlines, thin parts lost: 4 px
    blocks at 128 px). Deterministic per image."""
    coarsen_frac: float = 1 / 32
    drop_small: float = 0.5
    small_frac: float = 0.01
    wrong_class: float = 0.05


def noisy_mask(mask: np.ndarray, noise: MaskNoise, num_classes: int, seed) -> np.ndarray:
    """`mask` with `noise` applied (the ignore label kept), the same for the same `seed`."""
    rng = np.random.default_rng(seed)
    out = mask.copy()
    h, w = mask.shape
    for c in range(1, num_classes):
        regions, n = ndimage.label(mask == c)
        for r in range(1, n + 1):
            where = regions == r
            u_drop, u_class, pick = rng.random(), rng.random(), rng.integers(1, num_classes - 1) if num_classes > 2 else 1
            if where.sum() < noise.small_frac * h * w and u_drop < noise.drop_small:
                out[where] = 0
            elif num_classes > 2 and u_class < noise.wrong_class:
                out[where] = pick if pick < c else pick + 1     # any class but c
    f = max(1, round(noise.coarsen_frac * max(h, w)))
    if f > 1:
        out = np.repeat(np.repeat(out[f // 2::f, f // 2::f], f, axis=0), f, axis=1)
        out = np.pad(out, ((0, max(0, h - out.shape[0])), (0, max(0, w - out.shape[1]))), mode="edge")[:h, :w]
    return out


class NoisyMaskSource(SegmentationSource):
    """A source whose masks come through `noisy_mask` (image i's noise seeded by (seed, i))."""

    def __init__(self, base: SegmentationSource, noise: MaskNoise, seed: int = 0, name: str | None = None):
        super().__init__(base.files, base.mask_files, base.class_names, name or f"{base.name} (noisy)")
        self.noise, self.seed = noise, seed

    def load_mask(self, i: int, image_hw: tuple) -> np.ndarray:
        return noisy_mask(super().load_mask(i, image_hw), self.noise, self.num_classes, [self.seed, i])


def subset(source: SegmentationSource, indices, name: str) -> SegmentationSource:
    return SegmentationSource([source.files[i] for i in indices], [source.mask_files[i] for i in indices],
                              source.class_names, name)


def concat(name: str, *sources: SegmentationSource) -> SegmentationSource:
    """The sources one after another, each loading its own masks (precise or noisy)."""
    out = SegmentationSource([f for s in sources for f in s.files], [m for s in sources for m in s.mask_files],
                             sources[0].class_names, name)
    owners = [(s, i) for s in sources for i in range(len(s))]
    out.load_mask = lambda i, hw: owners[i][0].load_mask(owners[i][1], hw)
    return out


# The world as PASCAL VOC (issue 19): its labeled scenes split like VOC 2012 train (1,464) and
# the aug set (10,582 - 1,464 in DeepLab's train_aug): 14% precise `train`, the rest `aug` with
# `MaskNoise`; `val` the world's precise validation scenes. Our choices.
WORLD_TRAIN_FRACTION = 0.14
WORLD_SPLITS = ("train", "aug", "train_aug", "val")


def world_train_count(num_scenes: int) -> int:
    """The world's precise `train` split: a seeded `WORLD_TRAIN_FRACTION` of its labeled scenes."""
    return max(1, round(WORLD_TRAIN_FRACTION * num_scenes))


def world_split_size(num_scenes: int, split: str) -> int:
    """Images in a training split of the world read as VOC (`world_segmentation_source`)."""
    n_train = world_train_count(num_scenes)
    sizes = {"train": n_train, "aug": num_scenes - n_train, "train_aug": num_scenes}
    if split not in sizes:
        raise DataError(f"data.train_split {split!r}: the world read as VOC trains on {', '.join(sizes)}")
    return sizes[split]


def world_segmentation_source(world_scale: str, world_seed: int, split: str,
                              noise: MaskNoise = MaskNoise()) -> SegmentationSource:
    """One split of the world read as PASCAL VOC: `train` (precise masks), `aug` (noisy masks,
    `MaskNoise`), `train_aug` (both, as VOC's train + aug), `val` (precise); `aug_truth` is the aug
    split with its precise masks, the hidden truth its noise is measured against."""
    root = pathlib.Path(ensure_world(world_scale, world_seed))
    det = root / "detection"
    if split == "val":
        return SegmentationSource.from_folders(det / "val" / "images", det / "val" / "masks", DETECTION_NAMES,
                                               name=f"world {world_scale} val")
    if split not in WORLD_SPLITS + ("aug_truth",):
        raise DataError(f"world segmentation split {split!r}: not one of {', '.join(WORLD_SPLITS)}")
    scenes = SegmentationSource.from_folders(det / "train" / "images", det / "train" / "masks", DETECTION_NAMES,
                                             name=f"world {world_scale} scenes")
    order = np.random.default_rng([world_seed, 19]).permutation(len(scenes))
    n_train = world_train_count(len(scenes))
    train = subset(scenes, sorted(order[:n_train]), f"world {world_scale} train")
    aug_truth = subset(scenes, sorted(order[n_train:]), f"world {world_scale} aug (truth)")
    aug = NoisyMaskSource(aug_truth, noise, seed=world_seed, name=f"world {world_scale} aug")
    return {"train": train, "aug": aug, "aug_truth": aug_truth,
            "train_aug": concat(f"world {world_scale} train_aug", train, aug)}[split]


def world_segmentation_sources(world_scale: str, world_seed: int, train_split: str = "train"):
    """(train, val) of the world read as PASCAL VOC (`world_segmentation_source`)."""
    return (world_segmentation_source(world_scale, world_seed, train_split),
            world_segmentation_source(world_scale, world_seed, "val"))


def mask_agreement(noisy: SegmentationSource, truth: SegmentationSource) -> dict:
    """The mIoU (and per-class IoU) of `noisy`'s masks against `truth`'s, image by image: how good
    the labels of a split are (1.0: exact)."""
    k = truth.num_classes
    cm = np.zeros((k, k), np.int64)
    for i in range(len(truth)):
        hw = truth.load_image(i).shape[:2]
        t, n = truth.load_mask(i, hw).ravel(), noisy.load_mask(i, hw).ravel()
        ok = t != IGNORE_LABEL
        cm += np.bincount(t[ok].astype(np.int64) * k + np.minimum(n[ok], k - 1), minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
    return {"mIoU": float(np.nanmean(iou)), "per_class": iou.tolist(), "images": len(truth)}


def fit_square(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 [S,S,3], mask uint8 [S,S], image_hw int32 [2]): scaled so the longer side is S
    (bilinear image, nearest mask), then padded at the bottom / right (image 0, mask ignore)."""
    h, w = mask.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.NEAREST))
    img = np.zeros((size, size, 3), np.uint8)
    msk = np.full((size, size), IGNORE_LABEL, np.uint8)
    img[:nh, :nw], msk[:nh, :nw] = image, mask
    return img, msk, np.asarray([nh, nw], np.int32)


class SegmentationData(IndexedBatches):
    """Fixed-shape examples and batches of a `SegmentationSource` at image size S.

    Batches: `image` uint8 [b,S,S,3], `mask` uint8 [b,S,S] (255 = ignore, also the padding),
    `image_hw` int32 [b,2] (the content before padding), `example_valid` bool [b], and the empty
    box fields the augmentation policies carry along (`boxes` [b,1,4], `classes` [b,1], `valid`
    [b,1] False), so Augment-S1..S4 move the masks with the pixels (`stlib.augment`).
    """

    def __init__(self, source: SegmentationSource, image_size: int):
        self.source = source
        self.image_size = image_size
        self.indices = np.arange(len(source), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def example(self, i: int) -> dict | None:
        image = self.source.load_image_or_none(i)   # a corrupt image: counted, skipped
        if image is None:
            return None
        img, mask, hw = fit_square(image, self.source.load_mask(i, image.shape[:2]), self.image_size)
        return {"image": img, "mask": mask, "image_hw": hw, "example_valid": np.bool_(True),
                "boxes": np.zeros((1, 4), np.float32), "classes": np.zeros((1,), np.int32),
                "valid": np.zeros((1,), np.bool_)}


def segmentation_unlabeled(spec: str, dp) -> SegmentationSource:
    """The images a segmentation teacher labels (`self_train.unlabeled`; their masks are never
    read): `world:aug` (the world's aug split, PASCAL aug's part in Table 6 and 8) or `voc:<split>`
    (a VOC list under `data.voc_root`, e.g. `voc:train_aug`)."""
    kind, _, rest = spec.partition(":")
    if kind == "world" and rest in ("aug", "train", "val"):
        return world_segmentation_source(dp.world_scale, dp.world_seed, rest)
    if kind == "voc" and rest:
        return SegmentationSource.voc(dp.voc_root, rest)
    raise DataError(f"self_train.unlabeled {spec!r}: a segmentation student reads world:aug or voc:<split>")


def segmentation_truth(spec: str, dp) -> SegmentationSource:
    """The best masks known for the images `segmentation_unlabeled(spec, dp)` gives, in the same
    order, to measure pseudo masks against: for `world:aug` the hidden truth behind the aug
    split's noisy masks (`aug_truth`, never trained on), for `world:train` / `world:val` their
    precise masks; for `voc:<split>` the split's own human masks (for an aug list, the aug set's
    masks, themselves noisy)."""
    kind, _, rest = spec.partition(":")
    if kind == "world" and rest == "aug":
        return world_segmentation_source(dp.world_scale, dp.world_seed, "aug_truth")
    return segmentation_unlabeled(spec, dp)


class PseudoMaskSource(SegmentationSource):
    """The unlabeled images with a teacher's pseudo masks at `threshold` (`label` gives image i's
    stored `ImageLabels`; `threshold(labels)` its mask, 255 where the teacher is unsure). An image
    the labelling skipped is a counted skip, as a corrupt image."""

    def __init__(self, images: SegmentationSource, label, to_mask, name: str):
        super().__init__(images.files, images.mask_files, images.class_names, name)
        self._label, self._to_mask = label, to_mask

    def load_image(self, i: int) -> np.ndarray:
        labels = self._label(i)
        if labels.skipped or labels.mask is None:
            raise CorruptImageError(f"{self.files[i]}: no pseudo mask ({labels.skipped or 'not labelled'})")
        return super().load_image(i)

    def load_mask(self, i: int, image_hw: tuple) -> np.ndarray:
        mask = self._to_mask(self._label(i))
        if mask.shape != tuple(image_hw):
            raise DataError(f"{self.name}: the pseudo mask of {self.files[i]} is {mask.shape}, its image {image_hw}")
        return mask


def segmentation_source_identity(source: SegmentationSource) -> str:
    """The images a source holds (their names and sizes, in order), the same on every machine."""
    return listing_digest((pathlib.Path(f).name, os.stat(f).st_size) for f in source.files)[:16]
