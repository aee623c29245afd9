"""Run identity: what a result depends on, hashed into its run id.

A run id is `<params name>-<hash>` of

- the resolved params, with every path to a checkpoint folder (`model.init`,
  `pretrain.teacher`, `self_train.teacher`) left out: the folders' *content* stands in for them;
- the content of the data the run reads (`stlib.data.identity.data_digest`: annotation files,
  image lists, dataset info);
- the identity of every checkpoint it starts from: a run's best checkpoint digest
  (`checkpoint_digest` in its metrics.json, a hash of its arrays), or an imported folder's
  source file hash;
- for a self-training student, the unlabeled source's image list.

So a teacher made again on another CPU, whose floats differ, is a new teacher: its pseudo
labels and students get new ids and are made when asked, never refused and never reused
stale. Nothing here compares floats: digests are of bytes and names. On one machine, runs are
deterministic, so the same chain gives the same ids again (tested).

`identity.json` in a run folder holds the parts, so a reader can see why two ids differ.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from stlib import config as cfg
from stlib import paths
from stlib.data.identity import PENDING, data_digest, file_digest, folder_digest
from stlib.data.segmentation import segmentation_source_identity, segmentation_unlabeled
from stlib.data.world import ensure_world
from stlib.io import write_json_atomic
from stlib.pseudo.sources import parse_unlabeled
from stlib.train.checkpoints import read_best_digest



def checkpoint_digest(folder, require: bool = False) -> str:
    """The identity of the checkpoint folder a run starts from.

    A run folder: its best checkpoint's digest (from metrics.json, else `checkpoints/best/digest.json`);
    an imported folder (`stlib import-weights`): its source file's sha256 and conventions. A folder that
    does not exist (yet), or an unfinished run, is `pending:<path>` unless `require`."""
    folder = paths.find(folder)
    m = folder / "metrics.json"
    if m.is_file():
        metrics = json.loads(m.read_text())
        if metrics.get("status") == "complete" and metrics.get("checkpoint_digest"):
            return metrics["checkpoint_digest"]
    d = read_best_digest(folder)
    if d:
        return d
    w = folder / "stlib_weights.json"
    if w.is_file():
        meta = json.loads(w.read_text())
        keep = {k: meta.get(k) for k in ("backbone", "source_sha256", "format", "input_convention", "bn_epsilon")}
        return "weights:" + hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
    if require:
        raise cfg.ParamsError(f"{paths.relative(folder)}: not a finished run with a best checkpoint nor an "
                              "imported weights folder, so nothing can start from it")
    return PENDING + paths.relative(folder)


def _strip_paths(p: cfg.Params) -> cfg.Params:
    """`p` without the checkpoint folder paths (their content is hashed instead)."""
    model = p.model if p.model.init == "rand" else dataclasses.replace(p.model, init="<checkpoint>")
    pre = p.pretrain if not p.pretrain.teacher else dataclasses.replace(p.pretrain, teacher="<checkpoint>")
    st = p.self_train if not p.self_train.teacher else dataclasses.replace(p.self_train, teacher="<checkpoint>")
    return dataclasses.replace(p, model=model, pretrain=pre, self_train=st)


def unlabeled_digest(p: cfg.Params) -> str:
    """The identity of a student's unlabeled images (`self_train.unlabeled` of the teacher's world;
    a segmentation student's through `stlib.data.segmentation.segmentation_unlabeled`)."""
    st, d = p.self_train, p.data
    if p.model.head == "segmentation":
        return segmentation_source_identity(segmentation_unlabeled(st.unlabeled, d))
    return parse_unlabeled(st.unlabeled, d.world_scale, d.world_seed, d.tfds_data_dir).identity()


def run_identity(p: cfg.Params) -> dict:
    """The parts a run id hashes (see the module docstring). `p` has its named inits resolved."""
    ident = {"params": cfg.params_hash(_strip_paths(p)), "data": data_digest(p.data)}
    if p.model.init != "rand":
        ident["init"] = checkpoint_digest(p.model.init)
    if p.pretrain.teacher:
        ident["pretrain_teacher"] = checkpoint_digest(p.pretrain.teacher)
    if p.self_train.teacher:
        ident["teacher"] = checkpoint_digest(p.self_train.teacher)
        if p.self_train.unlabeled:   # read only once the teacher exists (a plan needs no data)
            ident["unlabeled"] = (PENDING + p.self_train.unlabeled if ident["teacher"].startswith(PENDING)
                                  else unlabeled_digest(p))
    pretraining = p.model.head == "classification"
    joint_folder = p.self_train.joint and p.self_train.joint_source.startswith("folder:")
    if joint_folder:   # joint training's class folders (their listing; a plan lists them before they exist)
        folder = Path(p.self_train.joint_source[len("folder:"):]).expanduser()
        ident["classification"] = folder_digest(folder)[:16] if folder.is_dir() else PENDING + str(folder)
    if p.data.source == "world" and (pretraining or (p.self_train.joint and not joint_folder)):
        # the world's classification set (pre-training, joint training) and, for Noisy Student and
        # SimCLR, its unlabeled object pool
        root = ensure_world(p.data.world_scale, p.data.world_seed)
        ident["classification"] = hashlib.sha256("".join(
            file_digest(f) for f in sorted((root / "classification").glob("*.json"))).encode()).hexdigest()[:16]
        if pretraining and p.pretrain.method in ("noisy_student", "simclr"):
            ident["pool"] = folder_digest(root / "pools" / "objects" / "images")[:16]
    return ident


def is_provisional(ident: dict) -> bool:
    """Whether some checkpoint the run starts from does not exist yet."""
    return any(isinstance(v, str) and v.startswith(PENDING) for v in ident.values())


def run_id(p: cfg.Params) -> str:
    """`<name>-<hash of run_identity>`: the run's folder name in the cache and in the records."""
    ident = run_identity(p)
    return f"{p.name}-{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]}"


def write_identity(run_dir, p: cfg.Params) -> None:
    write_json_atomic(Path(run_dir) / "identity.json", run_identity(p))
