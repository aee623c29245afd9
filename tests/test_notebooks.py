"""Each notebook end to end through papermill with smoke params; checks what it recorded."""
import json

import nbformat
import pytest

from tests.conftest import SMOKE, notebook_errors, notebook_images, notebook_stderr, run_python


def test_train_notebook_records_the_run(tmp_path):
    code = (f"import sys; from stlib.cli import main; "
            f"sys.exit(main(['train', {SMOKE!r}, '--outputs', {str(tmp_path)!r}]))")
    proc = run_python(code, {"STLIB_PROGRESS_EVERY": "0.2"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run,) = list((tmp_path / "runs").iterdir())
    assert run.name.startswith("smoke-retinanet-")
    # the run trained inside a nested notebook; its progress reached the command's stderr
    progress = [l for l in proc.stderr.splitlines() if l.startswith(f"[progress] {run.name}: step ")]
    assert progress and "step 6/6 (100%)" in progress[-1] and "val AP" in progress[-1], proc.stderr[-3000:]
    assert "COCO AP" in proc.stdout
    for f in ("params.yaml", "metrics.json", "metrics.jsonl", "train.ipynb", "curves.png", "predictions.png"):
        assert (run / f).is_file(), f
    assert (run / "checkpoints" / "best").is_dir() and (run / "checkpoints" / "latest").is_dir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["last_step"] == 6
    assert 0.0 <= metrics["AP"] <= 1.0 and metrics["best_step"] in (3, 6)
    assert "images_corrupt" in metrics["data_stats"]["train"]
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines if e["kind"] == "eval"] == [3, 6]
    nb = nbformat.read(run / "train.ipynb", as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and str(run / "params.yaml") in injected[0].source
    assert not notebook_errors(nb)
    assert notebook_stderr(nb) == []      # no kernel-transport, TensorFlow or tqdm warnings in a record
    images = notebook_images(nb)
    assert len(images) >= 2  # curves and predictions


def test_params_error_stops_before_work(tmp_path):
    code = (f"import sys; from stlib.cli import main; "
            f"sys.exit(main(['train', {SMOKE!r}, '--set', 'train.stepz=3', '--outputs', {str(tmp_path)!r}]))")
    proc = run_python(code)
    assert proc.returncode == 2
    assert "unknown key 'train.stepz'" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow   # suite budget: tests/test_wheel.py runs this notebook through papermill on every CI run
def test_augmentations_notebook_draws_every_op_and_policy(tmp_path):
    from tests.conftest import REPO
    out_nb, figures = tmp_path / "augmentations.ipynb", tmp_path / "figures"
    code = (f"import papermill as pm; pm.execute_notebook({str(REPO / 'notebooks/augmentations.ipynb')!r}, "
            f"{str(out_nb)!r}, parameters={{'PARAMS_FILE': {SMOKE!r}, 'SAVE_DIR': {str(figures)!r}}}, "
            f"cwd={str(REPO)!r}, progress_bar=False, kernel_name='python3')")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    nb = nbformat.read(out_nb, as_version=4)
    assert not notebook_errors(nb)
    images = notebook_images(nb)
    assert len(images) == 8  # 4 op groups + 4 policies
    saved = sorted(p.name for p in figures.glob("*.png"))
    assert saved == sorted(["ops-pixel.png", "ops-cutout.png", "ops-geometric.png", "ops-per-box.png",
                            "policy-s1.png", "policy-s2.png", "policy-s3.png", "policy-s4.png"])
    markdown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.output_type == "display_data" and "text/markdown" in o.get("data", {})]
    assert any("Policy v0" in o["data"]["text/markdown"] for o in markdown)  # the fidelity doc is shown
    assert (out_nb.stat().st_size < 5_000_000)


