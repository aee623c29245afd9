"""Params: Python defaults, YAML presets that hold only what they change, strict merge.

Config flows one way: the dataclasses below are the defaults; a YAML preset in
`params/` overrides some of them; `--set key=value` overrides override the preset.
Every key and type is checked before any work is done: an unknown key or a value
of the wrong type is a `ParamsError` that names the dotted key and the file.

The resolved params are frozen and written to the run directory as `params.yaml`;
`params_hash` of that text addresses the run (same config -> same run id).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import types
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

from stlib import paths


_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ParamsError(ValueError):
    """A params file or override that does not fit the schema."""


# The small fixed enumerations of the schema (the pluggable components are in registries, see
# `validate`): each is written here once, for the check and its message.
SCALES = ("smoke", "mini", "paper")          # `scale`
# `data.world_scale`: the embedded world's presets (`stlib.data.world`), each of the scale before
# its "-" ("mini2-64" is a mini world: a candidate for the second version, issue 17).
WORLD_SCALES = ("smoke", "mini", "mini2-64", "mini2-96")
DTYPES = ("float32", "bfloat16")             # `model.dtype`
STUDENT_INITS = ("scratch", "teacher")       # `pretrain.student_init`, `self_train.student_init`
PSEUDO_LABELS = ("soft", "hard")             # `pretrain.pseudo_label`
TARGETS = ("hard", "soft")                   # `self_train.targets`
# Table 1 / Table 4 initializations named in `model.init` (resolved by stlib.experiments.inits).
NAMED_INITS = ("imagenet", "imagenet++", "simclr")


# ----------------------------------------------------------------------------
# Schema (defaults are the paper-scale RetinaNet unless a comment says otherwise)
# ----------------------------------------------------------------------------


def _added(default):
    """A field added after runs were recorded, whose default is what those runs did.

    The run id leaves it out while it holds that default, so adding a field does not
    re-address (and so re-run) every run made before it; any other value is hashed.
    """
    return dataclasses.field(default=default, metadata={"hash_omit_default": True})


@dataclasses.dataclass(frozen=True)
class DataParams:
    # "world": the embedded generated world; "coco": a COCO-format folder;
    # "tfds": a prepared tensorflow-datasets dataset (coco/2017).
    source: str = "world"
    world_scale: str = "mini"          # world preset: smoke | mini
    world_seed: int = 0
    # coco source: annotation files and image folders per split.
    train_ann: str = ""
    train_images: str = ""
    val_ann: str = ""
    val_images: str = ""
    # tfds source
    tfds_name: str = "coco/2017"
    tfds_data_dir: str = ""
    train_split: str = "train"
    val_split: str = "validation"
    max_val_images: int = 0             # 0 = all
    # PASCAL VOC 2012 on disk (data.source voc, model.head segmentation): the folder holding
    # JPEGImages/, SegmentationClass/, ImageSets/Segmentation/ (and SegmentationClassAug/ for a
    # train_split whose name holds "aug"); train_split / val_split name its list files.
    voc_root: str = _added("")
    label_fraction: float = 1.0         # Sec. 4.2: 20% / 50% / 100% of the labels (nested subsets)
    label_seed: int = 0
    image_size: int = 640               # Sec. 3.2: 640x640 images
    max_boxes: int = 100                # REFERENCE §4.2: 100 instances per image (padding)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    # Sec. 3.1 / Table 1: s1 FlipCrop | s2 AutoAugment + FlipCrop | s3 AutoAugment + large
    # scale jitter + flip + crop | s4 RandAugment + large scale jitter + flip + crop.
    policy: str = "s1"
    hflip: bool = True                  # Sec. 3.1: horizontal flips
    standard_jitter: tuple = (0.8, 1.2)  # Sec. 3.1: scale jitter of Augment-S1/S2
    large_jitter: tuple = (0.5, 2.0)    # Sec. 3.1: large scale jitter of Augment-S3/S4
    scale_range: Optional[tuple] = None  # overrides the policy's jitter range when set
    autoaugment_policy: str = "v0"      # REFERENCE §1.1: v0 is the AutoAugment-detection paper's policy
    randaugment_layers: int = 2         # our choice: Sec. 3.1 does not state N; 2 is RandAugment's default
    randaugment_magnitude: float = 10.0  # Sec. 3.1: "a magnitude of 10 for all models"
    # Multiplies the ops' pixel constants (translate 250 px, cutout 100 px, ...; REFERENCE
    # §1.1), which were set for COCO images of ~640 px. 1.0 at paper scale.
    pixel_scale: float = 1.0

    def jitter(self) -> tuple:
        """The (min, max) scale jitter this policy trains with."""
        if self.scale_range is not None:
            return tuple(self.scale_range)
        return tuple(self.standard_jitter if self.policy in ("s1", "s2") else self.large_jitter)


@dataclasses.dataclass(frozen=True)
class ModelParams:
    name: str = "retinanet"             # a label for the model family (the parts below pick the network)
    backbone: str = "resnet50"          # registry name (stlib.models.registry; `stlib zoo` lists them)
    neck: str = _added("fpn")           # fpn | nasfpn | identity (SpineNet feeds its P3-P7 directly, REFERENCE §6.5)
    head: str = _added("retinanet")     # retinanet | segmentation | classification
    # Table 1 / Table 4: rand | imagenet | imagenet++ | simclr | a checkpoint folder (written by
    # `stlib import-weights`, or a run's) whose backbone is loaded. Named inits resolve in
    # `stlib.experiments.inits`: at the smoke/mini scales to the pre-training runs of
    # params/<scale>/{pretrain,noisy_student,simclr}.yaml, at paper scale to imported public
    # checkpoints in weights/<backbone>-<name>/.
    init: str = "rand"
    activation: str = _added("relu")    # REFERENCE §4.3: relu; SpineNet configs use swish (§6.3)
    nasfpn_repeats: int = _added(5)     # REFERENCE §7.2: detection default 5; the PASCAL segmenters use 7
    separable_conv: bool = _added(False)  # REFERENCE §7.2: False for detection, True for the PASCAL segmenters
    segmentation_level: int = _added(2)   # REFERENCE §7.3: logits at stride 4
    classifier_dropout: Optional[float] = _added(None)  # None = the backbone's published value (EfficientNet §5.3), else 0
    # Stochastic depth of the backbone: None = its published rate (EfficientNet 0.2, SpineNet 0.2,
    # ResNet 0); Noisy Student's students use it as noise (Xie et al. 2020: survival 0.8 at the end).
    drop_path_rate: Optional[float] = _added(None)
    fpn_channels: int = 256             # REFERENCE §4.3
    head_convs: int = 4                 # REFERENCE §4.3
    head_channels: int = 256            # REFERENCE §4.3
    min_level: int = 3                  # Sec. 3.2: levels P3-P7
    max_level: int = 7
    num_scales: int = 3                 # Sec. 3.2: 9 anchors per pixel = 3 scales x 3 ratios
    aspect_ratios: tuple = (1.0, 2.0, 0.5)
    anchor_size: float = 4.0            # REFERENCE §4.1
    bn_momentum: float = 0.997          # REFERENCE §4.6 (TPU detection default)
    bn_epsilon: float = 1e-4
    # The backbone's BatchNorm epsilon when it differs from bn_epsilon: set from an imported
    # model.init (torchvision 1e-5, keras ResNet50 1.001e-5, EfficientNets 1e-3), whose BN
    # statistics are only right with their source's epsilon. None = bn_epsilon (or the
    # backbone's own, EfficientNet / resnet50-keras); the neck and heads keep bn_epsilon.
    backbone_bn_epsilon: Optional[float] = _added(None)
    dtype: str = "float32"              # compute dtype: float32 | bfloat16 (params stay float32)


@dataclasses.dataclass(frozen=True)
class LossParams:
    focal_alpha: float = 0.25           # REFERENCE §4.4
    focal_gamma: float = 1.5            # REFERENCE §4.4
    huber_delta: float = 0.1            # REFERENCE §4.4
    box_loss_weight: float = 50.0       # REFERENCE §4.4
    match_threshold: float = 0.5        # REFERENCE §4.2
    unmatched_threshold: float = 0.5


@dataclasses.dataclass(frozen=True)
class PostprocessParams:
    # The defaults of stlib.eval.postprocess.PostprocessConfig too.
    pre_nms_top_k: int = 5000           # REFERENCE §4.5
    score_threshold: float = 0.05       # REFERENCE §4.5
    nms_iou_threshold: float = 0.5      # REFERENCE §4.5: per-class NMS IoU
    max_detections: int = 100           # REFERENCE §4.5
    method: str = "nms"                 # stlib.eval.postprocess.NMS_METHODS (Sec. 3.2: SpineNet runs use soft_nms)
    # Sec. 3.2's Soft-NMS SpineNet runs: 0.3 is our choice, the paper's sigma was not found
    # in the sources (REFERENCE §4.5, §9).
    soft_nms_sigma: float = 0.3


@dataclasses.dataclass(frozen=True)
class TrainParams:
    batch_size: int = 256               # Sec. 3.2 (global batch)
    steps: int = 45000                  # Sec. 3.2: 45k steps for Augment-S1 (upper bound; early stopping may end sooner)
    base_lr: float = 0.32               # Sec. 3.2
    warmup_steps: int = 1000            # Sec. 3.2: linear warmup over the first 1000 steps
    warmup_init_lr: float = 0.0032      # Sec. 3.2: from 0.0032 to 0.32
    momentum: float = 0.9               # REFERENCE §4.6
    weight_decay: float = 1e-4          # Sec. 3.2
    grad_clip_norm: float = 0.0         # REFERENCE §4.4: off by default (0)
    # cosine (Sec. 3.2: cosine decay to 0 at the last step) | step (the SpineNet configs' schedule,
    # which Sec. 3.2 says the SpineNet runs keep, REFERENCE §4.6: base_lr until the first of
    # `lr_boundaries`, then each of `lr_levels` in turn). Both after the linear warmup.
    lr_schedule: str = _added("cosine")
    lr_boundaries: tuple = _added(())
    lr_levels: tuple = _added(())
    # sgd (Sec. 3.2: momentum SGD) | lars (SimCLR's optimizer: LARS, momentum 0.9, BN and
    # biases excluded from weight decay and trust-ratio scaling; Chen et al. 2020, Sec. B.1)
    optimizer: str = _added("sgd")
    seed: int = 0
    log_every: int = 50
    eval_every: int = 2000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    early_stop_patience: int = 0        # evaluations without AP gain before stopping; 0 = off
    eval_batch_size: int = 64
    tensorboard: bool = True


@dataclasses.dataclass(frozen=True)
class PretrainParams:
    """Pre-training a backbone on the object-centric classification set (`model.head:
    classification`), the ImageNet analogue of Table 1's ImageNet Init."""
    # supervised (ImageNet Init) | noisy_student (ImageNet++ Init: Sec. 3.2 / Table 2 use the
    # Noisy Student EfficientNet-B7 of Xie et al. 2020) | simclr (Table 4's SimCLR Init)
    method: str = "supervised"
    image_size: int = 224               # ImageNet's; the mini world's object images are 64 px
    augment: str = "flip_crop"          # flip_crop (flip + scale jitter 0.8-1.2 + crop) | randaugment (+ RandAugment)
    label_smoothing: float = 0.1        # our choice (EfficientNet's ImageNet recipe uses 0.1)
    # --- Noisy Student (Xie et al. 2020, "Self-training with Noisy Student improves ImageNet
    # classification"): the teacher labels the unlabeled pool, a noised student trains on
    # labeled + pseudo-labeled images.
    teacher: str = _added("")           # imagenet (the supervised run of this scale) | a run folder
    pseudo_label: str = _added("soft")  # soft (teacher probabilities; NS Sec. 3) | hard (argmax)
    confidence_threshold: float = _added(0.3)  # NS Sec. 4.1: pool images with teacher confidence < 0.3 are dropped
    balance: bool = _added(True)        # NS Sec. 4.1: equal images per class (duplicate / keep the most confident)
    pseudo_share: float = _added(0.5)   # share of the global batch from the pseudo-labeled stream (our choice: 1:1)
    # scratch (NS Sec. 2: the student trains from scratch) | teacher (Sec. 3.2 of the paper: students
    # start from their teacher "to save training time")
    student_init: str = _added("scratch")
    # --- SimCLR (Chen et al. 2020): two augmented views, projection head, NT-Xent, LARS.
    temperature: float = _added(0.5)    # SimCLR's CIFAR-10 setting (README command --temperature=0.5; 0.1 at ImageNet batch 4096)
    projection_dim: int = _added(128)   # SimCLR Sec. 2.3: 128-d output of the projection head
    projection_layers: int = _added(2)  # SimCLR v1: a 2-layer MLP head
    crop_scale: tuple = _added((0.08, 1.0))  # SimCLR App. A: random crop of 8%-100% of the area
    color_strength: float = _added(0.5)  # SimCLR's CIFAR-10 setting (README --color_jitter_strength=0.5; 1.0 on ImageNet)
    probe_l2: float = _added(1e-4)      # linear probe: L2 of the logistic regression on frozen features (our choice)


