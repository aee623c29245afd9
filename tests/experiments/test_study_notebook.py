"""`stlib study` through papermill (notebooks/study.ipynb): it finds finished runs, trains
nothing, and writes the report, results and convergence plot."""
import json

import nbformat

from tests.conftest import run_python
from tests.experiments.test_study import SPEC, _write_run


def test_study_notebook_reports_finished_runs_without_training(tmp_path):
    from stlib.experiments import study as st
    spec = tmp_path / "study.yaml"
    spec.write_text(SPEC)
    plan = st.plan(st.load_study(spec), tmp_path)
    for r in plan:
        top = 0.3 if r["cell"] == "Other" else 0.1 + 0.01 * r["seed"]
        _write_run(tmp_path / "runs" / r["run_id"], [(2, top * 0.5), (4, top * 0.9), (6, top)])
    before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    code = (f"import sys; from stlib.cli import main; "
            f"sys.exit(main(['study', {str(spec)!r}, '--quiet', '--outputs', {str(tmp_path)!r}]))")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before   # nothing new was trained
    out = tmp_path / "studies" / "test-study"
    for f in ("report.md", "results.json", "convergence.png", "study.ipynb"):
        assert (out / f).is_file(), f
    assert "| Rand Init | 3 | 0.1100 | 0.0100 |" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert [s["cell"] for s in results["summary"]] == ["Rand Init", "Other"]
    nb = nbformat.read(out / "study.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert images   # the convergence plot is in the notebook
