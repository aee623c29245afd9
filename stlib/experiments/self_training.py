"""The self-training story of a study: teacher vs student AP beside the pseudo labels' quality.

A self-training study (`params/mini/self_train.yaml`, `params/mini/study_self_train.yaml`)
is an ordinary study whose student cells name their teacher cell (`self_train.teacher=@Teacher`)
and compare with it (`compare: {baseline: Teacher}`). `self_training_rows` adds, for every
student run, where its pseudo labels came from and how good they are against the world's
hidden ground truth at the training threshold (`stlib.pseudo.quality`); `write_self_training_report`
writes that table next to the study's report.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from stlib import config as cfg
from stlib import paths
from stlib.experiments import runs
from stlib.experiments.assemble import SEGMENTATION_HEAD, pseudo_mask_store
from stlib.experiments.records import is_record
from stlib.experiments.study import cell_params
from stlib.io import write_json_atomic, write_text_atomic
from stlib.pseudo import quality
from stlib.pseudo.label import default_store_dir, make_pseudo_labels
from stlib.pseudo.sources import parse_unlabeled
from stlib.pseudo.store import PseudoLabelStore
from stlib.pseudo.teacher import TeacherRun


def pseudo_quality(store_root, threshold: float, world_scale: str, world_seed: int) -> dict:
    """`stlib.pseudo.quality.quality_report` of a store at the training `threshold` (and the
    standard thresholds), cached inside the store as `quality-<threshold>.json`."""
    root = Path(store_root)
    cache = root / f"quality-{threshold:g}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    if is_record(root):   # records are never written: measure on this machine's twin of the store, if any
        twin = paths.cache_root() / "pseudo_labels" / root.name
        return pseudo_quality(twin, threshold, world_scale, world_seed) if twin.is_dir() else {}
    store = PseudoLabelStore.open(root)
    source = parse_unlabeled(store.meta["source"], world_scale, world_seed)
    thresholds = sorted(set(quality.DEFAULT_THRESHOLDS) | {float(threshold)})
    report = quality.quality_report(store.load(), source.hidden_gt, source.hidden_labels, store.categories,
                                    thresholds=thresholds, threshold=threshold)
    write_json_atomic(cache, report)
    return report


def _at(rows: list, threshold: float) -> dict:
    return next((r for r in rows if abs(r["threshold"] - threshold) < 1e-9), {})


def self_training_rows(study, rows: list[dict]) -> list[dict]:
    """Per run: its AP, its teacher's AP (same seed), the difference, and for students how they
    differ from Sec. 3.2's recipe (`recipe_deviations`), the pseudo-label store, boxes per image
    and precision / recall at the training threshold."""
    base = (study.compare or {}).get("baseline")
    teacher_ap = {r["seed"]: r.get(study.metric) for r in rows if r["cell"] == base}
    recipe = recipe_deviations(study)
    out = []
    for r in rows:
        m = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        row = {"cell": r["cell"], "seed": r["seed"], "run_id": r["run_id"], study.metric: r.get(study.metric)}
        if r["cell"] != base and r["seed"] in teacher_ap and r.get(study.metric) is not None:
            row["diff"] = r[study.metric] - teacher_ap[r["seed"]]
        if r["cell"] in recipe:
            row["recipe_deviations"] = recipe[r["cell"]]
        pl = m.get("pseudo_labels")
        if pl:
            store = paths.find(pl["store"])
            p = cfg.load_params(Path(r["run_dir"]) / "params.yaml")
            threshold = p.self_train.score_threshold   # the params hold it; metrics.json only repeats it
            q = pseudo_quality(store, threshold, p.data.world_scale, p.data.world_seed) if store.is_dir() else {}
            row.update({"unlabeled": pl["source"], "store": pl["store"], "threshold": threshold,
                        "labels": ("hidden truth" if p.self_train.oracle else
                                   f"{p.self_train.targets} >= {threshold:g}"
                                   + (f", [{p.self_train.ignore_threshold:g}, {threshold:g}) ignored"
                                      if p.self_train.ignore_threshold > 0 else ""))})
            counts = _at(q.get("counts", []), threshold)
            row["pseudo_per_image"] = counts.get("pseudo_per_image")
            at = _at(q.get("quality", []), threshold)
            if at and p.self_train.oracle:
                row.update({"pseudo_per_image": at.get("true_per_image"), "pseudo_precision": 1.0,
                            "pseudo_recall": 1.0, "true_per_image": at.get("true_per_image")})
            elif at:
                row.update({"pseudo_precision": at["precision"], "pseudo_recall": at["recall"],
                            "true_per_image": at.get("true_per_image")})
            if q.get("ap") and not p.self_train.oracle:
                row["pseudo_AP"] = q["ap"].get("AP")
            if q.get("object_pool"):
                op = q["object_pool"]
                row["objects_with_box"] = op.get("in_vocab_with_box_share")
                row["objects_top_correct"] = op.get("in_vocab_top_correct_share")
                row["objects_false_alarm"] = op.get("oov_false_alarm_share")
        out.append(row)
    return out


# Train params that are bookkeeping, not the recipe (when to log, evaluate, save; the seed).
_BOOKKEEPING = {"seed", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "eval_batch_size",
                "tensorboard"}
# Sec. 3.2's student settings, read from the params' defaults (stlib/config.py cites each).
_PAPER_STUDENT = ("score_threshold", "loss_norm", "student_init")


def _teacher_cell(study, label: str) -> str | None:
    for o in study.cells[label]:
        key, _, value = o.partition("=")
        if key.strip() == "self_train.teacher" and value.strip().startswith("@"):
            return value.strip()[1:]
    return None


def recipe_deviations(study) -> dict[str, list[str]]:
    """Per cell whose teacher is another cell (`self_train.teacher=@Teacher`): how it is trained
    otherwise than Sec. 3.2's student, which keeps its teacher's hyper-parameters (same steps,
    learning-rate schedule, early stopping, augmentation, image size) with twice its batch (half
    human, half pseudo: `batch_size = teacher's x (1 + self_train.pseudo_ratio)`), a hard score
    threshold of 0.5, the normalized loss, and starts from its teacher. [] = the paper's recipe."""
    default = cfg.SelfTrainParams()
    seed = study.seeds[0]
    out = {}
    for label in study.cells:
        teacher = _teacher_cell(study, label)
        if teacher is None:
            continue
        s, t = (cell_params(study, c, seed, resolve=False) for c in (label, teacher))
        dev = []
        streams = 1 + (s.self_train.pseudo_ratio if s.self_train.unlabeled else 0.0)
        batch = round(t.train.batch_size * streams)
        if s.train.batch_size != batch:
            dev.append(f"train.batch_size {s.train.batch_size} (teacher {t.train.batch_size} x {streams:g} = {batch})")
        for section in ("train", "augment"):
            a, b = cfg.to_dict(getattr(s, section)), cfg.to_dict(getattr(t, section))
            for k in sorted(a):
                if k not in _BOOKKEEPING and k != "batch_size" and a[k] != b.get(k):
                    dev.append(f"{section}.{k} {a[k]} (teacher {b.get(k)})")
        if s.data.image_size != t.data.image_size:
            dev.append(f"data.image_size {s.data.image_size} (teacher {t.data.image_size})")
        for k in _PAPER_STUDENT:
            if getattr(s.self_train, k) != getattr(default, k):
                dev.append(f"self_train.{k} {getattr(s.self_train, k)} (Sec. 3.2: {getattr(default, k)})")
        out[label] = dev
    return out


