"""One-line errors: every error the project raises on purpose reaches the user as one line naming the
file, field or value, from the CLI (directly and through the notebooks), with the traceback in a log
and the failed run folder marked (issue 14's probes)."""
import errno
import json
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
