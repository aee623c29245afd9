"""run.lock: one process per run folder; a stale lock is taken over."""
import os
import socket
import subprocess
import sys

import pytest

from stlib.io import RunInProgressError, lock_holder, run_lock


def test_a_live_lock_refuses_a_second_writer_and_is_released(tmp_path):
    with run_lock(tmp_path):
        assert lock_holder(tmp_path) == f"{os.getpid()}@{socket.gethostname()}"
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            (tmp_path / "run.lock").write_text(f"{other.pid}@{socket.gethostname()}")
            with pytest.raises(RunInProgressError, match=str(other.pid)):
                with run_lock(tmp_path):
                    pass
        finally:
            other.kill()
            other.wait()
    assert not (tmp_path / "run.lock").exists()


def test_a_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run.lock").write_text(f"{dead.pid}@{socket.gethostname()}")
    assert lock_holder(tmp_path) is None
    with run_lock(tmp_path):
        assert lock_holder(tmp_path).startswith(str(os.getpid()))
