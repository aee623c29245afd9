"""`stlib zoo`: parameters and multiply-adds of every registered model, next to the published figures.

Everything is abstract: `jax.eval_shape` gives the variables' shapes, `jax.make_jaxpr`
the forward pass, and XLA's cost analysis of the lowered (not compiled) program gives
its FLOP estimate. Nothing is allocated, so EfficientNet-L2 at 800 px counts on a laptop.

Conventions, as the papers count:
- params: trainable parameters (BatchNorm scale/offset included, moving statistics not).
- MAdds: multiply-adds of convolutions and dense layers, batch 1 (the "FLOPs" of the
  EfficientNet, SpineNet and self-training tables are multiply-adds, REFERENCE §6.6).
  `xla_gflops` is XLA's estimate of all floating-point operations (a multiply-add is 2,
  elementwise work counts too), for reference.
- Detectors have 91 class columns, as the TPU counts (COCO ids 1-90 and an unused
  background column, REFERENCE §4.2); stlib trains with the dataset's own classes.
- The NAS-FPN segmenters' published sizes count the EfficientNet classifier head (1x1
  conv + FC-1000) that the TPU builds but never uses (REFERENCE §7.4); so does this table
  for those rows, and says so.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from stlib.config import ModelParams
from stlib.models import depthwise, registry
from stlib.models.registry import create_model


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    name: str
    task: str                              # classification | detection | segmentation
    params: ModelParams                    # what builds it (through the registry)
    num_classes: int
    input_size: int                        # where the published figures hold
    published_params_m: Optional[float] = None
    published_madds_b: Optional[float] = None
    source: str = ""                       # where the published figures come from
    unused_classifier_head: bool = False   # count the EfficientNet head the TPU builds but does not use
    note: str = ""


def _mp(**kw) -> ModelParams:
    return ModelParams(**kw)


_EFF_PUBLISHED = {  # EfficientNet paper (Tan & Le 2019) Table 2; L2: Noisy Student (Xie et al. 2020)
    "b0": (5.3, 0.39), "b1": (7.8, 0.70), "b2": (9.2, 1.0), "b3": (12, 1.8), "b4": (19, 4.2),
    "b5": (30, 9.9), "b6": (43, 19), "b7": (66, 37), "l2": (480, None)}
_EFF_RES = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600, "l2": 800}
_TPU_ZOO = "TPU models/official/detection/MODEL_ZOO.md"
_SPINENET = {  # REFERENCE §6.6 (TPU MODEL_ZOO.md); head settings §4.1/§4.3
    "49s": (640, 4, 128, 11.9, 33.8), "49": (640, 4, 256, 28.5, 85.4), "96": (1024, 4, 256, 43.0, 265.4),
    "143": (1280, 4, 256, 67.0, 524.0), "190": (1280, 7, 512, 163.6, 1885.0)}


def entries() -> list[ZooEntry]:
    """Every model the zoo reports: paper-scale classifiers, detectors, segmenters, and our small ones."""
    out = []
    for v, res in _EFF_RES.items():
        p, f = _EFF_PUBLISHED[v]
        out.append(ZooEntry(f"efficientnet-{v}", "classification", _mp(backbone=f"efficientnet-{v}",
                            head="classification"), 1000, res, p, f,
                            "EfficientNet paper Table 2" if v != "l2" else "Noisy Student paper (params)"))
    out += [
        ZooEntry("resnet50", "classification", _mp(backbone="resnet50", head="classification"), 1000, 224,
                 25.6, 4.1, _TPU_ZOO),
        ZooEntry("resnet50-keras", "classification", _mp(backbone="resnet50-keras", head="classification"), 1000,
                 224, 25.6, 3.8, "He et al. 2016 Table 1 (3.8e9 FLOPs); keras.applications (25.6M)"),
        ZooEntry("resnet101", "classification", _mp(backbone="resnet101", head="classification"), 1000, 224,
                 44.6, 7.8, _TPU_ZOO),
    ]
    for v, (res, convs, ch, p, f) in _SPINENET.items():
        out.append(ZooEntry(
            f"retinanet-spinenet-{v}", "detection",
            _mp(backbone=f"spinenet-{v}", neck="identity", head_convs=convs, head_channels=ch, activation="swish"),
            91, res, p, f, _TPU_ZOO,
            note="49S: REFERENCE says the published counts are not reproduced from the spec" if v == "49s" else ""))
    out += [
        ZooEntry("retinanet-resnet50-fpn", "detection", _mp(backbone="resnet50"), 91, 640, 34.0, 97.0, _TPU_ZOO),
        ZooEntry("retinanet-resnet101-fpn", "detection", _mp(backbone="resnet101"), 91, 1024, 53.1, 326.3, _TPU_ZOO),
        ZooEntry("retinanet-efficientnet-b7-fpn", "detection", _mp(backbone="efficientnet-b7"), 91, 640,
                 note="Sec. 3.2 detector; no published count"),
        ZooEntry("retinanet-resnet50-nasfpn", "detection", _mp(backbone="resnet50", neck="nasfpn", nasfpn_repeats=7),
                 91, 640, 60.3, 140.6, _TPU_ZOO,
                 note="the published size needs 7 cells (the TPU yaml says 5: 51.8M)"),
    ]
    for v, p, f in (("b7", 71, 60), ("l2", 485, 229)):
        out.append(ZooEntry(
            f"segmenter-efficientnet-{v}-nasfpn", "segmentation",
            _mp(backbone=f"efficientnet-{v}", neck="nasfpn", head="segmentation", nasfpn_repeats=7,
                separable_conv=True, head_convs=3, head_channels=256, bn_epsilon=1e-3),
            21, 512, p, f, "REFERENCE §7.4 (TPU projects/self_training/README.md)", unused_classifier_head=True,
            note="counts the unused EfficientNet classifier head, as the published figure does"))
    out += [
        ZooEntry("mini-retinanet", "detection", _mp(backbone="resnet-mini", fpn_channels=64, head_convs=2,
                                                    head_channels=64), 6, 128, note="params/mini/retinanet.yaml"),
        ZooEntry("efficientnet-tiny", "classification", _mp(backbone="efficientnet-tiny", head="classification"),
                 10, 64, note="our test variant"),
        ZooEntry("retinanet-spinenet-tiny", "detection", _mp(backbone="spinenet-tiny", neck="identity",
                                                             head_convs=1, head_channels=32, fpn_channels=32),
                 6, 128, note="our test variant"),
    ]
    return out


# ----------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------

def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for item in (v if isinstance(v, (list, tuple)) else (v,)):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def count_madds(jaxpr) -> int:
    """Multiply-adds of every convolution and dot product in a jaxpr (sub-jaxprs included;
    a scan's body counts `length` times)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
            out = eqn.outvars[0].aval.shape
            dn = eqn.params["dimension_numbers"]
            rhs_spec = dn.rhs_spec                       # (out feature, in feature, *spatial)
            k_spatial = math.prod(rhs[i] for i in rhs_spec[2:])
            total += math.prod(out) * k_spatial * rhs[rhs_spec[1]]
        elif name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lc)
        else:
            reps = eqn.params.get("length", 1) if name == "scan" else 1
            for sub in _sub_jaxprs(eqn):
                total += reps * count_madds(sub)
    return total


