"""Import public ImageNet checkpoints into stlib: read, convert, check, write, load.

  stlib import-weights efficientnet-b7 noisy_student_b7.h5 weights/effb7-ns
  model.init: weights/effb7-ns          # in a detector's or segmenter's params

Sources (nothing is unpickled from untrusted files):
- Keras `.h5` / `.keras` / `.weights.h5` of `keras.applications` EfficientNetB0-B7 and
  ResNet50, or files with the same layer names (published Noisy Student conversions).
  Keras builds the architecture (`weights=None`) and reads the file into it.
- timm / torchvision state dicts: `.safetensors` (read with `safetensors.numpy`), or
  `.pth` / `.pt` / `.bin` read by `torch.load(weights_only=True)` (needs torch).
  timm `tf_efficientnet_b0..b7` (AutoAugment `_aa`, AdvProp `_ap`, Noisy Student `_ns`)
  and torchvision `resnet50` / `resnet101` (the layout SimCLR conversions use).

The result is an orbax checkpoint of `{"params", "batch_stats"}` for the classifier
(`{"backbone": ..., "head": ...}`) with `stlib_weights.json` beside it saying what it
is. Every array is checked against the stlib model built abstractly; a mismatch names
the layer. `load_backbone` gives a detector or segmenter its backbone from such a folder
or from a run's checkpoint folder.

Input conventions: stlib feeds RGB normalized with the ImageNet mean/std. Checkpoints
that expect another input get it folded into the stem conv (and its BatchNorm) at
import: `--input caffe` for keras ResNet50 (BGR, 0-255 minus the mean; the default for
it), `--input unit` for SimCLR (RGB in [0, 1]); a keras EfficientNet file says what it
expects in its own Normalization layer, which is read. Inside the image this is exact;
at the border the stem's zero padding stands for stlib's mean colour instead of the
source's zero.

BatchNorm epsilon: a network's BN statistics are right only with the epsilon it ran with
(torchvision's resnet50 under stlib's default 1e-4 instead of its 1e-5 gives logits up to
16% off). The source's epsilon (`SOURCE_BN_EPSILON`) is recorded as `bn_epsilon` in
`stlib_weights.json`; `init_conventions(folder)` turns it into the `ModelParams` field a
model starting from the folder must take (`backbone_bn_epsilon`), `check_conventions`
refuses params that set another, and `load_classifier` builds the imported classifier
with it.
"""
from __future__ import annotations

import jax

import datetime
import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np

from stlib.config import ModelParams
from stlib.models.registry import BACKBONES, create_model

META_FILE = "stlib_weights.json"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)   # same constants as stlib.augment.flip_crop
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)  # keras.applications.resnet preprocess_input
INPUT_CONVENTIONS = ("imagenet", "caffe", "unit")

# (arch, format) -> converter module name and function
_CONVERTERS = {
    "efficientnet": {"keras": ("efficientnet", "from_keras"), "timm": ("efficientnet", "from_timm")},
    "resnet": {"keras": ("resnet", "from_keras"), "torchvision": ("resnet", "from_torchvision")},
}
_KERAS_APPS = {**{f"efficientnet-b{i}": f"EfficientNetB{i}" for i in range(8)}, "resnet50-keras": "ResNet50"}
# (family, format) -> the BatchNorm epsilon the source's network runs with: torch.nn.BatchNorm2d's
# default (torchvision resnet50/101), keras.applications.ResNet50's explicit 1.001e-5, keras
# BatchNormalization's default (keras EfficientNet), timm's BN_EPS_TF_DEFAULT (tf_efficientnet_*).
# Read off the built models of torch 2.13 / torchvision 0.28 / timm 1.0.31 / keras 3.15.
SOURCE_BN_EPSILON = {("resnet", "torchvision"): 1e-5, ("resnet", "keras"): 1.001e-5,
                     ("efficientnet", "keras"): 1e-3, ("efficientnet", "timm"): 1e-3}


class WeightImportError(ValueError):
    """A checkpoint that cannot become the requested stlib model (the message names the layer or file)."""


def _family(arch: str) -> str:
    if arch.startswith("efficientnet-"):
        return "efficientnet"
    if arch.startswith("resnet"):
        return "resnet"
    raise WeightImportError(f"no importer for backbone {arch!r} (importable: efficientnet-b0..b7/l2, "
                            "resnet50, resnet50-keras, resnet101)")


