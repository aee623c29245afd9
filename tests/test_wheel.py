"""stlib as a package: the built wheel, installed into a fresh venv, runs every notebook under
papermill from an empty directory outside the repository, finds the presets by name, and
writes nothing into the installation.

The fresh venv takes stlib only from the wheel; its dependencies come from the project's venv
through a .pth file (they are not under test, and downloading them would cost minutes). The
project venv's editable stlib is not on that path: .pth files are only read in site folders.
"""
import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest

from tests.conftest import REPO, notebook_errors, notebook_stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "dist"), str(REPO)], capture_output=True, text=True, cwd=tmp)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("stlib-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-3000:]
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "stlib-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp / "work"                     # an empty directory outside the repository
    work.mkdir()
    return {"bin": env_dir / "bin", "site": Path(site), "work": work, "wheel": wheel}


def _stlib(installed, *args, timeout=900):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STLIB_", "PYTHONPATH"))}
    env["PATH"] = f"{installed['bin']}:{env['PATH']}"
    # the repository's generated worlds, so the test does not generate them again
    env["STLIB_CACHE"] = str(REPO / ".cache")
    return subprocess.run([str(installed["bin"] / "stlib"), *args], cwd=installed["work"], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_wheel_imports_from_the_installation_and_ships_the_presets(installed):
    code = ("import stlib, stlib.paths as p; print(stlib.__file__); print(p.IN_REPOSITORY, p.REPO_ROOT, "
            "p.preset('smoke/retinanet'))")
    out = subprocess.run([str(installed["bin"] / "python"), "-c", code], cwd=installed["work"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(str(installed["site"]))
    assert out[1].split() == ["False", str(installed["work"].resolve()),
                              str(installed["site"] / "stlib/_data/params/smoke/retinanet.yaml")]


def _nothing_written_into(installed):
    written = [p for p in (installed["site"] / "stlib").rglob("*") if p.is_file() and "__pycache__" not in p.parts
               and p.stat().st_mtime > (installed["site"] / "stlib" / "paths.py").stat().st_mtime + 1]
    assert written == []


def test_a_run_from_an_empty_directory(installed):
    """`stlib train smoke/retinanet` from the installed wheel in an empty folder: the preset by name,
    the train notebook, outputs under the folder, nothing written into the installation."""
    proc = _stlib(installed, "train", "smoke/retinanet", "--quiet")
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    (nb,) = (installed["work"] / ".cache" / "outputs").rglob("train.ipynb")
    nb = nbformat.read(nb, as_version=4)
    assert not notebook_errors(nb) and notebook_stderr(nb) == []
    _nothing_written_into(installed)


@pytest.mark.slow   # ~2 min: every notebook through the wheel (test_notebooks runs them from the checkout)
def test_every_notebook_runs_from_an_empty_directory(installed):
    work = installed["work"]
    spec = work / "st.yaml"
    spec.write_text(
        "name: wheel-st\nbase: params/smoke/retinanet.yaml\ncells:\n  Teacher: []\n"
        "  Student: [self_train.teacher=@Teacher, self_train.unlabeled=world:scenes, self_train.score_threshold=0.01,"
        " self_train.store_min_score=0.01, train.batch_size=8]\nseeds: [0]\ncompare: {baseline: Teacher}\n")
    for args in (["self-train", "st.yaml", "--quiet"],            # self_train, train, pseudo_labels notebooks
                 ["pretrain", "smoke/pretrain", "--quiet"],       # pretrain notebook, the preset by name
                 ["study", "st.yaml", "--quiet"]):                # study notebook (its runs exist: reported)
        proc = _stlib(installed, *args)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    out = work / ".cache" / "outputs"
    notebooks = sorted(out.rglob("*.ipynb"))
    assert {n.name for n in notebooks} >= {"self_train.ipynb", "train.ipynb", "pseudo_labels.ipynb",
                                           "pretrain.ipynb", "study.ipynb"}
    for n in notebooks:
        nb = nbformat.read(n, as_version=4)
        assert not notebook_errors(nb), n
        assert notebook_stderr(nb) == [], (n, notebook_stderr(nb)[:3])
    rows = json.loads((out / "studies" / "wheel-st" / "self_training.json").read_text())
    assert {r["cell"] for r in rows} == {"Teacher", "Student"}
    # the augmentation gallery notebook, through papermill from the installed package
    aug = subprocess.run([str(installed["bin"] / "python"), "-c",
                          "import papermill as pm, stlib.paths as p; pm.execute_notebook(str(p.NOTEBOOKS_DIR / "
                          "'augmentations.ipynb'), 'aug.ipynb', parameters={'PARAMS_FILE': 'smoke/retinanet', "
                          "'NUM_SCENES': 1, 'OPS': 'Equalize', 'SAMPLES': 1}, kernel_name='python3', "
                          "progress_bar=False)"],
                         cwd=work, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "STLIB_CACHE": str(REPO / ".cache")})
    assert aug.returncode == 0, aug.stderr[-3000:]
    _nothing_written_into(installed)


def test_the_notebooks_setup_cell_installs_the_wheel_where_stlib_is_missing(installed, tmp_path):
    """The first cell of every notebook, run for real in a fresh venv that has stlib's dependencies
    but not stlib (as on Colab or Kaggle), with STLIB_SOURCE naming the built wheel: it installs the
    wheel with pip, and the same process then imports stlib and finds the presets."""
    from stlib import notebook_setup

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = tmp_path / "deps"            # the project venv's packages, less stlib itself
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("stlib", "__editable__", "_distutils_hack", "pip", "setuptools")):
            (deps / entry.name).symlink_to(entry)
    (site / "stlib-test-deps.pth").write_text(f"{deps}\n")
    code = notebook_setup.cell_source() + (
        "\nimport stlib, stlib.paths as p\nprint(stlib.__file__)\nprint(p.preset('smoke/retinanet'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STLIB_", "PYTHONPATH", "PIP_"))}
    env.update(STLIB_SOURCE=str(installed["wheel"]), PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run([str(py), "-c", code], cwd=installed["work"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    where, preset = proc.stdout.strip().splitlines()[-2:]
    assert where.startswith(str(site / "stlib")) and preset == str(site / "stlib/_data/params/smoke/retinanet.yaml")
