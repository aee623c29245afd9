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


def test_a_notebook_run_does_not_log_a_keyboard_interrupt(tmp_path, monkeypatch):
    """jupyter_client interrupts (SIGINT) every kernel before shutting it down, so each normal run
    logged "KeyboardInterrupt caught in kernel" (when the signal beat the shutdown: racy, so this
    checks the mechanism): stlib's notebooks run with a kernel manager that skips the interrupt at
    shutdown, and only then."""
    import asyncio

    import papermill as pm
    from jupyter_client import AsyncKernelManager
    calls = []

    async def interrupt(self):
        calls.append(self.shutting_down)
    monkeypatch.setattr(AsyncKernelManager, "_async_interrupt_kernel", interrupt)
    km = runs._quiet_kernel_manager()()
    km.shutting_down = True
    asyncio.run(km._async_interrupt_kernel())
    assert calls == []
    km.shutting_down = False
    asyncio.run(km._async_interrupt_kernel())      # a user's interrupt still reaches the kernel
    assert calls == [False]
    seen = {}
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **kw: seen.update(kw))
    runs.execute("train.ipynb", tmp_path / "c.ipynb", {})
    assert seen["kernel_manager_class"].__name__ == "QuietShutdownKernelManager"


def test_every_cell_has_an_id_so_nbformat_does_not_warn_on_each_run():
    import json
    from pathlib import Path
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        raw = json.loads(path.read_text())
        assert (raw["nbformat"], raw["nbformat_minor"]) >= (4, 5), path.name
        assert all("id" in c for c in raw["cells"]), path.name