@dataclasses.dataclass(frozen=True)
class SelfTrainParams:
    """Self-training (Sec. 3.2) and joint training (Sec. 5, Table 7) of a detector.

    Both add data streams to the human-labeled detection batch (`stlib.data.mixture`): the
    teacher's pseudo-labeled images and/or the classification set with its labels. Each
    stream has its loss; the extra streams' losses are combined with the human one by
    the loss normalization of Appendix B (`stlib.losses.combine_stream_losses`).
    """
    # A finished detection run (its folder) that labels `unlabeled`; "" = no self-training.
    teacher: str = ""
    # world:objects (the ImageNet analogue: Sec. 3.2 pseudo-labels ImageNet for COCO) |
    # world:scenes (in-domain unlabeled scenes) | folder:<path> | tfds:<name>:<split>
    # (e.g. tfds:imagenet2012:train, tfds:open_images_v4:train; labels discarded).
    unlabeled: str = "world:objects"
    max_images: int = 0                 # label only the first N images of `unlabeled` (0 = all)
    score_threshold: float = 0.5        # Sec. 3.2: "a hard score threshold of 0.5" for pseudo boxes
    # Boxes down to this score are kept in the pseudo-label store (our choice), so quality
    # can be measured and explored below the training threshold without labelling again.
    store_min_score: float = 0.1
    # Our addition (0 = off, the paper's rule): pseudo boxes scoring in [ignore_threshold,
    # score_threshold) become ignore regions instead of background (stlib.pseudo.data).
    ignore_threshold: float = _added(0.0)
    # Our addition (hard = the paper's rule): soft makes each kept pseudo box a target of its
    # score instead of 1 (an anchor takes, per class, the best score of the boxes it matches;
    # focal loss with soft targets, box loss weighted by the score), so with a low
    # score_threshold an object the teacher half-saw is taught as half an object, not as
    # background. Needs data.max_boxes >= the kept boxes per image (truncation is counted).
    targets: str = _added("hard")
    # Our diagnostic (not a method): the pseudo boxes are the pool's hidden ground truth
    # (world:scenes only), so a run measures what perfect pseudo labels would give.
    oracle: bool = _added(False)
    nms: str = "nms"                    # the teacher's post-processing for pseudo boxes: nms | soft_nms (sigma: postprocess.soft_nms_sigma)
    pseudo_ratio: float = 1.0           # pseudo examples per human example: Sec. 3.2 batch 512 = 256 COCO + 256 pseudo
    alpha: float = 1.0                  # Appendix B: weight of the pseudo loss
    loss_norm: bool = True              # Appendix B: normalized loss; False = the plain L_h + alpha * L_p (ablation)
    norm_momentum: float = 0.99         # our choice: EMA of each stream's loss for the normalization
    student_init: str = "teacher"       # Sec. 3.2: "the student is initialized from the teacher"; scratch = model.init
    # Joint training (Sec. 5): the classification set trained beside detection with a
    # classification head on the shared backbone, "the exact setup as self-training".
    joint: bool = False
    joint_ratio: float = 1.0            # classification examples per human detection example (Sec. 5: half and half)
    # Where joint training's labeled classification images come from: world (the embedded world's
    # classification set, smoke / mini) | folder:<path> (ImageNet's layout on disk: one sub-folder
    # per class, e.g. ILSVRC/Data/CLS-LOC/train; paper scale). Our addition; Sec. 5 uses ImageNet.
    joint_source: str = _added("world")
    joint_alpha: float = 1.0            # weight of the classification loss (normalized like the pseudo loss)


