"""Multi-process runs for real: `--processes 2` starts two JAX processes joined by jax.distributed
(a coordinator on localhost, gloo collectives on the CPU), each owning one device, the code path of
a TPU pod or a GPU cluster. They must train exactly as one process with two devices, resume after
one of them is killed, and pseudo-label every image exactly once."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import REPO, SMOKE

# few steps: a step of two processes waits on gloo for every BatchNorm's statistics (0.32 s per
# smoke step on 2 cores, against 10 ms in one process; README)
SETS = ["train.steps=6", "train.checkpoint_every=2", "train.eval_every=3", "train.log_every=1"]

# Imported by every Python process started with this folder on PYTHONPATH (site's sitecustomize
# hook): process 1 of the job kills itself (SIGKILL, uncatchable) when it reaches the batch of
# step STLIB_TEST_KILL_AT, so the test needs no hook in the product.
SITECUSTOMIZE = textwrap.dedent("""
    import os, signal
    if os.environ.get("JAX_PROCESS_ID") == "1" and os.environ.get("STLIB_TEST_KILL_AT"):
        from stlib.data import pipeline
        _orig = pipeline.IndexedBatches.train_batch
        def _train_batch(self, step, *a, **k):
            if step == int(os.environ["STLIB_TEST_KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return _orig(self, step, *a, **k)
        pipeline.IndexedBatches.train_batch = _train_batch
""")


def _stlib(args, env_extra=None, timeout=600):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)   # each process chooses its own device count
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "stlib.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _train(out, extra=(), env=None):
    sets = [x for s in SETS for x in ("--set", s)]
    return _stlib(["train", SMOKE, "--quiet", "--outputs", str(out), *sets, *extra], env)


def _log(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _shards(store):
    return {f.name: dict(np.load(f)) for f in sorted((store / "shards").glob("*.npz"))}


def test_two_processes_train_resume_and_label_as_one_process_with_two_devices(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)

    # the reference: one process, two devices
    ref = _train(one, ["--direct"], {"STLIB_HOST_DEVICES": "2"})
    assert ref.returncode == 0, ref.stderr[-3000:]

    # two processes of one device each; process 1 dies mid-run, the launcher stops process 0
    path = os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    killed = _train(two, ["--processes", "2"], {"PYTHONPATH": path, "STLIB_TEST_KILL_AT": "5",
                                                "STLIB_HOST_DEVICES": "1"})
    assert killed.returncode != 0
    assert "process 1 of 2 failed" in killed.stderr, killed.stderr[-3000:]
    (run2,) = (two / "runs").iterdir()
    assert not (run2 / "metrics.json").exists()

    resumed = _train(two, ["--processes", "2"], {"STLIB_HOST_DEVICES": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    (run1,) = (one / "runs").iterdir()
    assert run1.name == run2.name   # the same params: the same run
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (run1, run2))
    assert m1["devices"] == m2["devices"] == 2
    for k in ("AP", "AP50", "best_step", "last_step"):
        assert m1[k] == m2[k], k
    l1, l2 = _log(run1), _log(run2)
    assert [(e["kind"], e["step"]) for e in l1 if e["kind"] != "session"] == \
        [(e["kind"], e["step"]) for e in l2 if e["kind"] != "session"]
    train1 = [e for e in l1 if e["kind"] == "train"]
    train2 = [e for e in l2 if e["kind"] == "train"]
    assert len(train1) == 6
    for a, b in zip(train1, train2):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6), a["step"]
    # only process 0 wrote the log: no line twice, and one session line (the killed session ended
    # without one)
    assert [e["kind"] for e in l2].count("session") == 1
    assert not (run2 / "failed.json").exists()

    # pseudo labels: every image once, the same boxes as one process labels (min score 0: every
    # detection the teacher keeps, not only the few a 12-step teacher is sure of)
    args = ["pseudo-label", str(run1), "--unlabeled", "world:scenes", "--min-score", "0", "--max-images", "10",
            "--shard-size", "4", "--quiet"]
    s1 = _stlib(args + ["--out", str(tmp_path / "s1")], {"STLIB_HOST_DEVICES": "2"})
    assert s1.returncode == 0, s1.stderr[-3000:]
    s2 = _stlib(args + ["--out", str(tmp_path / "s2"), "--processes", "2"], {"STLIB_HOST_DEVICES": "1"})
    assert s2.returncode == 0, s2.stderr[-3000:]
    a, b = _shards(tmp_path / "s1"), _shards(tmp_path / "s2")
    assert list(a) == list(b) and len(a) == 3   # 10 images in shards of 4
    index = np.concatenate([s["index"] for s in b.values()])
    assert sorted(index.tolist()) == list(range(10))
    assert sum(len(s["scores"]) for s in b.values()) > 10
    for name in a:
        for k in a[name]:
            np.testing.assert_array_equal(a[name][k], b[name][k], err_msg=f"{name}:{k}")
    assert json.loads((tmp_path / "s2" / "store.json").read_text())["complete"]
