"""Shared fixtures. Tests run on the CPU; the smoke world is generated once per session."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "params/smoke/retinanet.yaml")

# JAX's persistent compilation cache, shared by the test processes and the subprocesses they start
# (set before anything imports jax): the suite compiles the same smoke programs again and again, and a
# cached one loads in a fraction of a second (a smoke `stlib train` process: 29 s cold, 9 s warm).
# Compiled programs are keyed by the program, the jax/XLA versions and the flags, so numbers are unchanged.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def repo():
    return REPO


def run_python(code: str, env_extra: dict | None = None, timeout: int = 600):
    """Runs `code` in a fresh interpreter (own XLA_FLAGS), returns CompletedProcess."""
    import subprocess
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def random_pixels(h: int, w: int, seed: int):
    """uint8 [h, w, 3] random RGB pixels."""
    import numpy as np
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_bytes(array) -> bytes:
    """`array` encoded as PNG."""
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def notebook_errors(nb) -> list:
    """The error outputs of an executed notebook (nbformat node)."""
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]


def notebook_stderr(nb) -> list:
    """The stderr lines of an executed notebook other than progress bars (warnings, logs): a
    record keeps none that the project causes."""
    return [line for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "stream" and o.get("name") == "stderr"
            for line in o.get("text", "").replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]


def notebook_images(nb) -> list:
    """The PNG display outputs of an executed notebook."""
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "display_data" and "image/png" in o.get("data", {})]


# The files that take a minute or more on a clean clone (durations of a clean-clone .ci/run), first:
# pytest-xdist's loadfile hands whole files to the workers in collection order, so starting the long
# ones first lets the two workers finish together instead of one running a long file at the end.
HEAVY_FIRST = ("train/test_multiprocess.py", "experiments/test_self_train.py", "tasks/test_segmentation.py",
               "experiments/test_records.py", "train/test_train.py", "test_notebooks.py",
               "augment/test_policies.py", "augment/test_ops.py", "models/test_import_weights_cli.py",
               "test_cli_errors.py", "test_paper_dry_run.py", "data/test_stream.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    tests = REPO / "tests"

    def order(item):
        try:
            return rank.get(Path(str(item.fspath)).relative_to(tests).as_posix(), len(rank))
        except ValueError:
            return len(rank)
    items.sort(key=order)   # stable: a file's tests stay together and in order
