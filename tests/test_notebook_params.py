"""Notebook parameters: every parameters cell parses (papermill warned "Unable to parse line 2
'OVERRIDES = []'" on a comment with '='), and stlib passes a notebook only parameters it declares
(it warned "Passed unknown parameter: OVERRIDES" on every run)."""
import logging

import pytest

from stlib import config as cfg
from stlib import paths
from stlib.experiments import runs

NOTEBOOKS = sorted(p.name for p in paths.NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_parameters_cell_parses(name, caplog):
    import papermill as pm
    with caplog.at_level(logging.WARNING, logger="papermill"):
        declared = pm.inspect_notebook(str(paths.NOTEBOOKS_DIR / name))
    assert declared
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]


def test_a_run_passes_only_declared_parameters(tmp_path, monkeypatch):
    import papermill as pm
    seen = {}

    def fake(input_path, output_path, parameters, **kw):
        seen[input_path] = parameters
    monkeypatch.setattr(pm, "execute_notebook", fake)
    runs.execute_notebook("train.ipynb", cfg.load_params("params/smoke/retinanet.yaml"), outputs=tmp_path,
                          progress=False)
    (path, passed), = seen.items()
    assert set(passed) <= set(pm.inspect_notebook(path))


def test_a_notebook_run_does_not_log_a_keyboard_interrupt(tmp_path, capfd, monkeypatch):
    """jupyter_client interrupts every kernel before shutting it down, so each normal run logged
    "KeyboardInterrupt caught in kernel"; stlib's notebooks run with a kernel manager that does not."""
    import nbformat
    import papermill as pm
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    run = dict(progress_bar=False, kernel_name="python3")
    pm.execute_notebook(str(tmp_path / "tiny.ipynb"), str(tmp_path / "a.ipynb"), **run)
    assert "KeyboardInterrupt caught in kernel" in capfd.readouterr().err      # jupyter_client's default
    pm.execute_notebook(str(tmp_path / "tiny.ipynb"), str(tmp_path / "b.ipynb"), **run,
                        kernel_manager_class=runs._quiet_kernel_manager())
    assert "KeyboardInterrupt" not in capfd.readouterr().err
    seen = {}
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **kw: seen.update(kw))
    runs.execute("train.ipynb", tmp_path / "c.ipynb", {})
    assert seen["kernel_manager_class"].__name__ == "QuietShutdownKernelManager"
