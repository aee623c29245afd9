"""Every notebook's first code cell: on Colab/Kaggle it installs stlib with the jax build for the
runtime; where stlib is installed it does nothing (tests/test_wheel.py runs it for real into a
fresh venv)."""
import importlib.util
import json
import os
import shutil
import subprocess

import pytest

from stlib import notebook_setup as ns
from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_starts_with_the_setup_cell(path):
    nb = json.loads(path.read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "".join(first["source"]) == ns.cell_source(), f"run python -m stlib.notebook_setup ({path.name})"
    # the parameters cell follows it, so papermill injects after the setup
    codes = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in codes[1].get("metadata", {}).get("tags", []), path.name


def _run_cell(monkeypatch, *, installed: bool, env=(), gpu: bool = False):
    """Executes the cell's text as the notebook would; returns the pip command lines it ran."""
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda cmd, *a, **k: calls.append(cmd))
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real_find(name, *a) if installed else None) if name == "stlib"
                        else real_find(name, *a))
    for k in ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE", "STLIB_SOURCE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in dict(env).items():
        monkeypatch.setenv(k, v)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if str(p).startswith("/dev/") else real_exists(p))
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/nvidia-smi" if (gpu and name == "nvidia-smi")
                        else None if name == "nvidia-smi" else real_which(name, *a, **k))
    exec(compile(ns.cell_source(), "setup-cell", "exec"), {})
    return calls


def test_the_cell_does_nothing_where_stlib_is_installed(monkeypatch):
    assert _run_cell(monkeypatch, installed=True, env={"COLAB_TPU_ADDR": "1"}) == []


@pytest.mark.parametrize("env,gpu,extra", [
    ({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, False, "[tpu]"),     # Colab TPU
    ({"TPU_ACCELERATOR_TYPE": "v3-8"}, False, "[tpu]"),        # Kaggle TPU VM
    ({}, True, "[cuda]"),                                      # a CUDA GPU runtime
    ({}, False, ""),                                           # CPU
])
def test_the_cell_installs_the_jax_build_for_the_runtime(monkeypatch, tmp_path, env, gpu, extra):
    wheel = tmp_path / "stlib-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    (cmd,) = _run_cell(monkeypatch, installed=False, env={**env, "STLIB_SOURCE": str(wheel)}, gpu=gpu)
    assert cmd[1:5] == ["-m", "pip", "install", "-q"] and cmd[5] == f"stlib{extra} @ file://{wheel}"
    (cmd,) = _run_cell(monkeypatch, installed=False, env={**env, "STLIB_SOURCE": "git+https://github.com/o/n.git"},
                       gpu=gpu)
    assert cmd[5] == f"stlib{extra} @ git+https://github.com/o/n.git"


def test_without_a_source_the_cell_says_what_to_set(monkeypatch):
    if ns.source_for():
        pytest.skip("the repository's address is recorded: the cell has a default source")
    with pytest.raises(RuntimeError, match="set os.environ\\['STLIB_SOURCE'\\]"):
        _run_cell(monkeypatch, installed=False)


def test_the_cell_is_written_once_and_links_name_each_notebook(tmp_path):
    for p in NOTEBOOKS[:2]:
        nb = json.loads(p.read_text())
        nb["cells"] = [c for c in nb["cells"] if not ns.is_setup_cell(c)]   # an older notebook, no setup cell
        (tmp_path / p.name).write_text(json.dumps(nb, indent=1) + "\n")
    assert len(ns.update_notebooks("github.com/o/n", tmp_path)) == 2
    assert ns.update_notebooks("github.com/o/n", tmp_path) == []          # idempotent
    nb = json.loads((tmp_path / NOTEBOOKS[0].name).read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert '"git+https://github.com/o/n.git@main"' in "".join(first["source"])
    table = ns.links("github.com/o/n")
    for p in NOTEBOOKS:
        assert (f"https://colab.research.google.com/github/o/n/blob/main/notebooks/{p.name}" in table
                and f"https://kaggle.com/kernels/welcome?src=https://github.com/o/n/blob/main/notebooks/{p.name}"
                in table)
