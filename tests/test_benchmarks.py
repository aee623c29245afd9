"""benchmarks/train_step.py: runs end to end at a tiny size and prints its fields (no timings are checked)."""
import importlib.util
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks/train_step.py"
TINY = ["--model", "mini", "--size", "64", "--batch", "2", "--steps", "2", "--warmup", "1", "--matmul-size", "128",
        "--matmul-reps", "2"]
FIELDS = ["model", "image size", "batch", "dtype", "devices", "platform", "jax", "cpu", "parameters", "compile s",
          "first step s", "ms/step mean", "ms/step p50", "ms/step p90", "GFLOP/step", "achieved GFLOP/s",
          "matmul GFLOP/s", "achieved/matmul", "flop counting", "images/s"]


def _bench(*args, timeout=300):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _fields(out: str) -> dict:
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def _load_module():
    spec = importlib.util.spec_from_file_location("bench_train_step", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_mini_run_prints_every_field_and_writes_a_row(tmp_path):
    results = tmp_path / "RESULTS.md"
    out = _bench(*TINY, "--devices", "2", "--write", "--results", str(results))
    f = _fields(out)
    for k in FIELDS:
        assert k in f, f"missing {k!r} in:\n{out}"
    assert f["image size"] == "64"
    assert f["devices"].startswith("2 x ")
    assert "resnet-mini" in f["model"] and "10 classes" in f["model"]
    assert "a multiply-add is 2 flops" in f["flop counting"]
    for k in ("compile s", "ms/step mean", "GFLOP/step", "achieved GFLOP/s", "matmul GFLOP/s"):
        assert float(f[k].split()[0]) > 0, (k, f[k])
    assert re.fullmatch(r"images/s: [0-9.]+", out.rstrip("\n").splitlines()[-1])

    text = results.read_text()
    assert "measurement" in text
    rows = [l for l in text.splitlines() if l.startswith("| 2")]  # data rows start with the date
    assert len(rows) == 1 and "| mini (resnet-mini) | 64 | 2 | float32 |" in rows[0]


def test_write_results_appends_and_replaces_a_rerun(tmp_path):
    mod = _load_module()
    r = {"cpu": "Test CPU", "cores": 2, "devices": 2, "device_kind": "cpu", "model": "mini", "backbone": "resnet-mini",
         "size": 64, "batch": 2, "dtype": "float32", "jax": "0.0", "compile_s": 1.0, "ms_mean": 10.0,
         "images_per_s": 200.0, "flops": 1e9, "achieved_flops_per_s": 1e11, "matmul_flops_per_s": 2e11,
         "matmul_n": 2048}
    path = tmp_path / "RESULTS.md"
    mod.write_results(path, r)
    mod.write_results(path, {**r, "ms_mean": 20.0})           # same key: replaces
    mod.write_results(path, {**r, "devices": 1})              # new key: appends
    path.write_text(path.read_text() + "\nNotes kept below the table.\n")
    mod.write_results(path, {**r, "batch": 4})
    text = path.read_text()
    rows = [l for l in text.splitlines() if l.startswith("| 2")]
    assert len(rows) == 3
    assert "| 2x cpu |" in rows[0] and "| 20.0 |" in rows[0] and "| 10.0 |" not in rows[0]
    assert "| 1x cpu |" in rows[1] and "| 4 |" in rows[2]
    assert text.startswith("# Train-step benchmark results") and text.endswith("Notes kept below the table.\n")


@pytest.mark.slow
def test_compare_devices_runs_one_and_two():
    out = _bench("--model", "smoke", "--batch", "2", "--steps", "2", "--warmup", "1", "--matmul-size", "128",
                 "--compare-devices", timeout=600)
    assert "== 1 host device ==" in out and "== 2 host devices ==" in out
    assert re.search(r"^speedup 2 vs 1 devices: [0-9.]+x", out, re.M)
    assert re.fullmatch(r"images/s: [0-9.]+", out.rstrip("\n").splitlines()[-1])


@pytest.mark.slow   # ~40 s; a measuring script, run on request
def test_augment_benchmark_tiny_run_prints_every_field_and_writes_a_section(tmp_path):
    """benchmarks/augment.py at a tiny size: its fields, table, goal line and RESULTS.md section."""
    script = REPO / "benchmarks/augment.py"
    results = tmp_path / "RESULTS.md"
    results.write_text("# Train-step benchmark results\n\n| date | x |\n|---|---|\n| 2026 | 1 |\n")
    argv = ["--sizes", "64", "--batch", "2", "--policies", "s1", "--steps", "1", "--warmup", "0",
            "--devices", "2"]
    proc = subprocess.run([sys.executable, str(script), *argv, "--write", "--results", str(results)], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    f = _fields(out)
    for k in ("benchmark", "sizes", "devices", "platform", "jax", "cpu", "timed runs", "train step mode",
              "train step", "train step without augmentation", "share alone", "share in step", "headline", "images/s"):
        assert k in f, f"missing {k!r} in:\n{out}"
    assert f["devices"].startswith("2 x ") and f["sizes"].startswith("64 (batch 2")
    assert f["headline"] == "s1 vmap at 64"
    row = next(l for l in out.splitlines() if l.startswith("| s1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["s1", "vmap*", "64", "2"], cells
    assert float(cells[5]) > 0 and float(cells[6]) > 0 and float(cells[7]) > 0, cells
    assert cells[8].endswith("%") and cells[9].endswith("%") and cells[10] in ("yes", "no"), cells
    assert re.search(r"^goal s1: vmap \(in step, the train step's mode\) -?[0-9.]+% (meets|misses)$", out, re.M)
    assert re.fullmatch(r"images/s: [0-9.]+", out.rstrip("\n").splitlines()[-1])

    text = results.read_text()
    assert text.startswith("# Train-step benchmark results\n\n| date | x |")  # the train-step table is kept
    assert text.count("## Augmentation benchmark") == 1 and text.count("\n### ") == 1
    assert "`python benchmarks/augment.py --sizes 64 --batch 2 --policies s1" in text and "| s1 | vmap* | 64 |" in text


@pytest.mark.slow   # ~47 s; a measuring script, run on request
def test_conv_grad_matmul_weight_gradient_matches_xla_and_writes_a_section(tmp_path):
    """benchmarks/conv_grad.py at tiny sizes: the matmul weight gradient agrees with XLA's (3x3,
    strided and 1x1), the model-wide switch trains, and --write makes one section (rerun: replaced)."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n\n## Another benchmark\n\ntext\n")
    args = [str(REPO / "benchmarks/conv_grad.py"), "--shapes", "2,16,8,8,3,1;2,16,8,8,3,2;2,8,8,16,1,1", "--reps", "1",
            "--step-modes", "xla,matmul", "--step-args", " ".join(TINY), "--write", "--results", str(results)]
    for extra in ([], ["--step-modes", ""]):   # the rerun (no step) replaces the section
        proc = subprocess.run([sys.executable, *args, *extra], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if extra == []:
            assert re.search(r"^\| matmul \| [0-9.]+ \|", proc.stdout, re.M), proc.stdout
    rows = [line.split("|") for line in proc.stdout.splitlines() if re.match(r"\| \d+, \d+", line)]
    assert len(rows) == 3 and all(float(r[-2]) < 1e-5 for r in rows), proc.stdout
    text = results.read_text()
    assert text.count("## Convolution weight gradient") == 1 and text.count("### ") == 1 and "## Another" in text


def test_depthwise_taps_match_the_grouped_convolution_and_write_a_section(tmp_path):
    """benchmarks/depthwise.py at tiny sizes: the taps agree with XLA's grouped convolution (output
    and both gradients, strides 1 and 2) and --write makes one section (rerun: replaced)."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n\n## Another benchmark\n\ntext\n")
    args = [str(REPO / "benchmarks/depthwise.py"), "--shapes", "2,9,8,3,1;2,9,8,5,2", "--reps", "1", "--step-args",
            "", "--write", "--results", str(results)]
    for _ in range(2):
        proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|") for line in proc.stdout.splitlines() if re.match(r"\| \d+, \d+", line)]
    assert len(rows) == 2 and all(float(r[-2]) < 1e-5 for r in rows), proc.stdout
    text = results.read_text()
    assert text.count("## Depthwise convolutions on the CPU") == 1 and text.count("### ") == 1 and "## Another" in text


def test_input_pipeline_benchmark_tiny_run_writes_a_section(tmp_path):
    """benchmarks/input_pipeline.py at 64 px: stlib's threads give a rate and --write makes one
    section (tf.data and grain are timed by the same loop; tf.data's import costs the test 15 s)."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    args = [str(REPO / "benchmarks/input_pipeline.py"), "--images", "16", "--size", "64", "--epochs", "4",
            "--pipelines", "stlib", "--workers", "1,2", "--gil-seconds", "0.2", "--write", "--results", str(results)]
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|") for line in proc.stdout.splitlines() if re.match(r"\| stlib \| \d", line)]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [("stlib", "1"), ("stlib", "2")]
    assert all(float(r[3]) > 0 for r in rows)
    text = results.read_text()
    assert text.count("## Training input at 640 px") == 1 and "16 synthetic JPEGs" in text
    assert "One stlib decoding thread beside a pure-Python thread" in text


def test_a_rerun_replaces_its_own_section_only(tmp_path):
    """Two benchmarks' sections with the same date and machine line: rewriting one leaves the other."""
    sys.path.insert(0, str(REPO))
    from benchmarks.conv_grad import write_section
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    write_section("### day · cpu\n\nA 1", results, "## A", "a.py")
    write_section("### day · cpu\n\nB 1", results, "## B", "b.py")
    write_section("### day · cpu\n\nA 2", results, "## A", "a.py")
    text = results.read_text()
    assert "A 2" in text and "A 1" not in text and "B 1" in text
    assert text.index("## A") < text.index("A 2") < text.index("## B") < text.index("B 1")
    assert text.count("### day · cpu") == 2
