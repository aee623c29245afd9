"""One-line errors: every error the project raises on purpose reaches the user as one line naming the
file, field or value, from the CLI (directly and through the notebooks), with the traceback in a log
and the failed run folder marked (issue 14's probes)."""
import errno
import json
import os
import socket

import pytest

from stlib import cli
from stlib import errors
from stlib.data.world import ensure_world
from tests.conftest import SMOKE
from tests.train.test_bad_input import make_folder


def _val():
    return ensure_world("smoke", 0) / "detection"


def _coco_args(ann, images):
    val = _val()
    return ["--set", "data.source=coco", "--set", f"data.train_ann={ann}", "--set", f"data.train_images={images}",
            "--set", f"data.val_ann={val / 'annotations/val.json'}", "--set", f"data.val_images={val / 'val/images'}"]


def _one_line(capsys, argv, *, rc=2) -> str:
    """Runs `stlib <argv>`; returns the error line after checking it is one line and no traceback."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == rc, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith("stlib ")]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    return lines[0]


def _failed(out):
    marks = list(out.rglob("failed.json"))
    return [json.loads(m.read_text()) for m in marks]


@pytest.mark.parametrize("problem,match", [
    ("missing", "image files are missing"),
    ("unknown_cat", "category_id 999"),
    ("no_images", "missing required key 'images'"),
    ("duplicate_id", "duplicate id"),
])
def test_data_errors_are_one_line_naming_the_file(tmp_path, capsys, problem, match):
    ann, images = make_folder(tmp_path, **({problem: True} if problem in ("missing", "unknown_cat") else {}))
    data = json.loads(ann.read_text())
    if problem == "no_images":
        del data["images"]
    if problem == "duplicate_id":
        data["images"].append(dict(data["images"][0]))
    ann.write_text(json.dumps(data))
    line = _one_line(capsys, ["train", SMOKE, "--direct", "--quiet", "--outputs", str(tmp_path / "out"),
                              *_coco_args(ann, images)])
    assert line.startswith("stlib train: data error: ") and str(ann) in line and match in line, line
    assert "traceback:" in line
    (mark,) = _failed(tmp_path / "out")
    assert match in mark["error"]


def test_a_data_error_inside_the_notebook_is_the_same_one_line(tmp_path, capsys):
    ann, images = make_folder(tmp_path, unknown_cat=True)
    line = _one_line(capsys, ["train", SMOKE, "--quiet", "--outputs", str(tmp_path / "out"), *_coco_args(ann, images)])
    assert line.startswith("stlib train: data error: ") and "category_id 999" in line and "train.ipynb" in line, line
    (mark,) = _failed(tmp_path / "out")
    assert "category_id 999" in mark["error"]


def test_init_folders_of_another_backbone_or_empty_are_refused_before_work(tmp_path, capsys):
    other = tmp_path / "r50"
    other.mkdir()
    (other / "stlib_weights.json").write_text(json.dumps({"backbone": "resnet50", "source_sha256": "ab"}))
    line = _one_line(capsys, ["train", SMOKE, "--direct", "--quiet", "--outputs", str(tmp_path / "out"),
                              "--set", f"model.init={other}"])
    assert "params error" in line and "resnet50" in line and "resnet-tiny" in line, line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_line(capsys, ["train", SMOKE, "--direct", "--quiet", "--outputs", str(tmp_path / "out"),
                              "--set", f"model.init={empty}"])
    assert "params error" in line and "empty" in line and "best checkpoint" in line, line
    assert not (tmp_path / "out").exists()     # nothing was started


@pytest.mark.parametrize("direct", [True, False])
def test_a_teacher_that_is_not_a_run_is_one_line(tmp_path, capsys, direct):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    line = _one_line(capsys, ["train", SMOKE, "--quiet", "--outputs", str(tmp_path / "out"),
                              "--set", f"self_train.teacher={folder}", "--set", "self_train.unlabeled=world:scenes",
                              *(["--direct"] if direct else [])])
    assert "params error" in line and "not-a-run" in line and "params.yaml" in line, line


def test_a_locked_run_is_one_line_and_not_marked_failed(tmp_path, capsys):
    from stlib import config as cfg
    from stlib.experiments import runs
    run_dir = runs.resolve_run_dir(cfg.load_params(SMOKE), outputs=tmp_path / "out")
    run_dir.mkdir(parents=True)
    (run_dir / "run.lock").write_text(f"1@{socket.gethostname()}")     # pid 1 is alive
    line = _one_line(capsys, ["train", SMOKE, "--direct", "--quiet", "--outputs", str(tmp_path / "out")])
    assert "run locked" in line and run_dir.name in line, line
    assert not (run_dir / "failed.json").exists()


def test_an_unwritable_outputs_folder_is_one_line(tmp_path, capsys, monkeypatch):
    import stlib.io

    def refuse(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr(stlib.io, "write_bytes_atomic", refuse)
    line = _one_line(capsys, ["train", SMOKE, "--direct", "--quiet", "--outputs", str(tmp_path / "out")])
    assert "disk error: permission denied writing" in line and "params.yaml" in line, line


def test_a_full_disk_is_one_line_and_the_run_resumes_later(tmp_path, capsys, monkeypatch):
    from stlib.train.checkpoints import Checkpoints

    def full(manager, step, state):   # what orbax raises: its own error around the OSError
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(manager.directory))
        except OSError as e:
            raise ValueError("orbax: failed to write the checkpoint (546 lines of detail)") from e
    monkeypatch.setattr(Checkpoints, "_save", staticmethod(full))
    line = _one_line(capsys, ["train", SMOKE, "--direct", "--quiet", "--outputs", str(tmp_path / "out")])
    assert "disk error: the disk is full writing" in line and "resumes" in line, line
    (mark,) = _failed(tmp_path / "out")
    assert "disk is full" in mark["error"]
    monkeypatch.undo()
    assert cli.main(["train", SMOKE, "--direct", "--quiet", "--outputs", str(tmp_path / "out")]) == 0
    assert not _failed(tmp_path / "out")     # a finished run drops the mark


def test_a_non_finite_loss_is_one_line(tmp_path, capsys):
    line = _one_line(capsys, ["train", SMOKE, "--direct", "--quiet", "--outputs", str(tmp_path / "out"),
                              "--set", "train.steps=12", "--set", "train.warmup_steps=11", "--set", "train.base_lr=1e30",
                              "--set", "train.warmup_init_lr=0.01", "--set", "train.eval_every=100"])
    assert "training stopped: non-finite loss at step" in line and "Last good checkpoint" in line, line


def test_pseudo_label_min_score_above_threshold_is_refused(tmp_path, capsys):
    line = _one_line(capsys, ["pseudo-label", str(tmp_path), "--unlabeled", "world:scenes", "--min-score", "0.9",
                              "--threshold", "0.5"])
    assert "params error: --min-score 0.9 is above --threshold 0.5" in line, line


def test_one_line_finds_disk_errors_and_known_errors_in_the_chain():
    from stlib.config import ParamsError
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/x/y")
        except OSError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as e:
        assert errors.one_line(e).startswith("disk error: read-only file system writing /x/y")
    assert errors.one_line(ParamsError("a\nb")) == "params error: a b"
    assert errors.one_line(KeyError("a bug")) is None     # a bug keeps its traceback


_INJECT = '''
import os
if os.environ.get("STLIB_TEST_INJECT_BUG"):
    import stlib.tasks.detection as detection

    def evaluate(self, state):
        raise ZeroDivisionError("injected into evaluate")
    detection.DetectionTask.evaluate = evaluate
'''


def _bug_in_kernels(tmp_path, monkeypatch):
    """Every notebook kernel started from now on gets a bug in DetectionTask.evaluate (a
    sitecustomize on PYTHONPATH, read at interpreter start): an error that is not stlib's own."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_INJECT)
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("STLIB_TEST_INJECT_BUG", "1")