def source_bn_epsilon(fmt: str, arch: str) -> float:
    """The BatchNorm epsilon of a `fmt` (keras | timm | torchvision) checkpoint of `arch`."""
    key = (_family(arch), fmt)
    if key not in SOURCE_BN_EPSILON:
        raise WeightImportError(f"{arch}: no {fmt} importer (have: "
                                f"{', '.join(f for fam, f in SOURCE_BN_EPSILON if fam == key[0])})")
    return SOURCE_BN_EPSILON[key]


def detect_format(path: Path, arch: str) -> str:
    """keras | timm | torchvision from the file name and the architecture."""
    name = path.name.lower()
    if name.endswith((".h5", ".keras", ".hdf5")):
        return "keras"
    if name.endswith((".safetensors", ".pth", ".pt", ".bin")):
        return "timm" if _family(arch) == "efficientnet" else "torchvision"
    raise WeightImportError(f"{path}: unknown checkpoint type (expected .h5, .keras, .safetensors, .pth, .pt, .bin)")


# ----------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------

def keras_weights(model) -> dict:
    """A built keras model's weights as {"layer/var": array} (keras 3 weight paths)."""
    out = {}
    for w in model.weights:
        key = w.path
        if key in out:
            raise WeightImportError(f"keras model: two weights named {key!r}")
        out[key] = np.asarray(w.numpy())
    return out


def read_legacy_h5(path: Path):
    """{"layer/var": array} from a Keras 2-style HDF5 file (weights or whole model), by layer
    name, so files from other builders with the same names (e.g. Noisy Student
    conversions, with or without the top) import without their exact layer list.
    Returns None when the file is not in that format (Keras 3 `.weights.h5`)."""
    import h5py
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightImportError(f"{path}: not a readable HDF5 file: {e}") from None
    with f:
        g = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in g.attrs:
            return None
        out = {}
        for layer in g.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            lg = g[layer]
            for wname in lg.attrs.get("weight_names", []):
                wname = wname.decode() if isinstance(wname, bytes) else wname
                var = wname.split("/")[-1].removesuffix(":0")    # "<layer>/<var>" whatever the nesting
                out[f"{layer}/{var}"] = np.asarray(lg[wname])
        return out


def read_keras(path: Path, arch: str, num_classes: int | None = None) -> dict:
    """Loads a keras file into `keras.applications.<arch>(weights=None)` (with `num_classes`
    outputs, default 1000) and returns its weights."""
    if arch not in _KERAS_APPS:
        raise WeightImportError(f"{path}: keras files import as {', '.join(_KERAS_APPS)}, not {arch!r}")
    if path.name.lower().endswith((".h5", ".hdf5")) and not path.name.lower().endswith(".weights.h5"):
        legacy = read_legacy_h5(path)
        if legacy is not None:
            return legacy
    import keras
    app = getattr(keras.applications, _KERAS_APPS[arch])
    try:
        if path.name.endswith(".keras"):
            model = keras.models.load_model(path, compile=False)
        else:
            # Full classifier first; files saved without the top fall back to include_top=False.
            try:
                model = app(weights=None, classifier_activation=None, classes=num_classes or 1000)
                model.load_weights(path)
            except ValueError:
                model = app(weights=None, include_top=False)
                model.load_weights(path)
    except Exception as e:  # keras reports layer/shape problems in its own words
        raise WeightImportError(f"{path}: keras could not read it as {_KERAS_APPS[arch]}: {e}") from None
    return keras_weights(model)


