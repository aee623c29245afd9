"""Pricing a study's missing runs from the CPU time finished runs measured (stlib.experiments.cost)."""
import dataclasses
import json
import subprocess
import sys

import pytest

from stlib import config as cfg
from stlib.data.coco import DataError
from stlib.experiments import cost
from stlib.experiments import study as st
from tests.conftest import REPO

SMOKE = "params/smoke/retinanet.yaml"
HERE = {"cpu": "Test CPU", "cores": 2, "simd": "avx2", "platform": "cpu", "device_kind": "cpu", "devices": 2,
        "date": "2026-12-05"}


def _p(*extra):
    """The params of the spec's Short cell, with changes."""
    return cfg.load_params(SMOKE, ["train.eval_every=5", "train.steps=10", "train.seed=0", *extra])


def _finished(run_dir, params, steps, cpu_seconds, machine=HERE):
    """A finished run whose CPU time came in two sessions (plus one killed before it logged)."""
    run_dir.mkdir(parents=True)
    (run_dir / "params.yaml").write_text(cfg.dump_params(params))
    sessions = [{"kind": "session", "step": steps // 2, "steps": steps // 2, "seconds": 9.0,
                 "cpu_seconds": cpu_seconds / 2},
                {"kind": "session", "step": steps, "steps": steps - steps // 2, "seconds": 9.0,
                 "cpu_seconds": cpu_seconds / 2}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in sessions))
    (run_dir / "metrics.json").write_text(json.dumps({
        "status": "complete", "AP": 0.1, "last_step": steps, "cpu_seconds": cpu_seconds, "machine": machine}))


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: priced\nbase: params/smoke/retinanet.yaml\noverrides: [train.eval_every=5]\n"
                    "cells:\n  Short: [train.steps=10]\n  Long: [train.steps=40]\n"
                    "  S4: [train.steps=10, augment.policy=s4]\nseeds: [0]\n")
    return st.load_study(path)


def test_missing_runs_are_priced_by_cpu_time_per_step_of_runs_of_the_same_step_cost(spec, tmp_path, monkeypatch):
    out = tmp_path / "out"
    base = st.cell_params(spec, "Short", 0, out, resolve=False)
    assert cfg.dump_params(base) == cfg.dump_params(_p())
    # measured: two runs of the same step cost (another seed, another length, another learning rate)
    _finished(out / "runs" / "a", _p("train.seed=7", "train.steps=20"), 20, 2.0)     # 0.1 s/step
    _finished(out / "runs" / "b", _p("train.base_lr=0.5"), 10, 3.0)                 # 0.3 s/step
    # not counted: another machine, another image size, no CPU time recorded
    _finished(out / "runs" / "c", base, 10, 100.0, machine={**HERE, "cpu": "Other CPU"})
    _finished(out / "runs" / "d", _p("data.image_size=32"), 10, 100.0)
    (out / "runs" / "e").mkdir()
    (out / "runs" / "e" / "metrics.json").write_text(json.dumps({"status": "complete", "last_step": 10}))
    (out / "runs" / "e" / "params.yaml").write_text(cfg.dump_params(base))
    (out / "runs" / "e" / "metrics.jsonl").write_text(json.dumps({"kind": "session", "step": 10, "steps": 10,
                                                                   "seconds": 1.0}) + "\n")

    est = cost.estimate(spec, out, here=HERE)
    rows = {r["cell"]: r for r in est["rows"]}
    assert rows["Short"]["cpu_s_per_step"] == pytest.approx(0.2) and rows["Short"]["measured_runs"] == 2
    assert rows["Short"]["cpu_seconds"] == pytest.approx(2.0)          # 10 steps x the median 0.2 s
    assert rows["Long"]["cpu_seconds"] == pytest.approx(8.0)           # 40 steps: steps do not change the key
    assert rows["S4"]["cpu_s_per_step"] is None and "cpu_seconds" not in rows["S4"]
    assert est["cpu_seconds"] == pytest.approx(10.0) and est["unpriced"] == 1
    text = cost.estimate_markdown(spec, est)
    assert "| Short | 0 |" in text and "| 10 | 1.2 | 0.200 (2) |" in text and "not measured" in text   # 10 x 4 / 32 epochs
    assert "3 run(s) to make, 2 priced: 0.00 CPU hours" in text and "1 not priced" in text

    # a run published as a record is in both places and counts once
    import shutil
    shutil.copytree(out / "runs" / "a", out / "records" / "runs" / "a")
    monkeypatch.setattr(cost.paths, "records_root", lambda: out / "records")
    assert cost.estimate(spec, out, here=HERE)["rows"][0]["measured_runs"] == 2
    # a finished run is done, not priced; and on another machine nothing is priced
    _finished(st.cell_run_dir(spec, "Short", 0, out), base, 10, 1.0)
    est = cost.estimate(spec, out, here=HERE)
    assert [r["complete"] for r in est["rows"]] == [True, False, False]
    assert est["cpu_seconds"] == pytest.approx(4.0)   # it measured too: median of 0.1, 0.3, 0.1 s/step
    assert cost.estimate(spec, out, here={**HERE, "cores": 16})["unpriced"] == 2


