"""What a study's runs cost, from what finished runs measured on this machine.

Every training session writes the CPU time its process used and the steps it trained
(`cpu_seconds`, `steps` of the session entries of metrics.jsonl, `stlib.train.loop`): all threads,
evaluations, checkpoints and the step's compilation included (so short runs price long ones a
little high). Unlike wall time, runs sharing the machine (`stlib study --jobs 2`) do not inflate it much, so it adds up over
a study: the sum of its runs' CPU hours, divided by the cores they keep busy, is its wall time on
that machine. A planned run is priced by the CPU seconds per step of finished runs whose step costs
the same (`cost_key`: model, image size, batch, augmentation, evaluation, streams) on a machine
like this one (CPU model, cores, vector set, devices). Not priced: pseudo labelling before a
student (the teacher's inference over the pool), and any run with no such measurement (said so).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from stlib import config as cfg
from stlib import paths
from stlib.data.mixture import split_batch
from stlib.data.segmentation import world_split_size
from stlib.data.world import label_subset, world_spec
from stlib.experiments import runs
from stlib.experiments.study import cell_params, plan
from stlib.io import lock_holder, machine

_MACHINE = ("cpu", "cores", "simd", "platform", "device_kind", "devices")


def machine_key(m: dict) -> tuple:
    """What of a machine description (`stlib.io.machine`) sets a step's cost; not the date."""
    return tuple(m.get(k) for k in _MACHINE)


def cost_key(p: cfg.Params) -> str:
    """The params that set the cost of a training step and its evaluations (not the labels' share,
    seed, learning rate or init): a canonical JSON string."""
    d = cfg.to_dict(p)
    st = d["self_train"]
    key = {"model": {k: v for k, v in d["model"].items() if k not in ("init", "name")},
           "data": {k: d["data"][k] for k in ("source", "world_scale", "image_size", "max_boxes", "max_val_images")},
           "augment": d["augment"], "postprocess": d["postprocess"],
           "train": {k: d["train"][k] for k in ("batch_size", "eval_every", "eval_batch_size", "optimizer")},
           "streams": {"pseudo": st["pseudo_ratio"] if st["teacher"] and st["unlabeled"] else 0,
                       "joint": st["joint_ratio"] if st["joint"] else 0},
           "pretrain": ({k: d["pretrain"][k] for k in ("method", "image_size")}
                        if d["model"]["head"] == "classification" else None)}
    return json.dumps(key, sort_keys=True)


def labeled_epochs(p: cfg.Params) -> float | None:
    """Passes over the labeled training images that a detection or segmentation run's steps make: steps x the
    human examples of each batch (the batch less its pseudo-labelled or classification share) /
    the labeled images. The yardstick across scales: Sec. 3.2's 45k / 120k steps of 256 are
    97 / 260 passes over COCO's 118k. None where the count needs the data read (other sources
    than the world, classification runs)."""
    if p.model.head == "classification" or p.data.source != "world":
        return None
    st = p.self_train
    shares = {"human": 1.0}
    if st.teacher and st.unlabeled:
        shares["pseudo"] = st.pseudo_ratio
    if st.joint:
        shares["classification"] = st.joint_ratio
    human = split_batch(p.train.batch_size, shares)["human"]
    n = world_spec(p.data.world_scale, p.data.world_seed).num_train
    if p.model.head == "segmentation":     # the world read as VOC: its train / aug / train_aug split
        labeled = world_split_size(n, p.data.train_split)
    else:
        labeled = len(label_subset(range(n), p.data.label_fraction, p.data.label_seed))   # as sources.py selects them
    return p.train.steps * human / labeled


def _run_dirs(outputs=None):
    """Finished-looking run folders of the cache, then of the records; a run id once (a published
    run is in both)."""
    seen = set()
    for root in (Path(outputs or runs.default_outputs()) / "runs", paths.records_root() / "runs"):
        if root.is_dir():
            for d in sorted(d for d in root.iterdir() if (d / "metrics.json").is_file() and d.name not in seen):
                seen.add(d.name)
                yield d