def _param_count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _classifier_head_extra(entry: ZooEntry, size: int) -> tuple[int, int]:
    """(params, MAdds) of the EfficientNet classifier head alone, on its backbone's C5."""
    mp = dataclasses.replace(entry.params, head="classification", neck="fpn")
    head = registry.classification_head(mp, 1000)(name="head")
    c5 = registry.create_backbone(mp)()
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    feats = jax.eval_shape(lambda: c5.init_with_output(jax.random.PRNGKey(0), jnp.zeros(x.shape), train=False)[0])
    top = {5: jax.ShapeDtypeStruct(feats[5].shape, jnp.float32)}
    variables = jax.eval_shape(lambda: head.init(jax.random.PRNGKey(0), {5: jnp.zeros(top[5].shape)}, train=False))
    jaxpr = jax.make_jaxpr(lambda v, f: head.apply(v, f, train=False))(variables, top)
    return _param_count(variables["params"]), count_madds(jaxpr.jaxpr)


def measure(entry: ZooEntry, size: Optional[int] = None) -> dict:
    """Params, MAdds and XLA FLOPs of `entry` at `size` (default: its published input size)."""
    size = size or entry.input_size
    model = create_model(entry.params, entry.num_classes)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), train=False))
    apply = functools.partial(model.apply, train=False)
    with depthwise.forced("conv"):   # count depthwise layers as the grouped convolutions they are
        jaxpr = jax.make_jaxpr(apply)(variables, x)
        cost = jax.jit(apply).lower(variables, x).cost_analysis()
    n_params, madds = _param_count(variables["params"]), count_madds(jaxpr.jaxpr)
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    if entry.unused_classifier_head:
        hp, hm = _classifier_head_extra(entry, size)
        n_params, madds = n_params + hp, madds + hm
    row = dict(name=entry.name, task=entry.task, input=size, params_m=n_params / 1e6, madds_b=madds / 1e9,
               xla_gflops=xla_flops / 1e9, published_params_m=entry.published_params_m,
               published_madds_b=entry.published_madds_b if size == entry.input_size else None,
               source=entry.source, note=entry.note)
    row["params_ratio"] = row["params_m"] / entry.published_params_m if entry.published_params_m else None
    row["madds_ratio"] = row["madds_b"] / row["published_madds_b"] if row["published_madds_b"] else None
    return row


def zoo_table(names=None, size: Optional[int] = None, progress: bool = False) -> list[dict]:
    """Rows for the entries named (all when None)."""
    chosen = [e for e in entries() if names is None or e.name in names]
    if names is not None:
        unknown = set(names) - {e.name for e in chosen}
        if unknown:
            raise ValueError(f"unknown zoo entries {sorted(unknown)} (known: {', '.join(e.name for e in entries())})")
    if progress:
        from tqdm.auto import tqdm
        chosen = tqdm(chosen, desc="zoo", unit="model")
    return [measure(e, size) for e in chosen]


def format_table(rows: list[dict]) -> str:
    """A markdown table of `zoo_table` rows."""
    def num(v, fmt):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "—"
        return format(v, ".3g" if fmt == ".2f" and abs(v) < 1 else fmt)   # small models keep 3 digits
    lines = ["| model | task | input | params (M) | published | ratio | MAdds (B) | published | ratio | XLA GFLOPs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['task']} | {r['input']} | {num(r['params_m'], '.2f')} | "
                     f"{num(r['published_params_m'], 'g')} | {num(r['params_ratio'], '.3f')} | "
                     f"{num(r['madds_b'], '.2f')} | {num(r['published_madds_b'], 'g')} | "
                     f"{num(r['madds_ratio'], '.3f')} | {num(r['xla_gflops'], '.1f')} |")
    notes = [f"- {r['name']}: {r['note']}" for r in rows if r["note"]]
    sources = sorted({r["source"] for r in rows if r["source"]})
    return "\n".join(lines + ([""] + notes if notes else []) + ([""] + [f"- published: {s}" for s in sources]
                                                                    if sources else []))
