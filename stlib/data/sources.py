"""Detection sources named by params (`data.source`): the embedded world, a COCO-format folder, or
tfds; `voc` names PASCAL VOC, which only the segmentation task reads."""
from __future__ import annotations

from stlib.data.coco import CocoSource, DataError
from stlib.data.world import ensure_world, label_subset
from stlib.config import ParamsError
from stlib.registry import Registry


def label_subset_source(source, fraction: float, seed: int):
    """Sec. 4.2: a nested, deterministic labelled fraction of a training source."""
    if fraction >= 1.0:
        return source
    ids = label_subset([r.image_id for r in source.records], fraction, seed)
    return source.subset(ids)


# name -> builder(dp) -> (train, val) sources, before the labelled fraction (`data.source`)
SOURCES = Registry("detection source", field="data.source")


@SOURCES.register("world")
def world_sources(dp):
    """The embedded generated world `ensure_world(dp.world_scale, dp.world_seed)`."""
    root = ensure_world(dp.world_scale, dp.world_seed)
    det = root / "detection"
    train = CocoSource(det / "annotations" / "train.json", det / "train" / "images", name="world/train")
    val = CocoSource(det / "annotations" / "val.json", det / "val" / "images", name="world/val")
    return train, val


@SOURCES.register("coco")
def coco_sources(dp):
    """A COCO-format folder: `data.{train,val}_{ann,images}`."""
    return CocoSource(dp.train_ann, dp.train_images), CocoSource(dp.val_ann, dp.val_images)


@SOURCES.register("tfds")
def tfds_sources(dp):
    """A prepared tensorflow-datasets dataset (`data.tfds_name`, its splits)."""
    from stlib.data.tfds_source import TfdsCocoSource
    train = TfdsCocoSource(dp.tfds_name, dp.train_split, dp.tfds_data_dir or None)
    val = TfdsCocoSource(dp.tfds_name, dp.val_split, dp.tfds_data_dir or None)
    return train, val


@SOURCES.register("voc")
def voc_sources(dp):
    """PASCAL VOC is a segmentation dataset: `stlib.tasks.segmentation` reads it, not detection."""
    raise ParamsError("data.source voc is PASCAL VOC's segmentation data: it trains a segmenter "
                      "(model.head segmentation), not a detector")


def build_detection_sources(dp):
    """(train_source, val_source) for `stlib.config.DataParams` `dp`; labelled fraction applied to train."""
    train, val = SOURCES.get(dp.source)(dp)
    if [c["id"] for c in train.categories] != [c["id"] for c in val.categories]:
        raise DataError(f"{train.name} and {val.name} have different categories")
    if dp.max_val_images:
        val = val.subset([r.image_id for r in val.records[: dp.max_val_images]])
    return label_subset_source(train, dp.label_fraction, dp.label_seed), val