def measured(outputs=None) -> dict:
    """{(machine_key, cost_key): [CPU seconds per step, ...]} of every finished run in the cache and
    the records that recorded its CPU time (runs from before `cpu_seconds` was written are not)."""
    out: dict = {}
    for d in _run_dirs(outputs):
        try:
            m = json.loads((d / "metrics.json").read_text())
            if m.get("status") != "complete" or not m.get("cpu_seconds"):
                continue
            # per session (a session killed before it logged is in neither sum)
            sessions = [e for e in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                        if e.get("kind") == "session" and e.get("cpu_seconds") and e.get("steps")]
            p = cfg.load_params(d / "params.yaml")
        except (OSError, ValueError, yaml.YAMLError, cfg.ParamsError):
            continue   # a half-written or foreign folder prices nothing
        if sessions:
            per_step = sum(e["cpu_seconds"] for e in sessions) / sum(e["steps"] for e in sessions)
            out.setdefault((machine_key(m.get("machine", {})), cost_key(p)), []).append(per_step)
    return out


def estimate(study, outputs=None, here: dict | None = None) -> dict:
    """The study's plan (`stlib.experiments.study.plan`) with each run's steps and, for the ones
    still to make, CPU seconds from the median CPU seconds per step measured on this machine
    (`here`: a `stlib.io.machine()` dict; default this machine). Returns {"rows", "cpu_seconds"
    (sum over the priced runs to make), "unpriced" (runs to make with no measurement), "cores"}."""
    here = here if here is not None else machine()
    mk = machine_key(here)
    rates = measured(outputs)
    rows, total, unpriced = [], 0.0, 0
    for r in plan(study, outputs):
        p = cell_params(study, r["cell"], r["seed"], outputs, resolve=False)
        per_step = rates.get((mk, cost_key(p)))
        row = {**r, "steps": p.train.steps, "epochs": labeled_epochs(p),
               "cpu_s_per_step": statistics.median(per_step) if per_step else None,
               "measured_runs": len(per_step or [])}
        if not r["complete"]:
            if per_step:
                row["cpu_seconds"] = row["cpu_s_per_step"] * p.train.steps
                total += row["cpu_seconds"]
            else:
                unpriced += 1
        rows.append(row)
    return {"rows": rows, "cpu_seconds": total, "unpriced": unpriced, "cores": here.get("cores")}


def estimate_markdown(study, est: dict) -> str:
    """The plan as a table and its total: CPU hours, and hours on this machine's cores."""
    lines = [f"Plan of {study.name}: CPU seconds per step from finished runs of the same step cost on this "
             "machine (median; pseudo labelling not priced):", "",
             "| cell | seed | run | status | steps | labeled epochs | CPU s/step (runs) | CPU hours to make |",
             "|---|---|---|---|---|---|---|---|"]
    for r in est["rows"]:
        status = ("done" + (" (record)" if r["from"] == "record" else "") if r["complete"]
                  else "running" if lock_holder(r["run_dir"]) else "to make")
        rate = f"{r['cpu_s_per_step']:.3f} ({r['measured_runs']})" if r["cpu_s_per_step"] is not None else "not measured"
        hours = f"{r['cpu_seconds'] / 3600:.2f}" if "cpu_seconds" in r else ""
        epochs = f"{r['epochs']:.1f}" if r.get("epochs") is not None else ""
        lines.append(f"| {r['cell']} | {r['seed']} | `{r['run_id']}` | {status} | {r['steps']} | {epochs} | {rate} | {hours} |")
    todo = sum(not r["complete"] for r in est["rows"])
    hours = est["cpu_seconds"] / 3600
    cores = est["cores"] or 1
    priced = todo - est["unpriced"]
    lines += ["", "Labeled epochs: passes over the labeled images (the human share of each batch); Sec. 3.2's "
              "45k / 120k steps of 256 are 97 / 260 passes over COCO's 118k (Augment-S1 / S4).",
              "", f"{todo} run(s) to make, {priced} priced: {hours:.2f} CPU hours, about {hours / cores:.2f} hours on "
              f"this machine's {cores} cores" + (f"; {est['unpriced']} not priced (no finished run of the same step "
                                                 "cost here recorded its CPU time)" if est["unpriced"] else "") + "."]
    return "\n".join(lines) + "\n"
