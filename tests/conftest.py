"""Shared fixtures. Tests run on the CPU; the smoke world is generated once per session."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "params/smoke/retinanet.yaml")


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
