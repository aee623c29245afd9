"""The teacher of self-training: a finished detection run, checked before any work is spent."""
from __future__ import annotations

import json
from pathlib import Path

from stlib import config as cfg
from stlib import paths
from stlib.data.sources import build_detection_sources
from stlib.models.weight_import import read_checkpoint
from stlib.train.checkpoints import read_best_digest


def find_run(path: str | Path, what: str = "self_train.teacher") -> Path:
    """The run folder `path` names (absolute, or relative to the working directory or the repo)."""
    p = Path(path).expanduser()
    for cand in ([p] if p.is_absolute() else [p, paths.REPO_ROOT / p]):
        if cand.is_dir():
            return cand.resolve()
    raise cfg.ParamsError(f"{what} {str(path)!r}: no such run folder (train the teacher first, e.g. "
                          "`stlib train params/mini/retinanet.yaml --set augment.policy=s4 "
                          "--set data.label_fraction=0.2`, and pass its outputs/runs/<id> folder)")


class TeacherRun:
    """A finished run used as a teacher: its folder, params, categories, best checkpoint; a
    detection run (`head` retinanet), or a segmentation run for a segmentation student.

    Raises `ParamsError` naming the folder when it is not a run of `head`, has not finished,
    or has no best checkpoint.
    """

    def __init__(self, path: str | Path, what: str = "self_train.teacher", head: str = "retinanet"):
        self.dir = find_run(path, what)
        pfile = self.dir / "params.yaml"
        if not pfile.is_file():
            raise cfg.ParamsError(f"{what}: {self.dir} is not a run folder (no params.yaml)")
        self.params = cfg.load_params(pfile)
        if self.params.model.head != head:
            kind = "segmentation" if head == "segmentation" else "detection"
            raise cfg.ParamsError(f"{what}: {self.dir} trained a {self.params.model.head} model; this teacher "
                                  f"must be a {kind} run (model.head {head})")
        mfile = self.dir / "metrics.json"
        metrics = json.loads(mfile.read_text()) if mfile.is_file() else {}
        if metrics.get("status") != "complete":
            raise cfg.ParamsError(f"{what}: {self.dir} has not finished training (no complete metrics.json); "
                                  "finish or resume it first")
        self.metrics = metrics
        best = self.dir / "checkpoints" / "best"
        if not best.is_dir() or not any(c.name.isdigit() for c in best.iterdir()):
            raise cfg.ParamsError(f"{what}: {self.dir} has no best checkpoint under {best} "
                                  "(checkpoints are not in git: re-make the run on this machine)")
        self.run_id = self.dir.name
        # the identity of these weights: a teacher re-made on another machine is another teacher
        self.digest = metrics.get("checkpoint_digest") or read_best_digest(self.dir)
        if not self.digest:
            raise cfg.ParamsError(f"{what}: {self.dir} has no checkpoint digest (made before run identities); "
                                  "make the teacher again with this version of stlib")

    def categories(self) -> list[dict]:
        """The teacher's training categories ([{"id", "name"}], contiguous class k = entry k-1)."""
        train, _ = build_detection_sources(self.params.data)
        return [{"id": c["id"], "name": c["name"]} for c in train.categories]

    @staticmethod
    def head_of(path, what: str = "self_train.teacher") -> str | None:
        """The `model.head` of the run folder `path` names (None when it has no params.yaml)."""
        pfile = find_run(path, what) / "params.yaml"
        return cfg.load_params(pfile).model.head if pfile.is_file() else None

    def relative(self) -> str:
        """The folder as written into a student's params: repo-relative when inside the repo,
        so run ids do not depend on where the repository is checked out."""
        return paths.relative(self.dir)

    def variables(self) -> dict:
        """The best checkpoint's {"params", "batch_stats"} (numpy)."""
        variables, _ = read_checkpoint(self.dir)
        return variables

    def load_state(self, detector):
        """The teacher's best weights as a TrainState of `detector` (a `stlib.tasks.detection.Detector`
        of its params)."""
        return detector.restore(self.variables())


def check_same_classes(teacher_categories: list[dict], student_categories: list[dict], teacher_dir) -> None:
    """A student learns the teacher's classes: different category lists are an error naming both."""
    t = [(c["id"], c["name"]) for c in teacher_categories]
    s = [(c["id"], c["name"]) for c in student_categories]
    if t != s:
        only_t = [n for i, n in t if (i, n) not in s][:5]
        only_s = [n for i, n in s if (i, n) not in t][:5]
        raise cfg.ParamsError(
            f"self_train.teacher {teacher_dir}: its {len(t)} classes differ from the student's {len(s)} "
            f"(teacher only: {only_t}, student only: {only_s}); a teacher must label the student's classes")
