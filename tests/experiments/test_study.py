"""Studies and convergence: specs, the run cache, mean / spread / CI, steps to a fraction, speed-up."""
import json
import math
import sys

import numpy as np
import pytest

from stlib import config as cfg
from stlib.devices import GPU_MEMORY_VARS
from stlib.experiments import convergence as conv
from stlib.experiments import study as st


def test_steps_to_level_interpolates_from_zero():
    steps, vals = [100, 200, 300], [0.2, 0.3, 0.4]
    assert conv.steps_to_level(steps, vals, 0.1) == pytest.approx(50.0)
    assert conv.steps_to_level(steps, vals, 0.25) == pytest.approx(150.0)
    assert conv.steps_to_level(steps, vals, 0.5) == math.inf
    assert conv.steps_to_fraction(steps, vals, 0.75) == pytest.approx(200.0)   # 0.3 = 75% of 0.4


def test_speedup_is_baseline_steps_over_other_steps():
    rand = ([150, 300, 450, 600], [0.02, 0.05, 0.08, 0.10])
    pre = ([150, 300, 450, 600], [0.18, 0.25, 0.30, 0.32])
    s = conv.speedup(rand, pre, 0.9)
    assert s["level"] == pytest.approx(0.09)
    assert s["baseline_steps"] == pytest.approx(450 + 150 * 0.5)
    assert s["other_steps"] == pytest.approx(150 * 0.09 / 0.18)
    assert s["speedup"] == pytest.approx(525 / 75)
    assert math.isnan(conv.speedup(pre, rand, 1.0)["speedup"])   # rand never reaches 0.32


SPEC = """
name: test-study
description: two cells
base: params/smoke/retinanet.yaml
overrides: [train.eval_every=2]
cells:
  Rand Init: [model.init=rand]
  Other: [train.base_lr=0.02]
seeds: [0, 1, 2]
convergence: {baseline: Rand Init, fraction: 0.9}
"""


def _write_run(run_dir, curve):
    run_dir.mkdir(parents=True)
    lines = [{"kind": "train", "step": 1, "loss": 1.0}] + [{"kind": "eval", "step": s, "AP": v} for s, v in curve]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    best = max(curve, key=lambda x: x[1])
    (run_dir / "metrics.json").write_text(json.dumps({"status": "complete", "AP": best[1], "best_step": best[0],
                                                      "last_step": curve[-1][0], "train_seconds": 1.0}))


def test_study_reuses_runs_and_reports_mean_spread_and_speedup(tmp_path, monkeypatch):
    spec_path = tmp_path / "study.yaml"
    spec_path.write_text(SPEC)
    study = st.load_study(spec_path)
    plan = st.plan(study, tmp_path)
    assert len(plan) == 6 and not any(r["complete"] for r in plan)
    assert len({r["run_id"] for r in plan}) == 6
    aps = {("Rand Init", 0): 0.10, ("Rand Init", 1): 0.12, ("Rand Init", 2): 0.14,
           ("Other", 0): 0.30, ("Other", 1): 0.33, ("Other", 2): 0.36}
    for r in plan:
        final = aps[(r["cell"], r["seed"])]
        shape = [0.2, 0.5, 0.8, 1.0] if r["cell"] == "Rand Init" else [0.7, 0.9, 1.0, 1.0]
        _write_run(tmp_path / "runs" / r["run_id"], [(2 * (i + 1), final * f) for i, f in enumerate(shape)])
    # every run exists: nothing is executed
    monkeypatch.setattr(st.runs, "execute_notebook", lambda *a, **k: pytest.fail("re-ran a finished run"))
    rows = st.run_study(study, tmp_path, progress=False)
    summary = {s["cell"]: s for s in st.summarize(study, rows)}
    assert summary["Rand Init"]["mean"] == pytest.approx(0.12)
    assert summary["Rand Init"]["std"] == pytest.approx(0.02)
    assert summary["Other"]["ci95"] == pytest.approx(4.302653 * 0.03 / math.sqrt(3), rel=1e-5)
    c = st.convergence_summary(study, rows)
    sp = c["cells"]["Other"]["speedup"]
    assert all(x > 1 for x in sp) and c["cells"]["Rand Init"]["speedup"] == [pytest.approx(1.0)] * 3
    out = st.write_report(study, rows, tmp_path / "studies" / "test-study")
    report = (out / "report.md").read_text()
    assert "| Rand Init | 3 | 0.1200 | 0.0200 |" in report and "x |" in report
    assert (out / "convergence.png").stat().st_size > 10_000
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"][1]["cell"] == "Other"