@pytest.mark.slow   # ~2 min: three pre-training notebooks; tests/experiments/test_inits.py covers the library path
def test_inits_makes_the_three_pretrained_checkpoints_a_detector_can_start_from(tmp_path):
    """`stlib inits --scale smoke`: ImageNet, SimCLR and ImageNet++ (Noisy Student) runs through
    papermill in one command; then a detector's backbone from them, and the student's start."""
    from tests.conftest import REPO
    code = (f"import sys; from stlib.cli import main; "
            f"sys.exit(main(['inits', '--scale', 'smoke', '--quiet', '--outputs', {str(tmp_path)!r}]))")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = {p.name.rsplit("-", 1)[0]: p for p in (tmp_path / "runs").iterdir()}
    assert set(runs) == {"smoke-pretrain", "smoke-simclr", "smoke-noisy-student"}
    assert "linear-probe top-1" in proc.stdout and "imagenet++" in proc.stdout
    for name, run in runs.items():
        for f in ("params.yaml", "metrics.json", "metrics.jsonl", "pretrain.ipynb", "curves.png"):
            assert (run / f).is_file(), (name, f)
        nb = nbformat.read(run / "pretrain.ipynb", as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.output_type == "error"]
        assert not errors, name
    metrics = {n: json.loads((r / "metrics.json").read_text()) for n, r in runs.items()}
    assert all(m["status"] == "complete" for m in metrics.values())
    pre = metrics["smoke-pretrain"]
    assert pre["last_step"] == 6 and 0.0 <= pre["top1"] <= pre["top5"] <= 1.0 and pre["best_step"] in (3, 6)
    assert 0.0 <= metrics["smoke-simclr"]["linear_top1"] <= 1.0
    assert 0.0 <= metrics["smoke-noisy-student"]["top1"] <= 1.0
    pseudo = json.loads((runs["smoke-noisy-student"] / "pseudo_labels.json").read_text())
    assert pseudo["pool_images"] == 16 and pseudo["teacher"].endswith(runs["smoke-pretrain"].name)
    # a second call finds all three and trains nothing
    stamps = {n: (r / "metrics.json").stat().st_mtime_ns for n, r in runs.items()}
    proc2 = run_python(code)
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    assert stamps == {n: (r / "metrics.json").stat().st_mtime_ns for n, r in runs.items()}

    # The smoke detector (resnet-tiny) takes the imagenet run's best backbone exactly (named init);
    # its heads stay Rand Init's.
    import jax
    import numpy as np
    from stlib import config as cfg
    from stlib.experiments.inits import resolve_init
    from stlib.models import weight_import as wi
    from stlib.train import sharding
    from stlib.tasks.detection import Detector
    variables, meta = wi.read_checkpoint(runs["smoke-pretrain"])
    assert meta["backbone"] == "resnet-tiny" and meta["step"] == pre["best_step"]
    mesh = sharding.create_mesh()
    named = resolve_init(cfg.load_params(SMOKE, ["model.init=imagenet"]), outputs=tmp_path)
    assert named.model.init == str(runs["smoke-pretrain"])
    loaded = Detector(named, 3, mesh).init_state(init=runs["smoke-pretrain"])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded.params["backbone"]),
                 variables["params"]["backbone"])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded.batch_stats["backbone"]),
                 variables["batch_stats"]["backbone"])
    rand = Detector(cfg.load_params(SMOKE), 3, mesh).init_state()
    jax.tree.map(np.testing.assert_array_equal, loaded.params["head"], rand.params["head"])
    assert not np.array_equal(np.asarray(loaded.params["backbone"]["stem_conv"]["kernel"]),
                              np.asarray(rand.params["backbone"]["stem_conv"]["kernel"]))
    # SimCLR's checkpoint ({"backbone", "projection"}) gives its backbone the same way
    sim_vars, _ = wi.read_checkpoint(runs["smoke-simclr"])
    assert set(sim_vars["params"]) == {"backbone", "projection"}
    p, bs, _ = wi.init_backbone(rand.params, rand.batch_stats, runs["smoke-simclr"], "resnet-tiny")
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, p["backbone"]),
                 sim_vars["params"]["backbone"])
    jax.tree.map(np.testing.assert_array_equal, p["fpn"], rand.params["fpn"])

    # The Noisy Student student (student_init: teacher) starts from the teacher's weights exactly
    from stlib.experiments.assemble import build_task
    ns_params = cfg.load_params(str(REPO / "params/smoke/noisy_student.yaml"))
    student = build_task(ns_params, progress=False, outputs=tmp_path).init_state()
    teacher_vars, _ = wi.read_checkpoint(runs["smoke-pretrain"])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, student.params), teacher_vars["params"])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, student.batch_stats),
                 teacher_vars["batch_stats"])


def test_self_train_notebook_runs_teacher_pseudo_labels_student(tmp_path):
    """`stlib self-train` (notebooks/self_train.ipynb): the teacher's run, its store, a student that
    names both, the explorer notebook's PNGs for the store, and the teacher-vs-student report."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: smoke-st-test\nbase: params/smoke/retinanet.yaml\ncells:\n  Teacher: []\n"
        "  Student: [self_train.teacher=@Teacher, self_train.unlabeled=world:scenes, self_train.score_threshold=0.01,"
        " self_train.store_min_score=0.01, train.batch_size=8]\nseeds: [0]\ncompare: {baseline: Teacher}\n")
    out = tmp_path / "out"
    code = (f"import sys; from stlib.cli import main; "
            f"sys.exit(main(['self-train', {str(spec)!r}, '--quiet', '--outputs', {str(out)!r}]))")
    proc = run_python(code, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Paired differences" in proc.stdout and "precision" in proc.stdout
    study = out / "studies" / "smoke-st-test"
    for f in ("report.md", "results.json", "self_training.md", "self_training.json", "self_train.ipynb"):
        assert (study / f).is_file(), f
    rows = json.loads((study / "self_training.json").read_text())
    teacher = next(r for r in rows if r["cell"] == "Teacher")
    student = next(r for r in rows if r["cell"] == "Student")
    assert "diff" in student and student["unlabeled"] == "world:scenes"
    assert student["pseudo_per_image"] > 0 and student["pseudo_recall"] is not None
    m = json.loads((out / "runs" / student["run_id"] / "metrics.json").read_text())
    assert m["pseudo_labels"]["teacher"].endswith(teacher["run_id"])
    assert m["streams"]["pseudo"]["examples_per_batch"] == 4 and m["streams"]["human"]["examples_per_batch"] == 4
    store = out / "pseudo_labels" / m["pseudo_labels"]["store"].split("/")[-1]
    assert json.loads((store / "store.json").read_text())["teacher_run_id"] == teacher["run_id"]
    for f in ("gallery.png", "quality.png", "class_counts.png", "quality.json", "pseudo_labels.ipynb"):
        assert (store / "explorer" / f).is_file(), f
    nb = nbformat.read(study / "self_train.ipynb", as_version=4)
    assert not notebook_errors(nb)
    assert notebook_stderr(nb) == [], notebook_stderr(nb)[:5]      # nested kernels' warnings included
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert str(spec) in injected.source   # outside the repository: absolute; inside: repo-relative
    assert student["labels"] == "hard >= 0.01"
    # --report-only rewrites the reports from the runs there are, training nothing
    (study / "self_training.md").unlink()
    code = (f"import sys; from stlib.cli import main; "
            f"sys.exit(main(['self-train', {str(spec)!r}, '--report-only', '--outputs', {str(out)!r}]))")
    proc = run_python(code, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (study / "self_training.md").is_file() and "hard >= 0.01" in proc.stdout