@dataclasses.dataclass(frozen=True)
class Params:
    name: str = "retinanet"
    description: str = ""
    # smoke | mini | paper: the scale a params file is made for. Every file must say it (the
    # defaults above are the paper's, so a file that says nothing is a paper-scale run: an empty
    # file generated the mini world and then asked for 164 GB); `validate` checks it against the
    # data it names. "" = not set: the defaults alone (tests), and runs recorded before the field.
    scale: str = _added("")
    data: DataParams = DataParams()
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    loss: LossParams = LossParams()
    postprocess: PostprocessParams = PostprocessParams()
    train: TrainParams = TrainParams()
    pretrain: PretrainParams = _added(PretrainParams())
    self_train: SelfTrainParams = _added(SelfTrainParams())


# ----------------------------------------------------------------------------
# Strict merge
# ----------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Checks `value` against the annotation `tp`; returns the value in its canonical type."""
    if isinstance(tp, str):
        tp = eval(tp, {"Optional": Optional, "tuple": tuple})  # annotations are strings (PEP 563)
    o = typing.get_origin(tp)
    if o in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    bad = ParamsError(f"{origin}: '{key}' must be {getattr(tp, '__name__', tp)}, got {value!r} ({type(value).__name__})")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str) and _SCI.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        return tuple(value)
    raise ParamsError(f"{origin}: '{key}' has an unsupported type {tp}")