def test_a_missing_run_is_named_and_a_bad_cell_fails_before_work(tmp_path):
    spec_path = tmp_path / "study.yaml"
    spec_path.write_text(SPEC)
    study = st.load_study(spec_path)
    with pytest.raises(FileNotFoundError, match="seed 0.*not complete"):
        st.results(study, tmp_path)
    assert st.results(study, tmp_path, require=False) == []
    spec_path.write_text(SPEC.replace("train.base_lr=0.02", "train.base_lrr=0.02"))
    with pytest.raises(cfg.ParamsError, match="cell 'Other'.*unknown key 'train.base_lrr'"):
        st.load_study(spec_path)
    spec_path.write_text(SPEC.replace("baseline: Rand Init", "baseline: Nope"))
    with pytest.raises(cfg.ParamsError, match="convergence.baseline must name a cell"):
        st.load_study(spec_path)


def test_the_recorded_mini_study_spec_loads():
    study = st.load_study("params/mini/study_inits.yaml")
    assert set(study.cells) == {"Rand Init", "ImageNet Init"} and study.seeds == (0, 1, 2)
    p = st.cell_params(study, "ImageNet Init", 1, resolve=False)
    assert p.model.init == "imagenet" and p.data.label_fraction == 0.2 and p.train.seed == 1
    assert np.isclose(st.t_interval([1.0, 2.0, 3.0]), 4.302653 * 1.0 / math.sqrt(3), rtol=1e-5)


def test_the_paper_table2_spec_loads_and_addresses_each_cell():
    study = st.load_study("params/paper/study_table2_inits.yaml")
    assert len(study.cells) == 12
    p = st.cell_params(study, "ImageNet++ Init S4", 0, resolve=False)
    assert (p.model.init, p.augment.policy, p.train.steps, p.model.backbone) == ("imagenet++", "s4", 120000,
                                                                                 "efficientnet-b7")
    # without the imported checkpoints, running it says which public file to fetch
    from stlib.experiments.inits import InitError, resolve_init
    with pytest.raises(InitError, match="tf_efficientnet_b7.ns_jft_in1k"):
        resolve_init(p)


def test_cells_refer_to_the_run_of_another_cell_with_the_same_seed(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: refs\nbase: params/smoke/retinanet.yaml\ncells:\n  Teacher: []\n"
                    "  Student: [self_train.teacher=@Teacher]\nseeds: [0, 1]\ncompare: {baseline: Teacher}\n")
    s = st.load_study(spec)
    for seed in (0, 1):
        p = st.cell_params(s, "Student", seed, tmp_path)
        assert p.self_train.teacher == str(st.cell_run_dir(s, "Teacher", seed, tmp_path))
    assert st._depths(s) == {"Teacher": 0, "Student": 1}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: refs\nbase: params/smoke/retinanet.yaml\ncells:\n  Student: [self_train.teacher=@Teacher]\n"
                   "  Teacher: []\n")
    with pytest.raises(cfg.ParamsError, match="before it"):
        st.load_study(bad)
    bad.write_text("name: refs\nbase: params/smoke/retinanet.yaml\ncells:\n  A: [self_train.teacher=@Nobody]\n")
    with pytest.raises(cfg.ParamsError, match="refers to no cell"):
        st.load_study(bad)