def read_state_dict(path: Path) -> dict:
    """A torch state dict from .safetensors (no torch needed) or .pth/.pt/.bin (torch, weights_only)."""
    if path.name.endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:
            return dict(load_file(str(path)))
        except Exception as e:
            raise WeightImportError(f"{path}: not a readable safetensors file: {e}") from None
    try:
        import torch
    except ImportError:
        raise WeightImportError(f"{path}: reading .pth needs torch (pip install torch==2.13.0), or convert the file "
                                "to .safetensors") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:
        raise WeightImportError(f"{path}: torch.load(weights_only=True) refused it: {e}") from None
    for k in ("state_dict", "model", "model_state_dict"):   # common wrappers of checkpoints
        if isinstance(obj, dict) and k in obj and isinstance(obj[k], dict):
            obj = obj[k]
    if not isinstance(obj, dict):
        raise WeightImportError(f"{path}: expected a state dict, found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        k = k[len("module."):] if k.startswith("module.") else k   # DataParallel prefix
        if hasattr(v, "detach"):
            out[k] = v.detach().float().numpy() if v.is_floating_point() else v.detach().numpy()
    return out


def convert(weights: dict, fmt: str, arch: str) -> dict:
    """Source weights -> stlib classifier variables for `arch` (a registry backbone name)."""
    import importlib
    fam = _family(arch)
    if fmt not in _CONVERTERS[fam]:
        raise WeightImportError(f"{arch}: no {fmt} importer (have: {', '.join(_CONVERTERS[fam])})")
    mod, fn = _CONVERTERS[fam][fmt]
    convert_fn = getattr(importlib.import_module(f"stlib.models.weight_import.{mod}"), fn)
    variant = arch.split("-", 1)[1] if fam == "efficientnet" else arch
    kw = {}
    if fam == "efficientnet":   # files saved without the top (include_top=False) have no classifier FC
        kw["with_predictions"] = any(k.split("/")[0] == "predictions" or k.startswith("classifier.") for k in weights)
    try:
        return convert_fn(weights, variant, **kw)
    except (KeyError, ValueError) as e:
        raise WeightImportError(str(e).strip('"')) from None


# ----------------------------------------------------------------------------
# Input conventions
# ----------------------------------------------------------------------------

def convention_affine(convention: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(perm, a, b) with x_src[c] = a[c] * x[perm[c]] + b[c], x being stlib's normalized RGB."""
    if convention == "imagenet":
        return np.arange(3), np.ones(3, np.float32), np.zeros(3, np.float32)
    if convention == "unit":          # RGB in [0, 1]
        return np.arange(3), IMAGENET_STD, IMAGENET_MEAN
    if convention == "caffe":         # BGR in 0-255 minus the caffe mean
        perm = np.array([2, 1, 0])
        return perm, 255.0 * IMAGENET_STD[perm], 255.0 * IMAGENET_MEAN[perm] - CAFFE_MEAN_BGR
    raise WeightImportError(f"input convention {convention!r} (known: {', '.join(INPUT_CONVENTIONS)})")


def normalization_affine(mean, std) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(perm, a, b) for a source that takes RGB as (pixels / 255 - mean) / std."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return np.arange(3), IMAGENET_STD / std, (IMAGENET_MEAN - mean) / std


def keras_efficientnet_convention(weights: dict) -> tuple[str, tuple]:
    """What input a keras EfficientNet file's own Normalization layer expects.

    Keras' ImageNet files store the ImageNet std where the variance belongs and build an
    extra Rescaling(1/sqrt(std)) to undo it (tensorflow/tensorflow#49930), so both that
    and a true variance mean stlib's normalization; an un-adapted layer (mean 0, variance
    1, a model built with weights=None) means pixels / 255.
    Returns (name, (perm, a, b)).
    """
    mean = next((np.asarray(v, np.float64).reshape(-1) for k, v in weights.items()
                 if k.split("/")[0].startswith("normalization") and k.endswith("mean")), None)
    var = next((np.asarray(v, np.float64).reshape(-1) for k, v in weights.items()
                if k.split("/")[0].startswith("normalization") and k.endswith("variance")), None)
    if mean is None or var is None:
        return "imagenet", convention_affine("imagenet")     # files without the layer (notop, Keras 2)
    if np.allclose(mean, IMAGENET_MEAN, atol=1e-3) and (np.allclose(var, IMAGENET_STD, atol=1e-3)
                                                         or np.allclose(var, IMAGENET_STD ** 2, atol=1e-4)):
        return "imagenet", convention_affine("imagenet")
    if np.allclose(mean, 0.0) and np.allclose(var, 1.0):
        return "unit", convention_affine("unit")
    std = np.sqrt(np.maximum(var, 0.0)) + 1e-7
    return f"mean {np.round(mean, 4).tolist()} std {np.round(std, 4).tolist()}", normalization_affine(mean, std)


def fold_input_convention(variables: dict, convention, stem=("backbone", "stem_conv"),
                          stem_bn=("backbone", "stem_bn")) -> dict:
    """Rewrites the stem so it takes stlib's input where the checkpoint expected `convention`
    (a name of INPUT_CONVENTIONS, or a (perm, a, b) triple, see `convention_affine`).

    The stem conv's kernel absorbs a and perm; the constant it adds, sum(W * b), is
    subtracted from the following BatchNorm's moving mean (or added to the conv bias when
    it has one).
    """
    perm, a, b = convention_affine(convention) if isinstance(convention, str) else convention
    if np.array_equal(perm, np.arange(3)) and np.allclose(a, 1.0) and np.allclose(b, 0.0):
        return variables
    import copy
    v = copy.deepcopy(variables)
    node = v["params"]
    for k in stem:
        node = node[k]
    w = node["kernel"]                      # [kh, kw, 3, out], input channels in the source's order
    new_w = np.empty_like(w)
    for c in range(3):                      # source channel c reads stlib channel perm[c]
        new_w[:, :, perm[c], :] = w[:, :, c, :] * a[c]
    shift = np.einsum("hwco,c->o", w, b).astype(w.dtype)    # the constant sum(W * b) per output channel
    node["kernel"] = new_w
    if "bias" in node:
        node["bias"] = node["bias"] + shift
    else:
        stats = v["batch_stats"]
        for k in stem_bn:
            stats = stats[k]
        stats["mean"] = stats["mean"] - shift
    return v


# ----------------------------------------------------------------------------
# Checking against the stlib model
# ----------------------------------------------------------------------------

def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (k,))
    else:
        yield prefix, tree


def abstract_classifier_variables(arch: str, num_classes: int = 1000, bn_epsilon: float | None = None) -> dict:
    """Shapes of the stlib classifier for `arch` (its backbone BN with `bn_epsilon` when
    given), built with `jax.eval_shape` (nothing allocated)."""
    import jax
    import jax.numpy as jnp
    model = create_model(ModelParams(backbone=arch, head="classification", backbone_bn_epsilon=bn_epsilon),
                         num_classes)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))


