"""A checkpoint saved on one device topology loads on another (CPU mesh of 2 -> one GPU)."""

from tests.conftest import run_python

SAVE = """
import jax, numpy as np, yaml
from pathlib import Path
from stlib.train import sharding
from stlib.train.checkpoints import Checkpoints
from stlib.train.state import TrainState
assert len(jax.devices()) == 2, jax.devices()
rep = sharding.replicated(sharding.create_mesh())
params = {{"backbone": {{"w": np.arange(6.0, dtype=np.float32).reshape(2, 3)}}}}
state = TrainState(step=np.int32(3), params=jax.device_put(params, rep), batch_stats={{}}, opt_state={{}},
                   rng=jax.device_put(np.zeros(2, np.uint32), rep))
run = Path({run!r}); (run / "params.yaml").write_text(yaml.safe_dump({{"model": {{"backbone": "resnet-mini"}}}}))
ck = Checkpoints(run / "checkpoints"); ck.save_best(3, state); ck.close()
"""

LOAD = """
import jax, numpy as np
from stlib.models.weight_import import read_checkpoint
assert len(jax.devices()) == 1, jax.devices()
v, meta = read_checkpoint({run!r})
assert meta["backbone"] == "resnet-mini" and meta["step"] == 3, meta
np.testing.assert_array_equal(v["params"]["backbone"]["w"], np.arange(6.0).reshape(2, 3))
print("OK")
"""


def test_a_two_device_checkpoint_loads_on_one_device(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    p = run_python(SAVE.format(run=str(run)), {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_python(LOAD.format(run=str(run)), {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-3000:]