def test_students_are_checked_against_the_papers_recipe(tmp_path):
    from stlib.experiments.self_training import recipe_deviations, recipe_markdown
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: recipe\nbase: params/smoke/retinanet.yaml\noverrides: [train.steps=40, train.batch_size=4]\n"
        "cells:\n  Teacher: []\n"
        "  Paper: [self_train.teacher=@Teacher, self_train.unlabeled=world:scenes, train.batch_size=8,"
        " train.eval_every=7]\n"
        "  Short: [self_train.teacher=@Teacher, self_train.unlabeled=world:scenes, train.batch_size=8,"
        " train.steps=10, augment.policy=s4, self_train.score_threshold=0.3, self_train.loss_norm=false]\n"
        "  Same batch: [self_train.teacher=@Teacher, self_train.unlabeled=world:scenes]\n"
        "  No pseudo: [self_train.teacher=@Teacher, self_train.unlabeled=]\n"
        "seeds: [0]\ncompare: {baseline: Teacher}\n")
    dev = recipe_deviations(st.load_study(spec))
    assert set(dev) == {"Paper", "Short", "Same batch", "No pseudo"}    # the teacher is no student
    assert dev["Paper"] == [] and dev["No pseudo"] == []     # bookkeeping (eval_every) is not the recipe
    assert dev["Same batch"] == ["train.batch_size 4 (teacher 4 x 2 = 8)"]
    short = dev["Short"]
    assert "train.steps 10 (teacher 40)" in short and "self_train.score_threshold 0.3 (Sec. 3.2: 0.5)" in short
    assert "self_train.loss_norm False (Sec. 3.2: True)" in short
    assert any(d.startswith("augment.policy s4 (teacher ") for d in short)
    text = recipe_markdown(st.load_study(spec))
    assert "- Paper: the paper's recipe" in text and "- Short: differs: train.steps 10 (teacher 40)" in text


def test_paired_differences_are_per_seed():
    s = st.Study(name="x", base="b", cells={"Teacher": (), "Student": ()}, seeds=(0, 1, 2), metric="AP",
                 compare={"baseline": "Teacher"})
    rows = [{"cell": "Teacher", "seed": i, "AP": v} for i, v in enumerate((0.10, 0.20, 0.30))]
    rows += [{"cell": "Student", "seed": i, "AP": v} for i, v in enumerate((0.13, 0.21, 0.35))]
    (d,) = st.paired_summary(s, rows)
    np.testing.assert_allclose(d["diffs"], [0.03, 0.01, 0.05], atol=1e-12)
    assert d["mean_diff"] == pytest.approx(0.03) and d["std"] == pytest.approx(0.02)
    assert d["ci95"] == pytest.approx(4.302653 * 0.02 / np.sqrt(3), rel=1e-5)
    assert "Paired differences" in st.report_markdown(s, [{**r, "run_id": "r"} for r in rows])


def test_a_referenced_run_without_its_checkpoint_is_made_again(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: refs\nbase: params/smoke/retinanet.yaml\ncells:\n  Teacher: []\n  Other: [train.steps=7]\n"
                    "  Student: [self_train.teacher=@Teacher]\nseeds: [0]\n")
    s = st.load_study(spec)
    for label in ("Teacher", "Other"):
        d = st.cell_run_dir(s, label, 0, tmp_path)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"status": "complete"}))
    done = {r["cell"]: r["complete"] for r in st.plan(s, tmp_path)}
    assert done == {"Teacher": False, "Other": True, "Student": False}   # a clone: metrics, no checkpoint
    (st.cell_run_dir(s, "Teacher", 0, tmp_path) / "checkpoints" / "best" / "6").mkdir(parents=True)
    assert {r["cell"]: r["complete"] for r in st.plan(s, tmp_path)}["Teacher"]


DOUBLING = """
name: doubling-test
base: params/smoke/retinanet.yaml
cells:
  S1: [train.steps=4]
  S1 2x: [train.steps=8]
  S4: [augment.policy=s4, train.steps=4]
  S4 2x: [augment.policy=s4, train.steps=8]
  S4 3x: [augment.policy=s4, train.steps=12]
seeds: [0, 1]
doubling: {threshold: 0.005}
"""


