"""Records apart from the run cache, and identities that cover data and checkpoints.

The scenario of issue 14: records made on one machine, the main job re-run on a CPU whose floats
differ. Here the "other machine" is real float difference: the records are made in a process
with two CPU devices (BatchNorm and gradients reduced across them in another order), the user's
run in a process with one. The re-made teacher has the same run id (same params and data) but
other weights; its store and student are new results, made, never refused and never reused; the
report shows them next to the record, and no record file changes.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stlib import config as cfg
from stlib.experiments import identity, records
from stlib.experiments import study as st

REPO = Path(__file__).resolve().parents[2]

SPEC = """
name: test-records
description: teacher -> student (smoke)
notebook: train.ipynb
base: params/smoke/retinanet.yaml
cells:
  Teacher: []
  Student:
    - self_train.teacher=@Teacher
    - self_train.unlabeled=world:scenes
    - self_train.score_threshold=0.01
    - self_train.store_min_score=0.01
    - self_train.max_images=16
    - train.batch_size=8
seeds: [0]
compare:
  baseline: Teacher
"""


def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "stlib.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_main_job_on_another_machine_makes_new_results_beside_unchanged_records(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    recs, theirs, mine, again = (tmp_path / n for n in ("records", "their-cache", "my-cache", "again"))
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    base["STLIB_RECORDS"] = str(recs)

    # 1. "their machine": two CPU devices; the study is published as the records
    env = {**base, "STLIB_OUTPUTS": str(theirs), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    r = _cli(["self-train", str(spec), "--direct", "--quiet"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli(["publish", str(theirs / "studies" / "test-records")], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (recs / "studies" / "test-records" / "results.json").is_file()
    recorded_runs = sorted(p.name for p in (recs / "runs").iterdir())
    assert len(recorded_runs) == 2
    assert not list(recs.rglob("checkpoints")) and not list(recs.rglob("shards"))
    before = _tree_digest(recs)

    # 2. "my machine": one device; same params and data, other floats
    env = {**base, "STLIB_OUTPUTS": str(mine), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    r = _cli(["self-train", str(spec), "--direct", "--quiet"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "record" in r.stdout and "this machine" in r.stdout, r.stdout[-3000:]
    assert _tree_digest(recs) == before, "a user's run rewrote a record"

    rec = json.loads((recs / "studies" / "test-records" / "results.json").read_text())
    mine_rows = json.loads((mine / "studies" / "test-records" / "results.json").read_text())["runs"]
    rec_ids = {r["cell"]: r["run_id"] for r in rec["runs"]}
    my_ids = {r["cell"]: r["run_id"] for r in mine_rows}
    # the teacher: same identity of params and data, so the same id ...
    assert my_ids["Teacher"] == rec_ids["Teacher"]
    t_rec = json.loads((recs / "runs" / rec_ids["Teacher"] / "metrics.json").read_text())
    t_mine = json.loads((mine / "runs" / my_ids["Teacher"] / "metrics.json").read_text())
    # ... but other weights (the precondition of this test: the two processes' floats differ)
    assert t_rec["checkpoint_digest"] != t_mine["checkpoint_digest"]
    assert t_rec["machine"]["devices"] == 2 and t_mine["machine"]["devices"] == 1
    # so the student is a new result, trained here, not the record's
    assert my_ids["Student"] != rec_ids["Student"]
    assert all(not records.is_record(r["run_dir"]) for r in mine_rows)
    s_mine = json.loads((mine / "runs" / my_ids["Student"] / "metrics.json").read_text())
    assert s_mine["pseudo_labels"]["teacher_digest"] == t_mine["checkpoint_digest"]
    comparison = (mine / "studies" / "test-records" / "record_comparison.md").read_text()
    assert rec_ids["Student"] in json.dumps(rec) and "| Student | 0 |" in comparison

    # 3. the same machine again (a fresh cache): the teacher comes out bit for bit the same
    env = {**base, "STLIB_OUTPUTS": str(again), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    r = _cli(["train", "params/smoke/retinanet.yaml", "--direct", "--quiet"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    t_again = json.loads((again / "runs" / my_ids["Teacher"] / "metrics.json").read_text())
    assert t_again["checkpoint_digest"] == t_mine["checkpoint_digest"]


def test_run_id_covers_the_annotation_file_and_the_image_list(tmp_path, repo):
    from stlib.data.world import ensure_world
    world = ensure_world("smoke", 0, progress=False) / "detection"
    data = tmp_path / "coco"
    shutil.copytree(world, data)
    over = [f"data.source=coco", f"data.train_ann={data}/annotations/train.json", f"data.train_images={data}/train/images",
            f"data.val_ann={data}/annotations/val.json", f"data.val_images={data}/val/images"]
    p = cfg.load_params(repo / "params/smoke/retinanet.yaml", over)
    first = identity.run_id(p)
    assert identity.run_id(p) == first
    # the annotation file shrinks to 5 images: another run
    ann = json.loads((data / "annotations/train.json").read_text())
    keep = {im["id"] for im in ann["images"][:5]}
    small = {**ann, "images": ann["images"][:5], "annotations": [a for a in ann["annotations"] if a["image_id"] in keep]}
    (data / "annotations/train.json").write_text(json.dumps(small))
    second = identity.run_id(cfg.load_params(repo / "params/smoke/retinanet.yaml", over))
    assert second != first
    # an image renamed in the folder: another run
    img = next((data / "val/images").iterdir())
    img.rename(img.with_name("renamed-" + img.name))
    from stlib.data import identity as did
    did._LIST_MEMO.clear()
    assert identity.run_id(cfg.load_params(repo / "params/smoke/retinanet.yaml", over)) not in (first, second)


def test_run_id_covers_the_init_checkpoint_not_its_path(tmp_path, repo):
    init = tmp_path / "a" / "run"
    init.mkdir(parents=True)
    (init / "metrics.json").write_text(json.dumps({"status": "complete", "checkpoint_digest": "d1"}))
    moved = tmp_path / "b" / "run"
    shutil.copytree(init, moved)
    p1 = cfg.load_params(repo / "params/smoke/retinanet.yaml", [f"model.init={init}"])
    p2 = cfg.load_params(repo / "params/smoke/retinanet.yaml", [f"model.init={moved}"])
    assert identity.run_id(p1) == identity.run_id(p2)          # the same weights somewhere else
    (moved / "metrics.json").write_text(json.dumps({"status": "complete", "checkpoint_digest": "d2"}))
    assert identity.run_id(p1) != identity.run_id(p2)          # other weights
    empty = tmp_path / "empty"
    empty.mkdir()
    p3 = cfg.load_params(repo / "params/smoke/retinanet.yaml", [f"model.init={empty}"])
    assert identity.is_provisional(identity.run_identity(p3))


def test_publish_copies_small_files_and_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("STLIB_RECORDS", str(tmp_path / "records"))
    monkeypatch.setenv("STLIB_OUTPUTS", str(tmp_path / "cache"))
    run = tmp_path / "cache" / "runs" / "smoke-x-1"
    (run / "checkpoints" / "best").mkdir(parents=True)
    (run / "checkpoints" / "best" / "blob").write_bytes(b"x" * 100)
    (run / "params.yaml").write_text("name: smoke-x\n")
    (run / "metrics.json").write_text(json.dumps({"status": "complete", "AP": 0.1}))
    (run / "run.log").write_text("log")
    written = records.publish(run)
    assert sorted(p.name for p in written) == ["metrics.json", "params.yaml"]
    with pytest.raises(records.RecordError, match="--replace"):
        records.publish(run)
    assert records.publish(run, replace=True)
    assert records.record_run("smoke-x-1") == tmp_path / "records" / "runs" / "smoke-x-1"
    unfinished = tmp_path / "cache" / "runs" / "smoke-y-2"
    unfinished.mkdir(parents=True)
    (unfinished / "params.yaml").write_text("name: smoke-y\n")
    with pytest.raises(records.RecordError, match="not a finished run"):
        records.publish(unfinished)
    store = tmp_path / "cache" / "pseudo_labels" / "smoke-x-1-abc"
    (store / "shards").mkdir(parents=True)
    (store / "shards" / "00000.npz").write_bytes(b"x")
    (store / "explorer").mkdir()
    for f in ("store.json", "explorer/quality.json", "explorer/gallery.png", "explorer/pseudo_masks.ipynb"):
        (store / f).write_text("{}")
    written = records.publish(store)
    assert sorted(str(p.relative_to(tmp_path / "records")) for p in written) == [
        "pseudo_labels/smoke-x-1-abc/explorer/gallery.png", "pseudo_labels/smoke-x-1-abc/explorer/quality.json",
        "pseudo_labels/smoke-x-1-abc/store.json"]
    with pytest.raises(records.RecordError, match="--replace"):
        records.publish(store)


def test_study_reads_a_run_from_a_record_with_the_same_id_but_makes_teachers_here(tmp_path, monkeypatch):
    monkeypatch.setenv("STLIB_RECORDS", str(tmp_path / "records"))
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.replace("name: test-records", "name: test-plan").replace(
        "  Student:\n", "  Other: [train.base_lr=0.02]\n  Student:\n"))
    study = st.load_study(spec)
    cache = tmp_path / "cache"
    rows = {r["cell"]: r for r in st.plan(study, cache)}
    # the student's teacher does not exist yet: its id is provisional and it is not complete
    assert not rows["Student"]["complete"]
    for cell in ("Teacher", "Other"):   # both recorded under their ids
        rec = tmp_path / "records" / "runs" / rows[cell]["run_id"]
        rec.mkdir(parents=True)
        (rec / "metrics.json").write_text(json.dumps({"status": "complete", "AP": 0.5}))
    rows = {r["cell"]: r for r in st.plan(study, cache)}
    assert rows["Other"]["complete"] and rows["Other"]["from"] == "record"
    assert not rows["Teacher"]["complete"]     # a teacher is needed for its checkpoint: made here