def _merge(obj: Any, changes: dict, origin: str, prefix: str = "") -> Any:
    if not isinstance(changes, dict):
        raise ParamsError(f"{origin}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {changes!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    updates = {}
    for k, v in changes.items():
        key = prefix + str(k)
        if k not in fields:
            raise ParamsError(f"{origin}: unknown key '{key}' (known: {', '.join(sorted(fields))})")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            updates[k] = _merge(cur, v, origin, key + ".")
        else:
            updates[k] = _coerce(v, fields[k].type, key, origin)
    return dataclasses.replace(obj, **updates)


def _parse_override(item: str) -> dict:
    if "=" not in item:
        raise ParamsError(f"--set {item!r}: expected key=value (e.g. train.steps=100)")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _is_resolved_dump(content: dict) -> bool:
    """Whether a params file is a run's resolved `params.yaml` (`dump_params`), which may predate
    `scale`: it spells out every section, and in `data` and `train` every field the schema had
    before `_added` fields (so no default stands in for the sizes it ran with)."""
    if not all(k in content for k in ("name", "description", "data", "augment", "model", "loss", "postprocess",
                                      "train")):
        return False
    for key, schema in (("data", DataParams), ("train", TrainParams)):
        needed = {f.name for f in dataclasses.fields(schema) if not f.metadata.get("hash_omit_default")}
        if not isinstance(content[key], dict) or not needed <= set(content[key]):
            return False
    return True


def load_params(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Params:
    """Defaults <- YAML file <- `key=value` overrides, strictly checked.

    Args:
      path: a YAML preset (holds only what it changes, and its `scale`), or None for the
        defaults. A file whose params end without a `scale` (an empty file, say, which would
        be the paper-scale defaults) is an error; a run's resolved params.yaml written before
        `scale` existed is accepted as it is.
      overrides: strings like "train.steps=100" (values parsed as YAML).
    Returns:
      Frozen `Params`.
    """
    params = Params()
    content: Any = None
    if path is not None:
        path = paths.preset(path)   # a file, or a shipped preset by name (mini/retinanet)
        if not path.is_file():
            raise ParamsError(f"params file not found: {path}")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ParamsError(f"{path}: not valid YAML: {e}") from None
        params = _merge(params, content, str(path))
    for item in overrides:
        params = _merge(params, _parse_override(item), f"--set {item}")
    if path is not None and not params.scale and not _is_resolved_dump(content):
        raise ParamsError(
            f"{path}: {'empty params file' if not content else 'no scale'}: every params file must set "
            f"`scale: {'|'.join(SCALES)}` (without it the defaults are paper scale: COCO-sized images and batch "
            f"{Params().train.batch_size})")
    validate(params)
    return params


def validate(p: Params) -> None:
    """Cross-field checks that types alone cannot express.

    The fields that pick a component by name (data.source, augment.policy, model.backbone, ...)
    are checked by `stlib.registry.check_choices`, against the registries where the components
    are defined: this schema holds no list of them."""
    def need(cond, msg):
        if not cond:
            raise ParamsError(msg)

    def one_of(key, value, choices, note=""):
        need(value in choices, f"{key} must be {'|'.join(choices)}{note}, got {value!r}")
    # The scale a file says it is for, against the data it names ("" = not set: the defaults, old runs).
    if p.scale:
        one_of("scale", p.scale, SCALES)
    if p.data.source == "world":
        one_of("data.world_scale", p.data.world_scale, WORLD_SCALES, " (the embedded world's presets)")
        need(p.scale != "paper", "scale is paper but data.source is world: the embedded world has the smoke and "
             "mini scales only; paper scale reads COCO (data.source tfds|coco)")
        need(p.scale in ("", p.data.world_scale.split("-")[0].rstrip("0123456789")),
             f"scale is {p.scale} but data.world_scale is "
             f"{p.data.world_scale!r}: a {p.scale} params file runs on the {p.scale} world (set both)")
    need(0.0 < p.data.label_fraction <= 1.0, f"data.label_fraction must be in (0, 1], got {p.data.label_fraction}")
    # Ranges: (dotted key, test, what it must be); NaN fails every test.
    ranges = (
        ("data.image_size", lambda v: v > 0, "> 0"),
        ("data.max_boxes", lambda v: v >= 1, ">= 1"),
        ("data.max_val_images", lambda v: v >= 0, ">= 0 (0 = all)"),
        ("model.fpn_channels", lambda v: v >= 1, ">= 1"),
        ("model.head_channels", lambda v: v >= 1, ">= 1"),
        ("model.head_convs", lambda v: v >= 1, ">= 1"),
        ("model.min_level", lambda v: 1 <= v <= p.model.max_level, f"in [1, model.max_level={p.model.max_level}]"),
        ("model.num_scales", lambda v: v >= 1, ">= 1"),
        ("model.aspect_ratios", lambda v: len(v) >= 1 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v),
         "a non-empty list of numbers > 0"),
        ("model.anchor_size", lambda v: v > 0, "> 0"),
        ("model.bn_momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("model.bn_epsilon", lambda v: v > 0, "> 0"),
        ("model.backbone_bn_epsilon", lambda v: v is None or v > 0, "> 0 (or null: model.bn_epsilon)"),
        ("loss.focal_alpha", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("loss.focal_gamma", lambda v: v >= 0, ">= 0"),
        ("loss.huber_delta", lambda v: v > 0, "> 0"),
        ("loss.box_loss_weight", lambda v: v >= 0, ">= 0"),
        ("loss.match_threshold", lambda v: 0 < v <= 1, "in (0, 1]"),
        ("loss.unmatched_threshold", lambda v: 0 < v <= p.loss.match_threshold,
         f"in (0, loss.match_threshold={p.loss.match_threshold}]"),
        ("postprocess.pre_nms_top_k", lambda v: v >= 1, ">= 1"),
        ("postprocess.score_threshold", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("postprocess.nms_iou_threshold", lambda v: 0 < v <= 1, "in (0, 1]"),
        ("postprocess.max_detections", lambda v: v >= 1, ">= 1"),
        ("postprocess.soft_nms_sigma", lambda v: v > 0, "> 0"),
        ("train.batch_size", lambda v: v >= 1, ">= 1"),
        ("train.steps", lambda v: v >= 1, ">= 1"),
        ("train.base_lr", lambda v: v > 0, "> 0"),
        ("train.warmup_steps", lambda v: 0 <= v < p.train.steps, f"in [0, train.steps={p.train.steps})"),
        ("train.warmup_init_lr", lambda v: v >= 0, ">= 0"),
        ("train.momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("train.weight_decay", lambda v: v >= 0, ">= 0"),
        ("train.grad_clip_norm", lambda v: v >= 0, ">= 0 (0 = off)"),
        ("train.lr_schedule", lambda v: v in ("cosine", "step"), "cosine|step"),
        ("train.lr_boundaries", lambda v: list(v) == sorted(set(v)) and all(
            isinstance(x, int) and p.train.warmup_steps <= x < p.train.steps for x in v),
         f"increasing steps in [train.warmup_steps={p.train.warmup_steps}, train.steps={p.train.steps})"),
        ("train.lr_levels", lambda v: len(v) == len(p.train.lr_boundaries) and all(
            isinstance(x, (int, float)) and x >= 0 for x in v) and (p.train.lr_schedule == "step" or not v),
         f"one learning rate >= 0 per train.lr_boundaries ({len(p.train.lr_boundaries)}), with lr_schedule step"),
        ("train.log_every", lambda v: v >= 1, ">= 1"),
        ("train.eval_every", lambda v: v >= 1, ">= 1"),
        ("train.checkpoint_every", lambda v: v >= 1, ">= 1"),
        ("train.keep_checkpoints", lambda v: v >= 1, ">= 1"),
        ("train.early_stop_patience", lambda v: v >= 0, ">= 0 (0 = off)"),
        ("train.eval_batch_size", lambda v: v >= 1, ">= 1"),
        ("pretrain.image_size", lambda v: v > 0, "> 0"),
    )
    for key, ok, what in ranges:
        section, name = key.split(".")
        value = getattr(getattr(p, section), name, None)
        need(ok(value), f"{key} must be {what}, got {value!r}")
    # Backbone strides go to 32 (C5); coarser levels are ceil-sized, like their anchor grids.
    need(p.data.image_size % 32 == 0, f"data.image_size ({p.data.image_size}) must be a multiple of 32")
    a = p.augment
    for k in ("standard_jitter", "large_jitter", "scale_range"):
        v = getattr(a, k)
        need(v is None or (len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and 0 < v[0] <= v[1]),
             f"augment.{k} must be [min, max] with 0 < min <= max, got {v!r}")
    need(a.randaugment_layers >= 1, f"augment.randaugment_layers must be >= 1, got {a.randaugment_layers}")
    need(0 <= a.randaugment_magnitude <= 30, f"augment.randaugment_magnitude must be in [0, 30], got {a.randaugment_magnitude}")
    need(a.pixel_scale > 0, f"augment.pixel_scale must be > 0, got {a.pixel_scale}")
    m = p.model
    need(m.nasfpn_repeats >= 1, f"model.nasfpn_repeats must be >= 1, got {m.nasfpn_repeats}")
    need(m.classifier_dropout is None or 0.0 <= m.classifier_dropout < 1.0,
         f"model.classifier_dropout must be in [0, 1), got {m.classifier_dropout}")
    pt = p.pretrain
    need(pt.method != "noisy_student" or pt.teacher,
         "pretrain.teacher is required for noisy_student (imagenet, or a supervised pre-training run folder)")
    one_of("pretrain.student_init", pt.student_init, STUDENT_INITS)
    one_of("pretrain.pseudo_label", pt.pseudo_label, PSEUDO_LABELS)
    need(0.0 <= pt.confidence_threshold < 1.0,
         f"pretrain.confidence_threshold must be in [0, 1), got {pt.confidence_threshold}")
    need(0.0 < pt.pseudo_share < 1.0, f"pretrain.pseudo_share must be in (0, 1), got {pt.pseudo_share}")
    need(pt.temperature > 0, f"pretrain.temperature must be > 0, got {pt.temperature}")
    need(pt.projection_dim > 0 and pt.projection_layers >= 1,
         f"pretrain.projection_dim must be > 0 and projection_layers >= 1, got {pt.projection_dim}, "
         f"{pt.projection_layers}")
    need(len(pt.crop_scale) == 2 and 0 < pt.crop_scale[0] <= pt.crop_scale[1] <= 1,
         f"pretrain.crop_scale must be [min, max] with 0 < min <= max <= 1, got {pt.crop_scale!r}")
    need(pt.color_strength >= 0, f"pretrain.color_strength must be >= 0, got {pt.color_strength}")
    need(pt.probe_l2 >= 0, f"pretrain.probe_l2 must be >= 0, got {pt.probe_l2}")
    need(m.drop_path_rate is None or 0.0 <= m.drop_path_rate < 1.0,
         f"model.drop_path_rate must be in [0, 1), got {m.drop_path_rate}")
    need(0.0 <= p.pretrain.label_smoothing < 1.0,
         f"pretrain.label_smoothing must be in [0, 1), got {p.pretrain.label_smoothing}")
    need(p.pretrain.image_size % 32 == 0, f"pretrain.image_size ({p.pretrain.image_size}) must be a multiple of 32")
    need(m.init in ("rand",) + NAMED_INITS or Path(m.init).expanduser().exists()
         or (paths.REPO_ROOT / m.init).exists(),
         f"model.init {m.init!r}: not rand|{'|'.join(NAMED_INITS)} and no such checkpoint folder "
         "(write one with `stlib import-weights`, or give a run folder)")
    st = p.self_train
    need(0.0 < st.score_threshold < 1.0, f"self_train.score_threshold must be in (0, 1), got {st.score_threshold}")
    need(0.0 < st.store_min_score <= st.score_threshold,
         f"self_train.store_min_score must be in (0, score_threshold={st.score_threshold}], got {st.store_min_score}")
    need(st.ignore_threshold == 0 or st.store_min_score <= st.ignore_threshold < st.score_threshold,
         f"self_train.ignore_threshold must be 0 (off) or in [store_min_score={st.store_min_score}, "
         f"score_threshold={st.score_threshold}), got {st.ignore_threshold}")
    need(st.pseudo_ratio > 0 and st.joint_ratio > 0,
         f"self_train.pseudo_ratio and joint_ratio must be > 0, got {st.pseudo_ratio}, {st.joint_ratio}")
    need(st.alpha >= 0 and st.joint_alpha >= 0,
         f"self_train.alpha and joint_alpha must be >= 0, got {st.alpha}, {st.joint_alpha}")
    need(0.0 <= st.norm_momentum < 1.0, f"self_train.norm_momentum must be in [0, 1), got {st.norm_momentum}")
    one_of("self_train.targets", st.targets, TARGETS)
    need(not st.oracle or st.unlabeled == "world:scenes",
         f"self_train.oracle needs the pool with hidden ground-truth boxes, world:scenes; "
         f"self_train.unlabeled is {st.unlabeled!r}")
    one_of("self_train.student_init", st.student_init, STUDENT_INITS)
    need(st.max_images >= 0, f"self_train.max_images must be >= 0, got {st.max_images}")
    one_of("model.dtype", p.model.dtype, DTYPES)
    if p.data.source == "coco":
        for k in ("train_ann", "train_images", "val_ann", "val_images"):
            need(getattr(p.data, k), f"data.{k} is required when data.source is coco")


def to_dict_plain(x: Any) -> Any:
    """Tuples to lists, recursively (what YAML writes and reads back)."""
    if isinstance(x, dict):
        return {k: to_dict_plain(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [to_dict_plain(v) for v in x]
    return x


def to_dict(p: Any) -> dict:
    return to_dict_plain(dataclasses.asdict(p))


def dump_params(p: Params) -> str:
    """The resolved params as YAML text (stable key order)."""
    return yaml.safe_dump(to_dict(p), sort_keys=True, default_flow_style=None)


def _hashed_dict(obj: Any) -> dict:
    """`to_dict` without the `_added` fields that hold their default (see `_added`)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.metadata.get("hash_omit_default") and v == f.default:
            continue
        out[f.name] = _hashed_dict(v) if dataclasses.is_dataclass(v) else v
    return out


def params_hash(p: Params) -> str:
    """Hash of the resolved params (the YAML text `dump_params` writes, less defaulted `_added` fields)."""
    text = yaml.safe_dump(to_dict_plain(_hashed_dict(p)), sort_keys=True, default_flow_style=None)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def run_id(p: Params) -> str:
    """Content address of a run: its name plus the hash of its resolved params."""
    return f"{p.name}-{params_hash(p)}"