def test_the_cost_key_ignores_what_does_not_change_a_steps_cost():
    p = cfg.load_params(SMOKE)
    same = ["train.seed=3", "train.steps=99", "train.base_lr=0.01", "data.label_fraction=0.2", "model.init=rand"]
    other = ["data.image_size=32", "train.batch_size=16", "augment.policy=s4", "train.eval_every=4"]
    assert all(cost.cost_key(cfg.load_params(SMOKE, [o])) == cost.cost_key(p) for o in same)
    assert all(cost.cost_key(cfg.load_params(SMOKE, [o])) != cost.cost_key(p) for o in other)


def test_study_plan_runs_nothing_and_prints_the_table(spec, tmp_path):
    r = subprocess.run([sys.executable, "-m", "stlib.cli", "study", str(spec.path), "--plan",
                        "--outputs", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Plan of priced" in r.stdout and "3 run(s) to make, 0 priced" in r.stdout
    assert not (tmp_path / "out" / "runs").exists()


def test_labeled_epochs_count_the_human_share_of_each_batch_over_the_labeled_images():
    # the smoke world has 32 training scenes (stlib.data.world); batch 4 in the smoke preset
    p = _p("train.steps=40", "train.batch_size=4")
    assert cost.labeled_epochs(p) == pytest.approx(40 * 4 / 32)
    # 25% of 32 = 8 labeled scenes; a student's batch of 8 is 4 human + 4 pseudo
    p20 = _p("train.steps=40", "train.batch_size=8", "data.label_fraction=0.25", "self_train.teacher=x",
             "self_train.unlabeled=world:scenes")
    assert cost.labeled_epochs(p20) == pytest.approx(40 * 4 / 8)
    # a segmenter counts its split of the world read as VOC: 14% of 32 = 4 precise train scenes,
    # the 28 others aug (a student of batch 8 again takes 4 human images a step)
    seg = cfg.load_params(REPO / "params/smoke/segmentation.yaml", ["train.steps=40"])
    assert cost.labeled_epochs(seg) == pytest.approx(40 * 4 / 4)
    assert cost.labeled_epochs(dataclasses.replace(seg, data=dataclasses.replace(seg.data, train_split="train_aug"))
                               ) == pytest.approx(40 * 4 / 32)
    assert cost.labeled_epochs(cfg.load_params(REPO / "params/smoke/segmentation.yaml", [
        "train.steps=40", "train.batch_size=8", "self_train.teacher=x", "self_train.unlabeled=world:aug"])
        ) == pytest.approx(40 * 4 / 4)
    with pytest.raises(DataError, match="'val'"):
        cost.labeled_epochs(dataclasses.replace(seg, data=dataclasses.replace(seg.data, train_split="val")))
    # Sec. 3.2's yardstick, on the paper's COCO: no count without reading the data
    assert cost.labeled_epochs(_p("data.source=coco", "data.train_ann=a.json", "data.train_images=i",
                                  "data.val_ann=b.json", "data.val_images=j")) is None


def test_the_plan_shows_labeled_epochs(spec, tmp_path):
    text = cost.estimate_markdown(spec, cost.estimate(spec, tmp_path / "out", here=HERE))
    n = cfg.load_params(SMOKE).train.batch_size
    assert f"| Long | 0 | `{st.plan(spec, tmp_path / 'out')[1]['run_id']}` | to make | 40 | {40 * n / 32:.1f} |" in text
    assert "97 / 260 passes over COCO's 118k" in text
