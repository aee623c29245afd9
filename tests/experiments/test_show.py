"""`stlib show`: a run's and a study's headline numbers and figures, from the committed records."""
import json

import pytest

from stlib.experiments.show import ShowError, show
from tests.conftest import run_python

STUDY = "outputs/studies/mini-self-train"


def test_a_study_shows_its_cells_paired_differences_runs_and_files():
    res = json.loads(open(STUDY + "/results.json").read())
    text = show(STUDY)
    assert text.startswith("study mini-self-train")
    for s in res["summary"]:
        assert f"{s['cell']:<24} {s['mean']:.4f}" in text
    for d in res["paired"]:
        assert f"{d['mean_diff']:.4f}" in text
    for r in res["runs"]:
        assert r["run_dir"] in text
    assert f"{STUDY}/report.md" in text


def test_a_run_shows_its_metrics_provenance_and_figures():
    res = json.loads(open(STUDY + "/results.json").read())
    student = next(r for r in res["runs"] if r["cell"] == "Student")
    m = json.loads(open(student["run_dir"] + "/metrics.json").read())
    text = show(student["run_dir"])
    assert f"AP {m['AP']:.4f}" in text and f"best step {m['best_step']}" in text
    assert "pseudo labels: world:scenes from teacher" in text and m["pseudo_labels"]["store"] in text
    assert f"{student['run_dir']}/curves.png" in text
    assert show(student["run_dir"] + "/metrics.json") == text     # a file inside the folder shows the folder


def test_a_failed_and_an_unfinished_run_say_so(tmp_path):
    run = tmp_path / "runs" / "smoke-retinanet-0123456789"
    run.mkdir(parents=True)
    (run / "params.yaml").write_text("name: x\n")
    assert "not finished: no metrics.json yet" in show(run)
    (run / "failed.json").write_text(json.dumps({"error": "data error: a.json: not valid JSON", "log": "run.log"}))
    assert "FAILED: data error: a.json: not valid JSON" in show(run)


def test_anything_else_is_one_line_from_the_cli(tmp_path):
    with pytest.raises(ShowError, match="neither a run folder"):
        show(tmp_path)
    proc = run_python(f"import sys; from stlib.cli import main; sys.exit(main(['show', {str(tmp_path)!r}]))")
    assert proc.returncode == 2 and proc.stderr.startswith("stlib show: not a result:"), proc.stderr[-2000:]
