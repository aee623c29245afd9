"""Named initializations (Table 1 / Table 4): `model.init: rand | imagenet | imagenet++ | simclr`.

A name resolves to a checkpoint folder before the run is addressed, so a detector's run id
hashes the exact checkpoint it starts from (a changed pre-training preset is a new
pre-training run id, hence a new detector run id: the content-addressed cache stays right).

- smoke / mini scale (`data.source: world`): the pre-training runs of this repository's
  presets, `params/<world_scale>/{pretrain,noisy_student,simclr}.yaml`, made in the
  embedded world by `stlib inits --scale <scale>` (or `stlib pretrain <preset>`).
- paper scale (`data.source: coco | tfds`): public checkpoints imported with
  `stlib import-weights` into `weights/<backbone>-<name>/`; a missing one is an error that
  says which public file to fetch and the import command.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from stlib import config as cfg
from stlib import paths
from stlib.experiments import identity
from stlib.models.weight_import import check_conventions
from stlib.models.weight_import import init_conventions as imported_conventions

# name -> the pre-training preset (under params/<world_scale>/) that makes it in the embedded world
PRESETS = {"imagenet": "pretrain.yaml", "imagenet++": "noisy_student.yaml", "simclr": "simclr.yaml"}
# What each name is in the paper (for messages and the README).
DESCRIPTIONS = {
    "imagenet": "supervised ImageNet pre-training (Table 1 'ImageNet Init'; EfficientNet-B7 84.5% top-1, Sec. 3.2)",
    "imagenet++": "Noisy Student ImageNet pre-training (Table 2 'ImageNet++ Init'; EfficientNet-B7 86.9%, Sec. 3.2)",
    "simclr": "self-supervised SimCLR pre-training on ImageNet (Table 4 'SimCLR Init'; ResNet-50)",
}

# Paper scale: (backbone, name) -> (public file, how to fetch it, import command). The commands
# are the README's "Model zoo and public checkpoints" ones.
PUBLIC = {
    ("efficientnet-b7", "imagenet"): (
        "keras-applications efficientnetb7.h5 (EfficientNet-B7, AutoAugment, 84.5%)",
        "python -c \"import keras; keras.applications.EfficientNetB7(weights='imagenet')\"",
        "stlib import-weights efficientnet-b7 ~/.keras/models/efficientnetb7.h5 {out}"),
    ("efficientnet-b7", "imagenet++"): (
        "timm tf_efficientnet_b7.ns_jft_in1k (Noisy Student EfficientNet-B7, 86.9%)",
        "python -c \"import timm, safetensors.torch as st; st.save_file(timm.create_model("
        "'tf_efficientnet_b7.ns_jft_in1k', pretrained=True).state_dict(), 'effb7_ns.safetensors')\"",
        "stlib import-weights efficientnet-b7 effb7_ns.safetensors {out}"),
    ("resnet50", "imagenet"): (
        "torchvision resnet50 IMAGENET1K_V1 (76.1%)",
        "python -c \"import torchvision, safetensors.torch as st; st.save_file(torchvision.models.resnet50("
        "weights='IMAGENET1K_V1').state_dict(), 'r50.safetensors')\"",
        "stlib import-weights resnet50 r50.safetensors {out}"),
    ("resnet50", "simclr"): (
        "SimCLR v1 ResNet-50 (1x) converted to torchvision layout (google-research/simclr checkpoints "
        "through a converter such as tonylins/simclr-converter: resnet50-1x.pth)",
        "fetch the SimCLR v1 ResNet50_1x checkpoint and convert it to a torchvision state dict",
        "stlib import-weights resnet50 resnet50-1x.pth {out} --input unit"),
}


class InitError(cfg.ParamsError):
    """A named init that cannot be resolved to a checkpoint (says how to make one)."""


def preset_path(name: str, world_scale: str) -> Path:
    return paths.PARAMS_DIR / world_scale / PRESETS[name]


def preset_params(name: str, world_scale: str) -> cfg.Params:
    path = preset_path(name, world_scale)
    if not path.is_file():
        raise InitError(f"model.init {name!r}: no pre-training preset for the {world_scale!r} world "
                        f"({path} does not exist)")
    return cfg.load_params(path)


def _display(path: Path) -> str:
    """Repo-relative when under the repository (stable across checkouts)."""
    return paths.relative(path)


def world_init_dir(name: str, world_scale: str, outputs=None) -> Path:
    """The run folder the preset of `name` trains into (it may not exist yet). Its run id hashes
    the preset with its own named teacher resolved (Noisy Student's)."""
    return run_dir_of(resolve_init(preset_params(name, world_scale), outputs, require=False), outputs)


def run_dir_of(params: cfg.Params, outputs=None) -> Path:
    """<outputs>/runs/<run id> of `params` (inits resolved), `stlib.experiments.identity`."""
    return paths.outputs_root(outputs) / "runs" / identity.run_id(params)


def has_checkpoint(run_dir: Path) -> bool:
    ck = Path(run_dir) / "checkpoints"
    return any(p.name.isdigit() for sub in ("best", "latest") if (ck / sub).is_dir() for p in (ck / sub).iterdir())


def resolve_named(name: str, params: cfg.Params, outputs=None, require: bool = True, what: str = "model.init") -> str:
    """The checkpoint folder named init `name` means for `params` (see the module docstring).

    With `require`, a folder that does not exist or holds no checkpoint is an `InitError` that
    names the command (mini) or the public file and import command (paper) that make it.
    """
    if name not in cfg.NAMED_INITS:
        raise InitError(f"{what} {name!r}: not one of {', '.join(cfg.NAMED_INITS)}")
    backbone = params.model.backbone
    if params.data.source == "world":
        scale = params.data.world_scale
        pre = preset_params(name, scale)
        run_dir = world_init_dir(name, scale, outputs)
        if pre.model.backbone != backbone:
            raise InitError(
                f"{what} {name!r}: the {scale} world's {name} run ({preset_path(name, scale).name}) pre-trains "
                f"{pre.model.backbone!r}, but this run's model.backbone is {backbone!r}; pre-train {backbone} "
                f"with `stlib pretrain {_display(preset_path(name, scale))} --set model.backbone={backbone}` "
                "and pass its run folder as model.init")
        if require and not has_checkpoint(run_dir):
            raise InitError(
                f"{what} {name!r} ({DESCRIPTIONS[name]}) is, at the {scale} scale, the run "
                f"{_display(run_dir)}, which has no checkpoint yet. Make it with `stlib inits --scale {scale}` "
                f"(all three inits) or `stlib pretrain {_display(preset_path(name, scale))}`.")
        return _display(run_dir)
    out = paths.REPO_ROOT / "weights" / f"{backbone}-{name}"
    if require and not (out / "stlib_weights.json").is_file():
        pub = PUBLIC.get((backbone, name))
        if pub is None:
            known = ", ".join(f"{b} ({n})" for b, n in PUBLIC)
            raise InitError(
                f"{what} {name!r} ({DESCRIPTIONS[name]}): no public {name} checkpoint is known for backbone "
                f"{backbone!r} (known: {known}). Import one with `stlib import-weights {backbone} FILE {out}` "
                "and pass the folder as model.init")
        file, fetch, cmd = pub
        raise InitError(
            f"{what} {name!r} ({DESCRIPTIONS[name]}) for {backbone} needs {out}, which does not exist. "
            f"Fetch the public file {file}:\n  {fetch}\nthen import it:\n  {cmd.format(out=_display(out))}")
    return _display(out)


def resolve_init(params: cfg.Params, outputs=None, require: bool = True) -> cfg.Params:
    """`params` with a named `model.init` (and Noisy Student's `pretrain.teacher`) replaced by
    its checkpoint folder; other values are returned unchanged."""
    p = params
    if p.model.init in cfg.NAMED_INITS:
        p = dataclasses.replace(p, model=dataclasses.replace(
            p.model, init=resolve_named(p.model.init, p, outputs, require)))
    if p.model.init != "rand":
        p = dataclasses.replace(p, model=dataclasses.replace(p.model, **init_conventions(p.model.init, p)))
    if p.pretrain.teacher in cfg.NAMED_INITS:
        p = dataclasses.replace(p, pretrain=dataclasses.replace(
            p.pretrain, teacher=resolve_named(p.pretrain.teacher, p, outputs, require, what="pretrain.teacher")))
    return p


def init_conventions(init: str, params: cfg.Params) -> dict:
    """The `ModelParams` fields a run must take from the folder it starts from: an imported folder's
    source BatchNorm epsilon (torchvision 1e-5, keras ResNet50 1.001e-5, EfficientNet 1e-3), or a
    run's, when that run took one from its own init. Params that set another value are an error
    naming both (`stlib.models.weight_import.check_conventions`)."""
    folder = existing_path(init)
    if not folder.is_dir():
        return {}
    conv = imported_conventions(folder)
    run_params = folder / "params.yaml"
    if not conv and run_params.is_file():
        eps = cfg.load_params(run_params).model.backbone_bn_epsilon
        conv = {} if eps is None else {"backbone_bn_epsilon": eps}
    if (folder / "stlib_weights.json").is_file():
        check_conventions(folder, params)
    else:
        for key, want in conv.items():
            have = getattr(params.model, key)
            if have is not None and have != want:
                raise InitError(f"model.init {_display(folder)}: its weights need model.{key} = {want}, but the "
                                f"params set model.{key} = {have}; leave it unset, the init sets it")
    return conv


def checkpoint_path(init: str, params: cfg.Params, outputs=None, what: str = "model.init") -> Path:
    """The folder to load for `init` (a name, resolved for `params`, or a path)."""
    if init in cfg.NAMED_INITS:
        init = resolve_named(init, params, outputs, require=True, what=what)
    return existing_path(init)


def check_init_folder(params: cfg.Params, what: str = "model.init") -> Path:
    """The checkpoint folder `model.init` names, checked before any work: it must exist, hold a
    finished run's best checkpoint or an imported checkpoint, and be of this run's backbone.
    Errors are `InitError`s naming the folder and both backbones."""
    folder = checkpoint_path(params.model.init, params, what=what)
    if not folder.is_dir():
        raise InitError(f"{what} {params.model.init!r}: {_display(folder)} is not a folder")
    try:
        identity.checkpoint_digest(folder, require=True)
    except cfg.ParamsError as e:
        raise InitError(f"{what} {params.model.init!r}: {e}") from None
    meta = folder / "stlib_weights.json"
    run_params = folder / "params.yaml"
    if meta.is_file():
        theirs = json.loads(meta.read_text()).get("backbone")
    else:
        theirs = cfg.load_params(run_params).model.backbone if run_params.is_file() else None
    if theirs is not None and theirs != params.model.backbone:
        raise InitError(f"{what} {_display(folder)} holds a {theirs} backbone, but this run's model.backbone is "
                        f"{params.model.backbone}; use a checkpoint of {params.model.backbone} or set "
                        f"model.backbone={theirs}")
    return folder


def existing_path(path: str) -> Path:
    """A checkpoint path as given, else relative to the repository (run folders are recorded
    repo-relative, so they work from any working directory)."""
    return paths.find(path)