def test_the_doubling_check_pairs_cells_by_steps_and_says_converged_or_not(tmp_path):
    spec = tmp_path / "d.yaml"
    spec.write_text(DOUBLING)
    study = st.load_study(spec)
    # pairs only where everything but train.steps is equal and the steps double
    assert st.doubling_pairs(study) == [("S1", "S1 2x"), ("S4", "S4 2x")]
    aps = {"S1": (0.300, 0.310), "S1 2x": (0.303, 0.311),      # +0.002 mean: converged
           "S4": (0.200, 0.220), "S4 2x": (0.260, 0.250), "S4 3x": (0.27, 0.27)}   # +0.045: not
    for r in st.plan(study, tmp_path):
        ap = aps[r["cell"]][r["seed"]]
        _write_run(tmp_path / "runs" / r["run_id"], [(2, ap / 2), (4, ap)])
    rows = st.results(study, tmp_path)
    d = {x["short"]: x for x in st.doubling_summary(study, rows)}
    assert d["S1"]["converged"] and d["S1"]["mean_gain"] == pytest.approx(0.002)
    assert not d["S4"]["converged"] and d["S4"]["mean_gain"] == pytest.approx(0.045)
    assert (d["S4"]["steps"], d["S4"]["long_steps"], d["S4"]["seeds"]) == (4, 8, [0, 1])
    out = st.write_report(study, rows, tmp_path / "studies" / "doubling-test")
    report = (out / "report.md").read_text()
    assert "| S1 | 4 | 0.3050 | S1 2x | 8 | 0.3070 | +0.0020 | 0, 1 | yes |" in report
    assert "| S4 | 4 | 0.2100 | S4 2x | 8 | 0.2550 | +0.0450 | 0, 1 | **no** |" in report
    assert json.loads((out / "results.json").read_text())["doubling"][1]["converged"] is False
    # the chains: S4's three schedules are one chain, told apart from S1's by the policy
    chains = {c["name"]: c for c in st.chain_summary(study, rows)}
    assert set(chains) == {"augment.policy=s1", "augment.policy=s4"}
    s4 = chains["augment.policy=s4"]
    assert (s4["cells"], s4["steps"], s4["converged_at"], s4["longest"]) == (["S4", "S4 2x", "S4 3x"], [4, 8, 12], None, 12)
    assert s4["values"] == pytest.approx([0.21, 0.255, 0.27])
    assert chains["augment.policy=s1"]["converged_at"] == 4
    assert "| augment.policy=s4 | 4: 0.2100, 8: 0.2550, 12: 0.2700 | 4 -> 8: +0.0450 | **not by 12** |" in report
    assert "| augment.policy=s1 | 4: 0.3050, 8: 0.3070 | 4 -> 8: +0.0020 | 4 steps |" in report
    assert (out / "chains.png").stat().st_size > 10_000
    assert json.loads((out / "results.json").read_text())["chains"][1]["longest"] == 12
    from stlib.experiments.show import show
    text = show(out)
    assert "S1                       4 -> 8 steps: gain +0.0020  converged" in text
    assert "S4                       4 -> 8 steps: gain +0.0450  NOT converged" in text


@pytest.mark.parametrize("change,match", [
    ("doubling: {threshold: 0.005}", None),
    ("doubling: {threshold: -1}", "doubling must be"),
    ("doubling: {threshold: 0.005, pairs: x}", "doubling must be"),
])
def test_a_doubling_spec_is_checked_before_work(tmp_path, change, match):
    spec = tmp_path / "d.yaml"
    spec.write_text(DOUBLING.replace("doubling: {threshold: 0.005}", change))
    if match is None:   # no cell pairs at all
        spec.write_text("name: n\nbase: params/smoke/retinanet.yaml\ncells:\n  A: [train.steps=4]\n"
                        "  B: [train.steps=6]\ndoubling: {threshold: 0.005}\n")
        match = "no two cells differ only in train.steps"
    with pytest.raises(cfg.ParamsError, match=match):
        st.load_study(spec)


def test_parallel_workers_share_a_gpu_instead_of_each_reserving_most_of_it(tmp_path, monkeypatch):
    """`--jobs N` workers each get 90% / N of a GPU's memory (JAX reserves 75% per process by
    default, so a second worker would fail); a user's own setting is left alone."""
    for v in GPU_MEMORY_VARS:
        monkeypatch.delenv(v, raising=False)
    show = [sys.executable, "-c", "import os; print(os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION'), "
            "os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE'))"]
    logs = [tmp_path / f"{i}.log" for i in range(3)]
    st._pool([(show, log) for log in logs], 3, "env", progress=False)
    assert [log.read_text().split() for log in logs] == [["0.300", "None"]] * 3
    st._pool([(show, logs[0])], 1, "env", progress=False)
    assert logs[0].read_text().split() == ["None", "None"]
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    st._pool([(show, logs[0]), (show, logs[1])], 2, "env", progress=False)
    assert logs[0].read_text().split() == ["None", "false"]