def _failure_report(capsys, argv) -> tuple[str, list]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    (i,) = [k for k, line in enumerate(lines) if line.startswith("stlib ")]
    assert "Papermill" not in err and "NotebookError" not in err and "Traceback" not in err, err
    return lines[i], lines[i + 1:]


def test_a_bug_inside_the_notebook_names_the_run_its_log_and_the_last_lines(tmp_path, capsys, monkeypatch):
    _bug_in_kernels(tmp_path, monkeypatch)
    out = tmp_path / "out"
    line, tail = _failure_report(capsys, ["train", SMOKE, "--quiet", "--outputs", str(out)])
    (run_dir,) = (out / "runs").iterdir()
    assert line.startswith("stlib train: ZeroDivisionError: injected into evaluate (run smoke-retinanet-"), line
    assert f"run {run_dir.name};" in line and f"log {run_dir / 'run.log'}" in line, line
    assert tail[-1].strip() == "ZeroDivisionError: injected into evaluate", tail
    assert any("sitecustomize.py" in t and "evaluate" in t for t in tail), tail   # the frame that raised
    assert all("\x1b[" not in t for t in tail)
    log = (run_dir / "run.log").read_text()
    assert "injected into evaluate" in log and "\x1b[" not in log and "loop.py" in log   # the kernel's traceback
    (mark,) = _failed(out)
    assert mark["error"].startswith("ZeroDivisionError: injected") and mark["last_lines"] == [t[2:] for t in tail]


def test_a_bug_in_a_nested_notebook_reaches_the_command_in_its_own_words(tmp_path, capsys, monkeypatch):
    """`stlib self-train` runs self_train.ipynb, which runs the teacher's train.ipynb: the teacher's
    failure is reported with the teacher's run and log, not as the outer notebook's wrapper."""
    _bug_in_kernels(tmp_path, monkeypatch)
    out = tmp_path / "out"
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: smoke-st-bug\nbase: params/smoke/retinanet.yaml\ncells:\n  Teacher: []\n"
                    "  Student: [self_train.teacher=@Teacher, self_train.unlabeled=world:scenes]\n"
                    "seeds: [0]\ncompare: {baseline: Teacher}\n")
    line, tail = _failure_report(capsys, ["self-train", str(spec), "--quiet", "--outputs", str(out)])
    (teacher,) = (out / "runs").iterdir()
    assert line.startswith("stlib self-train: ZeroDivisionError: injected into evaluate (run smoke-retinanet-"), line
    assert f"run {teacher.name};" in line and f"log {teacher / 'run.log'}" in line, line
    assert "self_train.ipynb" not in line
    assert tail[-1].strip() == "ZeroDivisionError: injected into evaluate", tail
    assert "injected into evaluate" in (teacher / "run.log").read_text()
