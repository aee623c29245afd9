"""Training loop: device-count invariance, kill-and-resume, non-finite loss, the CLI."""
import json
import textwrap

import pytest

from tests.conftest import SMOKE, run_python

LOSSES = textwrap.dedent(f"""
    import json, jax
    from stlib import config
    from stlib.data.pipeline import stack
    from stlib.experiments.assemble import build_task
    from stlib.train import sharding
    p = config.load_params({SMOKE!r}, ["train.batch_size=4"])
    exp = build_task(p, progress=False)
    state = exp.init_state()
    out = []
    for s in range(3):
        b = sharding.shard_batch(exp.train_data.train_batch(s, 4, 0), exp.mesh)
        state, m = exp.train_step(state, b)
        out.append(float(m["loss"]))
    print("RESULT", json.dumps([len(jax.devices()), out]))
""")


def _result(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def test_two_devices_give_the_same_loss_as_one():
    """Same losses over 3 steps on 1 and 2 (forced host) devices.

    BatchNorm runs in training mode, so this also shows its statistics are taken over the
    global batch (per-device statistics over 2 examples each would change the loss).
    """
    n1, l1 = _result(run_python(LOSSES, {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}))
    n2, l2 = _result(run_python(LOSSES, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}))
    assert (n1, n2) == (1, 2)
    assert l1 == pytest.approx(l2, rel=2e-5)
    assert l1[0] != l1[2]  # it trains


KILLER = textwrap.dedent("""
    import os, signal, sys
    from stlib.train import loop
    orig = loop.MetricsLog.append
    def append(self, entry):
        orig(self, entry)
        if entry["step"] == {kill_at} and entry["kind"] == "train":
            os.kill(os.getpid(), signal.SIGKILL)
    loop.MetricsLog.append = append
    from stlib.cli import main
    sys.exit(main(["train", {params!r}, "--direct", "--quiet", "--outputs", {out!r}] + {sets!r}))
""")

SETS = ["train.steps=12", "train.checkpoint_every=4", "train.eval_every=6", "train.log_every=1"]


def _run_cli(out, kill_at=-1):
    sets = [x for s in SETS for x in ("--set", s)]
    return run_python(KILLER.format(kill_at=kill_at, params=SMOKE, out=str(out), sets=sets))


def _runs(out):
    return list((out / "runs").iterdir())


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run_cli(a).returncode == 0
    killed = _run_cli(b, kill_at=7)  # after checkpoint 4 and eval 6, before checkpoint 8
    assert killed.returncode != 0
    (rb,) = _runs(b)
    assert not (rb / "metrics.json").exists()
    resumed = _run_cli(b)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "from step 6" in resumed.stdout
    (ra,) = _runs(a)
    assert ra.name == rb.name  # same config -> same run id
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (ra, rb))
    for k in ("AP", "AP50", "AP75", "best_step", "last_step"):
        assert ma[k] == mb[k], k
    la, lb = ([json.loads(l) for l in (r / "metrics.jsonl").read_text().splitlines()] for r in (ra, rb))
    # each session logs the CPU time it used, for pricing runs (stlib.experiments.cost)
    sessions = [e for e in la if e["kind"] == "session"]
    assert len(sessions) == 1 and sessions[0]["cpu_seconds"] > 0 and ma["cpu_seconds"] == sessions[0]["cpu_seconds"]
    assert [(e["kind"], e["step"]) for e in la] == [(e["kind"], e["step"]) for e in lb]
    for ea, eb in zip(la, lb):
        if ea["kind"] == "train":
            assert ea["loss"] == pytest.approx(eb["loss"], rel=1e-6)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    code = textwrap.dedent(f"""
        from stlib import config
        from stlib.experiments.assemble import train
        from stlib.train import loop
        from stlib.train.checkpoints import Checkpoints
        p = config.load_params({SMOKE!r}, ["train.steps=12", "train.warmup_steps=11", "train.base_lr=1e30",
                                          "train.warmup_init_lr=0.01", "train.checkpoint_every=2",
                                          "train.eval_every=100", "train.log_every=1"])
        import json
        try:
            train(p, {str(tmp_path / 'run')!r}, progress=False)
        except loop.NonFiniteLossError as e:
            c = Checkpoints({str(tmp_path / 'run' / 'checkpoints')!r})
            print("RESULT", json.dumps({{"msg": str(e), "ckpt": c.latest_step()}}))
    """)
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    assert "non-finite loss at step" in line
    res = json.loads(line[7:])
    step = int(res["msg"].split("non-finite loss at step ")[1].split()[0])
    assert 0 < res["ckpt"] < step and f"step {res['ckpt']}" in res["msg"]


def test_bfloat16_compute_trains():
    code = LOSSES.replace('["train.batch_size=4"]', '["train.batch_size=4", "model.dtype=bfloat16"]')
    _, losses = _result(run_python(code))
    assert all(l == l and l < 100 for l in losses)  # finite


def test_tensorboard_events_hold_train_and_val_scalars(tmp_path):
    code = textwrap.dedent(f"""
        import glob, json, sys
        import tensorflow as tf
        from stlib.cli import main
        main(["train", {SMOKE!r}, "--direct", "--quiet", "--outputs", {str(tmp_path)!r},
              "--set", "train.tensorboard=true"])
        (f,) = glob.glob({str(tmp_path)!r} + "/runs/*/tensorboard/events.*")
        tags = sorted({{v.tag for e in tf.compat.v1.train.summary_iterator(f) for v in e.summary.value}})
        print("RESULT", json.dumps(tags))
    """)
    tags = _result(run_python(code))
    assert {"train/loss", "train/lr", "val/AP", "val/AP50"} <= set(tags)