def recipe_markdown(study) -> str:
    """One line per student: follows Sec. 3.2's recipe, or how it differs (`recipe_deviations`)."""
    dev = recipe_deviations(study)
    if not dev:
        return ""
    lines = ["Students against Sec. 3.2's recipe (the teacher's hyper-parameters, twice its batch, "
             "threshold 0.5, normalized loss, initialized from the teacher):", ""]
    for label, d in dev.items():
        lines.append(f"- {label}: " + ("the paper's recipe" if not d else "differs: " + "; ".join(d)))
    return "\n".join(lines) + "\n"


def _f(v, fmt="{:.4f}"):
    return "" if v is None else fmt.format(v)


def self_training_markdown(study, rows: list[dict]) -> str:
    srows = self_training_rows(study, rows)
    lines = [f"Self-training runs of {study.name} ({study.metric}; pseudo-label precision / recall against the "
             "hidden ground truth of the pool at the student's threshold, IoU 0.5):", "",
             f"| cell | seed | {study.metric} | vs teacher | unlabeled | labels | pseudo boxes / image | true boxes / image "
             "| precision | recall | objects: in-vocabulary boxed / right class / out-of-vocabulary false alarm |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in srows:
        lines.append(f"| {r['cell']} | {r['seed']} | {_f(r.get(study.metric))} | {_f(r.get('diff'), '{:+.4f}')} | "
                     f"{r.get('unlabeled', '')} | {r.get('labels', '')} | {_f(r.get('pseudo_per_image'), '{:.3f}')} | "
                     f"{_f(r.get('true_per_image'), '{:.2f}')} | {_f(r.get('pseudo_precision'), '{:.3f}')} | "
                     f"{_f(r.get('pseudo_recall'), '{:.3f}')} | "
                     + (" / ".join(_f(r.get(k), '{:.3f}') for k in ("objects_with_box", "objects_top_correct",
                                                                   "objects_false_alarm"))
                        if "objects_with_box" in r else "") + " |")
    recipe = recipe_markdown(study)
    return "\n".join(lines) + "\n" + ("\n" + recipe if recipe else "")


def write_self_training_report(study, rows: list[dict], out_dir) -> Path:
    """outputs/studies/<name>/self_training.{md,json} beside the study's report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "self_training.md", self_training_markdown(study, rows))
    write_json_atomic(out_dir / "self_training.json", self_training_rows(study, rows))
    return out_dir


def student_stores(rows: list[dict]) -> list[dict]:
    """Every student's pseudo-label store in `rows`, once each: {"store" (its folder), "threshold"
    (the student's training threshold), "data" (the teacher's data params: the world or VOC folder
    the images come from), "teacher" (run folder), "st" (the student's `self_train`), "masks" (a
    segmentation student's store of pseudo masks)}. The store is the one the student's params
    address in the run cache, beside its teacher (which `rows` holds, made on this machine); a
    student read from a record shares it when its run id matched, so the explorer never writes
    into a record."""
    here = {Path(r["run_dir"]).name: Path(r["run_dir"]) for r in rows if not is_record(r["run_dir"])}
    seen, out = set(), []
    for r in rows:
        p = cfg.load_params(Path(r["run_dir"]) / "params.yaml")
        st = p.self_train
        if not (st.teacher and st.unlabeled):
            continue
        teacher_dir = here.get(Path(st.teacher).name) or paths.find(st.teacher)
        if is_record(teacher_dir):
            continue   # no checkpoint to label with
        st = dataclasses.replace(st, teacher=str(teacher_dir))
        masks = p.model.head == SEGMENTATION_HEAD
        if masks:
            store, _, teacher, _ = pseudo_mask_store(st, make=False)
        else:
            teacher = TeacherRun(teacher_dir)
            store = default_store_dir(teacher, st.unlabeled, st.store_min_score, st.nms, st.max_images)
        if store in seen:
            continue
        seen.add(store)
        out.append({"store": store, "threshold": float(st.score_threshold), "data": teacher.params.data,
                    "teacher": teacher_dir, "st": st, "masks": masks})
    return out


def explore_stores(rows: list[dict], num_images: int = 8) -> list[Path]:
    """Executes the pseudo-label explorer for every student's store, into `<store>/explorer/`:
    notebooks/pseudo_labels.ipynb for boxes (gallery, quality and worst-case PNGs), and
    notebooks/pseudo_masks.ipynb for a segmentation student's pseudo masks (gallery, the ignore
    threshold's trade-off, per-class IoU); quality.json and the executed notebook with them. A
    store that is missing or incomplete (a fresh clone, a student read from a record) is labelled
    first by its teacher."""
    done = []
    for s in student_stores(rows):
        store, st, dp = s["store"], s["st"], s["data"]
        complete = (store / "store.json").is_file() and PseudoLabelStore.open(store).complete
        params = {"STORE_DIR": paths.relative(store), "THRESHOLD": s["threshold"], "WORLD_SCALE": dp.world_scale,
                  "WORLD_SEED": dp.world_seed}
        if s["masks"]:
            if not complete:
                pseudo_mask_store(st)
            notebook, params = "pseudo_masks.ipynb", {**params, "NUM_IMAGES": min(num_images, 6),
                                                       "VOC_ROOT": dp.voc_root}
        else:
            if not complete:
                make_pseudo_labels(s["teacher"], st.unlabeled, min_score=st.store_min_score, nms=st.nms,
                                   max_images=st.max_images, store_dir=store)
            notebook, params = "pseudo_labels.ipynb", {**params, "NUM_IMAGES": num_images}
        out = store / "explorer"
        out.mkdir(parents=True, exist_ok=True)
        runs.execute(notebook, out / notebook, {**params, "OUT_DIR": paths.relative(out)})
        done.append(out)
    return done
