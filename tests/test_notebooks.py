"""Each notebook end to end through papermill with smoke params; checks what it recorded."""
import json

import nbformat

from tests.conftest import SMOKE, run_python


def test_train_notebook_records_the_run(tmp_path):
    code = (f"import sys; from stlib.cli import main; "
            f"sys.exit(main(['train', {SMOKE!r}, '--quiet', '--outputs', {str(tmp_path)!r}]))")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run,) = list((tmp_path / "runs").iterdir())
    assert run.name.startswith("smoke-retinanet-")
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
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 2  # curves and predictions


def test_params_error_stops_before_work(tmp_path):
    code = (f"import sys; from stlib.cli import main; "
            f"sys.exit(main(['train', {SMOKE!r}, '--set', 'train.stepz=3', '--outputs', {str(tmp_path)!r}]))")
    proc = run_python(code)
    assert proc.returncode == 2
    assert "unknown key 'train.stepz'" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_augmentations_notebook_draws_every_op_and_policy(tmp_path):
    from tests.conftest import REPO
    out_nb, figures = tmp_path / "augmentations.ipynb", tmp_path / "figures"
    code = (f"import papermill as pm; pm.execute_notebook({str(REPO / 'notebooks/augmentations.ipynb')!r}, "
            f"{str(out_nb)!r}, parameters={{'PARAMS_FILE': {SMOKE!r}, 'SAVE_DIR': {str(figures)!r}}}, "
            f"cwd={str(REPO)!r}, progress_bar=False, kernel_name='python3')")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    nb = nbformat.read(out_nb, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 8  # 4 op groups + 4 policies
    saved = sorted(p.name for p in figures.glob("*.png"))
    assert saved == sorted(["ops-pixel.png", "ops-cutout.png", "ops-geometric.png", "ops-per-box.png",
                            "policy-s1.png", "policy-s2.png", "policy-s3.png", "policy-s4.png"])
    markdown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.output_type == "display_data" and "text/markdown" in o.get("data", {})]
    assert any("Policy v0" in o["data"]["text/markdown"] for o in markdown)  # the fidelity doc is shown
    assert (out_nb.stat().st_size < 5_000_000)


def test_pretrain_notebook_records_a_classifier_run_a_detector_can_start_from(tmp_path):
    """`stlib pretrain` through papermill, then a detector's backbone from that run folder."""
    from tests.conftest import REPO
    pre = str(REPO / "params/smoke/pretrain.yaml")
    code = (f"import sys; from stlib.cli import main; "
            f"sys.exit(main(['pretrain', {pre!r}, '--quiet', '--outputs', {str(tmp_path)!r}]))")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run,) = list((tmp_path / "runs").iterdir())
    assert run.name.startswith("smoke-pretrain-") and "top-1" in proc.stdout
    for f in ("params.yaml", "metrics.json", "metrics.jsonl", "pretrain.ipynb", "curves.png"):
        assert (run / f).is_file(), f
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["last_step"] == 6
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0 and metrics["best_step"] in (3, 6)
    nb = nbformat.read(run / "pretrain.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors

    # The smoke detector (resnet-tiny) takes that run's best backbone exactly; its heads stay Rand Init's.
    import jax
    import numpy as np
    from stlib import config as cfg
    from stlib.models import weight_import as wi
    from stlib.train import sharding
    from stlib.train.loop import Detector
    variables, meta = wi.read_checkpoint(run)
    assert meta["backbone"] == "resnet-tiny" and meta["step"] == metrics["best_step"]
    mesh = sharding.create_mesh()
    loaded = Detector(cfg.load_params(SMOKE, [f"model.init={run}"]), 3, mesh).init_state()
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded.params["backbone"]),
                 variables["params"]["backbone"])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded.batch_stats["backbone"]),
                 variables["batch_stats"]["backbone"])
    rand = Detector(cfg.load_params(SMOKE), 3, mesh).init_state()
    jax.tree.map(np.testing.assert_array_equal, loaded.params["head"], rand.params["head"])
    assert not np.array_equal(np.asarray(loaded.params["backbone"]["stem_conv"]["kernel"]),
                              np.asarray(rand.params["backbone"]["stem_conv"]["kernel"]))