def check_variables(variables: dict, expected: dict, what: str, require=("backbone",)) -> None:
    """Same tree and shapes as `expected` for the top-level parts in `require`; arrays of
    other parts (the classifier head, absent from "notop" files) may be missing, but what is
    there must have its place and shape."""
    errors = []
    for col in ("params", "batch_stats"):
        have = dict(_flatten(variables.get(col, {})))
        want = dict(_flatten(expected.get(col, {})))
        for path, leaf in want.items():
            if path[0] not in require and path not in have:
                continue
            if path not in have:
                errors.append(f"missing {col}/{'/'.join(path)} {tuple(leaf.shape)}")
            elif tuple(np.shape(have[path])) != tuple(leaf.shape):
                errors.append(f"{col}/{'/'.join(path)}: checkpoint has shape {tuple(np.shape(have[path]))}, "
                              f"the model needs {tuple(leaf.shape)}")
        for path in have:
            if path not in want:
                errors.append(f"unexpected {col}/{'/'.join(path)}")
    if errors:
        more = f" (and {len(errors) - 8} more)" if len(errors) > 8 else ""
        raise WeightImportError(f"{what}: " + "; ".join(errors[:8]) + more)


# ----------------------------------------------------------------------------
# Writing and loading
# ----------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_weights(variables: dict, out_dir, meta: dict) -> Path:
    """Writes an orbax checkpoint plus `stlib_weights.json`, atomically (temp folder, then rename)."""
    import orbax.checkpoint as ocp
    out = Path(out_dir).expanduser().absolute()
    if out.exists():
        raise WeightImportError(f"{out} exists; choose a new folder (nothing was overwritten)")
    tmp = out.with_name(out.name + ".tmp-import")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        ckpt = ocp.StandardCheckpointer()
        tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
        ckpt.save(tmp / "variables", tree)
        ckpt.wait_until_finished()
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def import_weights(arch: str, source, out_dir, *, fmt: str | None = None, input_convention: str | None = None,
                   num_classes: int | None = None) -> dict:
    """Reads `source`, converts it to stlib's `arch`, checks every array, writes `out_dir`.

    Returns the metadata written beside the checkpoint.
    """
    source = Path(source).expanduser()
    if arch not in BACKBONES:
        raise WeightImportError(f"unknown backbone {arch!r} (known: {', '.join(BACKBONES)})")
    if not source.is_file():
        raise WeightImportError(f"{source}: no such file")
    fmt = fmt or detect_format(source, arch)
    if fmt == "keras":
        weights = read_keras(source, arch, num_classes)
    elif fmt in ("timm", "torchvision"):
        weights = read_state_dict(source)
    else:
        raise WeightImportError(f"--from {fmt!r}: expected keras, timm or torchvision")
    variables = convert(weights, fmt, arch)
    bn_epsilon = source_bn_epsilon(fmt, arch)
    if input_convention is not None:
        affine = convention_affine(input_convention)
    elif fmt == "keras" and arch == "resnet50-keras":
        input_convention, affine = "caffe", convention_affine("caffe")
    elif fmt == "keras":
        input_convention, affine = keras_efficientnet_convention(weights)
    else:
        input_convention, affine = "imagenet", convention_affine("imagenet")
    variables = fold_input_convention(variables, affine)
    head = variables["params"].get("head", {}).get("predictions")   # the FC-1000 (absent in notop files)
    classes = num_classes or (int(np.shape(head["kernel"])[1]) if head else 1000)
    check_variables(variables, abstract_classifier_variables(arch, classes, bn_epsilon), f"{source} as {arch}")
    n_params = int(sum(np.size(x) for _, x in _flatten(variables["params"])))
    meta = dict(backbone=arch, source=str(source.absolute()), source_sha256=_sha256(source), format=fmt,
                input_convention=input_convention, bn_epsilon=bn_epsilon, num_classes=classes if head else None,
                has_head=bool(head), num_params=n_params,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    write_weights(variables, out_dir, meta)
    return meta


def init_conventions(folder) -> dict:
    """The `ModelParams` fields a model whose `model.init` is `folder` must take from it.

    For an `stlib import-weights` folder: {"backbone_bn_epsilon": its source's epsilon}
    (folders written before it was recorded: the epsilon of their format and backbone).
    {} for anything else (a run's folder: its model was built from params like ours).
    """
    path = Path(folder).expanduser()
    if not (path / META_FILE).is_file():
        return {}
    meta = json.loads((path / META_FILE).read_text())
    eps = meta.get("bn_epsilon")
    if eps is None and meta.get("format") and meta.get("backbone"):
        try:
            eps = source_bn_epsilon(meta["format"], meta["backbone"])
        except WeightImportError:
            eps = None
    return {} if eps is None else {"backbone_bn_epsilon": float(eps)}


def check_conventions(folder, params) -> None:
    """Raises `WeightImportError` when `params` (a `Params` or its `ModelParams`) explicitly
    sets a field of `init_conventions(folder)` to another value, naming both."""
    mp = getattr(params, "model", params)
    for key, want in init_conventions(folder).items():
        have = getattr(mp, key)
        if have is not None and not math.isclose(have, want, rel_tol=1e-9, abs_tol=0.0):
            raise WeightImportError(
                f"model.init {folder}: its weights need model.{key} = {want} (their source's), but the params "
                f"set model.{key} = {have}; leave it unset, the init sets it")


def load_classifier(folder) -> tuple:
    """(model, variables): the classifier an `stlib import-weights` folder holds, built with its
    source's conventions (`init_conventions`), so `model.apply(variables, x, train=False)` gives
    the source's logits for stlib's input (RGB normalized with the ImageNet mean/std)."""
    path = Path(folder).expanduser()
    if not (path / META_FILE).is_file():
        raise WeightImportError(f"{path}: not an `stlib import-weights` folder (no {META_FILE})")
    variables, meta = read_checkpoint(path)
    if not meta.get("has_head"):
        raise WeightImportError(f"{path}: imported without the classifier head (a notop file); no logits to give")
    mp = ModelParams(backbone=meta["backbone"], head="classification", **init_conventions(path))
    return create_model(mp, int(meta["num_classes"])), variables


def _restore_tree(directory: Path) -> dict:
    """The saved tree as host numpy arrays, whatever device topology saved it (a checkpoint
    made on a 2-device CPU mesh loads on one GPU, and the other way round)."""
    import numpy as np
    import orbax.checkpoint as ocp
    ckptr = ocp.PyTreeCheckpointer()
    # A run's item folder (checkpoints/best/<step>/default) has its step's _CHECKPOINT_METADATA one
    # level up; orbax logs that it is missing on every read, into every executed notebook.
    absl = logging.getLogger("absl")
    quiet = _DropMessages("Metadata file does not exist")
    absl.addFilter(quiet)
    try:
        meta = ckptr.metadata(directory)
        tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
        tree = getattr(tree, "tree", tree)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return ckptr.restore(directory, restore_args=restore_args)
    finally:
        absl.removeFilter(quiet)


class _DropMessages(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def read_checkpoint(path) -> tuple[dict, dict]:
    """(variables, meta) from an import-weights folder or a run's checkpoint folder.

    A run folder (`outputs/runs/<id>`), its `checkpoints/` or `checkpoints/best|latest`
    resolve to the newest best (else latest) step; meta is then {"backbone": <from params.yaml>}.
    """
    path = Path(path).expanduser().absolute()
    if (path / META_FILE).is_file():
        meta = json.loads((path / META_FILE).read_text())
        return _restore_tree(path / "variables"), meta
    run_dir = None
    for cand in (path, path.parent, path.parent.parent):
        if (cand / "params.yaml").is_file():
            run_dir = cand
            break
    ckpt_root = path
    if (path / "checkpoints").is_dir():
        ckpt_root = path / "checkpoints"
    for sub in ("best", "latest"):
        if (ckpt_root / sub).is_dir():
            steps = sorted(int(p.name) for p in (ckpt_root / sub).iterdir() if p.name.isdigit())
            if steps:
                ckpt_root = ckpt_root / sub
                break
    steps = sorted(int(p.name) for p in ckpt_root.iterdir() if p.name.isdigit()) if ckpt_root.is_dir() else []
    if not steps:
        if run_dir is not None:   # a recorded run whose checkpoints are not here (git keeps none)
            raise WeightImportError(
                f"{path}: this run has no saved checkpoint here (checkpoints are not committed); re-create it "
                f"with `stlib {'pretrain' if 'pretrain' in run_dir.name else 'train'} {run_dir / 'params.yaml'}`")
        raise WeightImportError(f"{path}: neither an `stlib import-weights` folder ({META_FILE}) nor a run "
                                "checkpoint folder with saved steps")
    step_dir = ckpt_root / str(steps[-1])
    item = step_dir / "default" if (step_dir / "default").is_dir() else step_dir
    tree = _restore_tree(item)
    meta = {"step": steps[-1]}
    if run_dir is not None:
        import yaml
        meta["backbone"] = (yaml.safe_load((run_dir / "params.yaml").read_text()).get("model") or {}).get("backbone")
    return {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}, meta


def load_backbone(path, backbone: str) -> tuple[dict, dict, dict]:
    """(backbone params, backbone batch_stats, meta) from `path`, for a model whose
    `model.backbone` is `backbone`; a different backbone is an error naming both."""
    variables, meta = read_checkpoint(path)
    have = meta.get("backbone")
    if have is not None and have != backbone:
        raise WeightImportError(f"model.init {path}: holds backbone {have}, the model's is {backbone}")
    if "backbone" not in variables["params"]:
        raise WeightImportError(f"model.init {path}: the checkpoint has no 'backbone' weights "
                                f"(top level: {', '.join(variables['params'])})")
    return variables["params"]["backbone"], variables.get("batch_stats", {}).get("backbone", {}), meta


def init_backbone(params: dict, batch_stats: dict, path, backbone: str) -> tuple[dict, dict, dict]:
    """Returns `params`/`batch_stats` of a freshly initialised model with the backbone
    replaced by the checkpoint's (heads and necks keep their fresh values). Every backbone
    array must match in name and shape; a mismatch names the layer."""
    import jax
    import jax.numpy as jnp
    bp, bs, meta = load_backbone(path, backbone)
    expected = {"params": {"backbone": params["backbone"]},
                "batch_stats": {"backbone": batch_stats.get("backbone", {})} if "backbone" in batch_stats else {}}
    got = {"params": {"backbone": bp}, "batch_stats": {"backbone": bs} if bs else {}}
    check_variables(got, expected, f"model.init {path}")

    def cast(new, old):
        return jax.device_put(jnp.asarray(new, old.dtype), old.sharding) if hasattr(old, "sharding") else new
    params = dict(params, backbone=jax.tree.map(cast, bp, params["backbone"]))
    if bs:
        batch_stats = dict(batch_stats, backbone=jax.tree.map(cast, bs, batch_stats["backbone"]))
    return params, batch_stats, meta
