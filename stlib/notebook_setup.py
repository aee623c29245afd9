"""The first code cell of every notebook, so that each runs on Colab and Kaggle as it runs here.

Opened on a hosted runtime, a notebook finds no stlib: its first code cell installs it (from
`STLIB_SOURCE`, else this repository's address) with the jax build for the runtime: TPU
(`stlib[tpu]`, jax with libtpu), CUDA GPU (`stlib[cuda]`), or the CPU default. Where stlib is
importable (this checkout, an installed wheel, papermill runs) the cell does nothing. Presets and
notebooks then come from the package (`stlib.paths`), runs go under the working directory or
`$STLIB_HOME`; a TPU runtime gets the same `data` mesh as every other device
(`stlib.train.sharding.setup_mesh`).

The cell's text lives here once: `python -m stlib.notebook_setup` writes it into every notebook
(tests/test_notebook_setup.py checks they agree) and prints the README's "Open in Colab / Kaggle"
links. `REPOSITORY` is the repository's public address; none is recorded yet (the checkout has no
remote), so until it is set the cell asks for `STLIB_SOURCE` in one line instead of guessing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from stlib import paths

# This repository's public address, "github.com/OWNER/NAME" (unknown so far; see the docstring).
REPOSITORY = ""
BRANCH = "main"

_CELL = '''\
# Colab / Kaggle: installs stlib with the jax build for this runtime (TPU, CUDA GPU or CPU) where it
# is not installed yet; elsewhere this cell does nothing. STLIB_SOURCE (optional): a git URL, wheel or folder.
import importlib.util, os, shutil, subprocess, sys
if importlib.util.find_spec("stlib") is None:
    source = os.environ.get("STLIB_SOURCE") or "{source}"
    if not source:
        raise RuntimeError("stlib is not installed: set os.environ['STLIB_SOURCE'] to stlib's repository "
                           "('git+https://github.com/OWNER/NAME'), a wheel or a folder, and run this cell again")
    if os.path.exists(source):
        source = "file://" + os.path.abspath(source)
    tpu = any(os.environ.get(k) for k in ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE")) or any(
        os.path.exists(d) for d in ("/dev/accel0", "/dev/vfio/0"))
    extra = "[tpu]" if tpu else "[cuda]" if shutil.which("nvidia-smi") else ""
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"stlib{{extra}} @ {{source}}"])
    importlib.invalidate_caches()'''


def source_for(repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The pip source for stlib at `repository` ("github.com/OWNER/NAME"), or "" when unknown."""
    repository = repository.strip().removeprefix("https://").removesuffix(".git").strip("/")
    return f"git+https://{repository}.git@{branch}" if repository else ""


def cell_source(repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The first code cell's text for `repository`."""
    return _CELL.format(source=source_for(repository, branch))


def _first_code_cell(nb: dict) -> dict | None:
    return next((c for c in nb["cells"] if c["cell_type"] == "code"), None)


def is_setup_cell(cell: dict | None) -> bool:
    text = "".join(cell["source"]) if cell and isinstance(cell["source"], list) else (cell or {}).get("source", "")
    return text.startswith("# Colab / Kaggle: installs stlib")


def notebooks(notebooks_dir=None) -> list[Path]:
    return sorted(Path(notebooks_dir or paths.NOTEBOOKS_DIR).glob("*.ipynb"))


def update_notebooks(repository: str = REPOSITORY, notebooks_dir=None) -> list[Path]:
    """Writes the setup cell as the first code cell of every notebook (replacing an older one);
    returns the notebooks changed. Cell ids are kept; the json layout is nbformat's (indent 1)."""
    changed = []
    text = cell_source(repository)
    for path in notebooks(notebooks_dir):
        nb = json.loads(path.read_text())
        first = _first_code_cell(nb)
        lines = text.splitlines(keepends=True)
        if is_setup_cell(first):
            if first["source"] == lines:
                continue
            first["source"] = lines
        else:
            at = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")
            nb["cells"].insert(at, {"cell_type": "code", "execution_count": None, "id": "stlib-setup",
                                    "metadata": {"tags": ["stlib-setup"]}, "outputs": [], "source": lines})
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        changed.append(path)
    return changed


def links(repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The README's markdown table: an "Open in Colab" and an "Open in Kaggle" link per notebook."""
    if not repository:
        raise ValueError("no repository address: set stlib.notebook_setup.REPOSITORY (github.com/OWNER/NAME)")
    repo = repository.strip().removeprefix("https://").removeprefix("github.com/").removesuffix(".git").strip("/")
    rows = ["| notebook | Colab | Kaggle |", "|---|---|---|"]
    for path in notebooks():
        blob = f"github.com/{repo}/blob/{branch}/notebooks/{path.name}"
        rows.append(f"| `{path.name}` | [Open in Colab](https://colab.research.google.com/{blob.replace('github.com/', 'github/', 1)}) "
                    f"| [Open in Kaggle](https://kaggle.com/kernels/welcome?src=https://{blob}) |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stlib.notebook_setup", description=__doc__.splitlines()[0])
    ap.add_argument("--repository", default=REPOSITORY, help="github.com/OWNER/NAME (default: REPOSITORY)")
    args = ap.parse_args(argv)
    for path in update_notebooks(args.repository):
        print(f"wrote the setup cell into {paths.relative(path)}")
    if args.repository:
        print(links(args.repository))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
