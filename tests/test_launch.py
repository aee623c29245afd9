"""`--processes N` without starting processes: each launched process's environment, the argument
handed on, the one-line errors of a job described wrongly, and the launcher's report of a failed
process (tests/train/test_multiprocess.py runs real two-process jobs)."""
import os
import subprocess
import sys

import pytest

from stlib import cli, devices, launch
from stlib.train import sharding


def test_each_process_gets_its_coordinates_and_a_share_of_the_cores(monkeypatch):
    env = launch.process_env(1, 2, 4321, {"PATH": "/bin"})
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"], env["JAX_COORDINATOR_ADDRESS"]) == \
        ("2", "1", "localhost:4321")
    assert env["STLIB_HOST_DEVICES"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert launch.process_env(0, 2, 1, {"STLIB_HOST_DEVICES": "3"})["STLIB_HOST_DEVICES"] == "3"   # the user's choice
    forced = launch.process_env(0, 2, 1, {"XLA_FLAGS": f"{devices.FLAG}=4"})
    assert "STLIB_HOST_DEVICES" not in forced
    # launched from this process: the device count `import stlib` put in XLA_FLAGS is not handed on
    monkeypatch.setattr(devices, "USER_XLA_FLAGS", None)
    monkeypatch.setenv("XLA_FLAGS", f"{devices.FLAG}=2")
    monkeypatch.delenv("STLIB_HOST_DEVICES", raising=False)
    mine = launch.process_env(0, 2, 1)
    assert "XLA_FLAGS" not in mine and "STLIB_HOST_DEVICES" in mine


def test_processes_option_is_not_handed_on():
    assert cli._without_processes(["train", "p.yaml", "--processes", "2", "--quiet"]) == ["train", "p.yaml", "--quiet"]
    assert cli._without_processes(["train", "p.yaml", "--processes=3"]) == ["train", "p.yaml"]


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "2"}, "needs JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "localhost:1", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID=2 must be in 0..1"),
])
def test_a_job_described_wrongly_is_one_line_before_any_work(monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(devices.MultiProcessError, match=message):
        sharding.maybe_initialize_distributed()


def test_cli_refuses_processes_inside_a_job_and_notebooks_in_a_job(tmp_path):
    env = {**os.environ, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0", "JAX_COORDINATOR_ADDRESS": "localhost:1"}
    def run(*args):
        return subprocess.run([sys.executable, "-m", "stlib.cli", "train", "params/smoke/retinanet.yaml", *args],
                              cwd=cli.paths.REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    inner = run("--processes", "2")
    assert inner.returncode == 2 and "already one of a multi-process job" in inner.stderr
    notebook = run()
    assert notebook.returncode == 2 and "add --direct" in notebook.stderr


def test_launcher_names_every_failed_process_with_its_log(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("STLIB_OUTPUTS", str(tmp_path))
    # `stlib` with an unknown subcommand: argparse exits 2 in every process
    assert launch.run_processes(["no-such-command"], 2, settle_s=0.5) == 2
    err = capsys.readouterr().err
    assert "process 1 of 2 failed (exit 2); its log: " in err and "invalid choice" in err
    assert list((tmp_path / "logs").glob("process-*-1.log"))
    with pytest.raises(devices.MultiProcessError, match="at least 2"):
        launch.run_processes(["train"], 1)
